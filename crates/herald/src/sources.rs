//! `herald sources …`: recording sources (SPEC §7) from the command line.

use herald_api::sources::{SourceJson, create_source};
use herald_core::project::ProjectId;
use herald_core::source::{RecordRoots, SourceSpec};
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
    .map_err(|e| anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.rule))?;
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
