//! `herald sources …`: recording sources (SPEC §7) from the command line.

use herald_api::sources::{SourceJson, create_source};
use herald_core::project::ProjectId;
use herald_core::source::{RecordRoots, SourceSpec, SourceTarget};
use herald_core::storage::{RecordFormat, StorageFields, StorageSpec};
use herald_store::{Page, SourceView, Store};

/// The options of `herald sources create`, as typed.
pub struct CreateOptions {
    pub engine: String,
    pub publish_domain: Option<String>,
    pub app_id: Option<String>,
    pub record_dir: String,
    pub download_base: Option<String>,
    pub max_pause: Option<String>,
    /// The cap on sources per project (`HERALD_MAX_PER_PROJECT`), as the API applies it.
    pub max_per_project: u64,
    pub record_format: Option<String>,
    pub storage: Option<StorageOptions>,
    /// `--allow-private-targets`, which the storage endpoint obeys as callback URLs do.
    pub allow_private_targets: bool,
}

/// `--storage-endpoint` and the flags that go with it, as typed.
pub struct StorageOptions {
    pub endpoint: String,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub access_key_id: Option<String>,
    /// Read from `--secret-access-key-file`.
    pub secret_access_key: Option<String>,
    pub path_style: bool,
    pub object_prefix: Option<String>,
    pub delete_local: bool,
}

/// A field's flag: `storage.bucket` is `--bucket`, `storage.endpoint` `--storage-endpoint`.
fn flag_of(field: &str) -> String {
    let name = match field {
        "storage.endpoint" => "storage-endpoint",
        "storage.region" => "storage-region",
        "storage.secret_access_key" => "secret-access-key-file",
        other => other.trim_start_matches("storage."),
    };
    format!("--{}", name.replace('_', "-"))
}

/// Where a source created from the command line lives: the operator's record roots and
/// the base of its hook URL, both from the settings.
pub struct Place<'a> {
    pub roots: &'a RecordRoots,
    pub public_url: &'a str,
}

/// Creates a source and prints it with its hook URL.
pub async fn create(
    store: &dyn Store,
    project: ProjectId,
    options: &CreateOptions,
    place: &Place<'_>,
    as_json: bool,
) -> anyhow::Result<()> {
    let spec = SourceSpec::from_fields(
        &options.engine,
        options.publish_domain.as_deref(),
        options.app_id.as_deref(),
        &options.record_dir,
        options.download_base.as_deref(),
        options.max_pause.as_deref(),
    )
    .and_then(|spec| {
        let rtc = matches!(spec.target, SourceTarget::Rtc { .. });
        let record_format = options
            .record_format
            .as_deref()
            .map(|f| RecordFormat::parse("record_format", f, rtc))
            .transpose()?;
        let storage = options
            .storage
            .as_ref()
            .map(|s| {
                let fields = StorageFields {
                    endpoint: Some(&s.endpoint),
                    region: s.region.as_deref(),
                    bucket: s.bucket.as_deref(),
                    access_key_id: s.access_key_id.as_deref(),
                    secret_access_key: s.secret_access_key.as_deref(),
                    path_style: s.path_style,
                    object_prefix: s.object_prefix.as_deref(),
                    delete_local: s.delete_local,
                };
                StorageSpec::from_fields(&fields, "storage.", rtc, options.allow_private_targets)
            })
            .transpose()?;
        spec.with_storage(record_format, storage)
    })
    .map_err(|e| anyhow::anyhow!("{}: {}", flag_of(&e.field), e.rule))?;
    let view = create_source(store, place.roots, project, spec, options.max_per_project)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print(&view, place.public_url, as_json)?;
    if !std::path::Path::new(&options.record_dir).is_dir() {
        // Created anyway: the media server may make it. But a dir it cannot make or write
        // fails in its own log only ("Permission denied"), so say it here.
        eprintln!(
            "warning: --record-dir {} does not exist: create it, writable by the user the media \
             server runs as (www-data for Debian's nginx), or nothing is recorded",
            options.record_dir
        );
    }
    Ok(())
}

/// Prints every source of a project, oldest first.
pub async fn list(
    store: &dyn Store,
    project: &ProjectId,
    public_url: &str,
    as_json: bool,
) -> anyhow::Result<()> {
    let mut offset = 0;
    loop {
        let page = Page { offset, limit: 100 };
        let (_, views) = store.list_sources(project, page).await?;
        for view in &views {
            print(view, public_url, as_json)?;
        }
        if views.len() < 100 {
            return Ok(());
        }
        offset += 100;
    }
}

/// Deletes a source: its hook URL stops working at once.
pub async fn delete(store: &dyn Store, id: &str) -> anyhow::Result<()> {
    if store.delete_source(None, id).await? {
        println!("deleted {id}");
        Ok(())
    } else {
        anyhow::bail!("no recording source {id}")
    }
}

/// One JSON line, or the source's fields one per line.
fn print(view: &SourceView, public_url: &str, as_json: bool) -> anyhow::Result<()> {
    let json = serde_json::to_value(SourceJson::new(view, public_url))?;
    if as_json {
        println!("{json}");
        return Ok(());
    }
    if let serde_json::Value::Object(fields) = json {
        for (name, value) in fields {
            match value {
                serde_json::Value::String(text) => println!("{name}: {text}"),
                serde_json::Value::Null => println!("{name}: -"),
                other => println!("{name}: {other}"),
            }
        }
        println!();
    }
    Ok(())
}
