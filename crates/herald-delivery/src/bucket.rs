//! A source's bucket over S3 (SPEC §7.1): the object_store client, whose every connection
//! goes through the callbacks' target guard, and the multipart uploads that a process
//! killed during an upload left open there.
//!
//! The guard sits in the resolver (SPEC §5), so the address checked is the address
//! connected to: a name that resolves to a public address when checked and to a private one
//! when connected (DNS rebinding) cannot reach the private one.
//!
//! An open multipart upload stays in the bucket until it is aborted (and S3 bills its
//! parts), and object_store cannot list them. Before a multipart upload of a key, and
//! after one fails, the bucket's open uploads of that key are listed (ListMultipartUploads)
//! and aborted. The upload step is leased, so the uploads found are a dead process's or a
//! failed attempt's; a node that lost its lease and still uploads the same key has its
//! upload aborted and tries again, which is correct too.

use std::sync::Arc;
use std::time::Duration;

use herald_core::storage::{KEY_SEGMENT, StorageSpec};
use http_body_util::{BodyExt, Limited};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::client::GuardedResolver;

/// One request's limit; object_store retries a failed request a few times within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages of ListMultipartUploads (up to 1,000 uploads each) read for one key: a key has
/// one open upload per crash, so more is a store that does not filter by prefix.
const LIST_PAGES: usize = 10;
/// The most of one ListMultipartUploads answer that is read (1,000 uploads are ~0.5 MB).
const LIST_ANSWER_BYTES: usize = 4 * 1024 * 1024;

const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

/// The HTTP client of every storage request, built once and pooled. object_store's own
/// options no longer build it, so its timeouts are set here; plain `http` is allowed (a
/// MinIO or Garage on a private network is an endpoint like any other once private targets
/// are allowed).
pub(crate) fn storage_client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        // A proxy from the environment would be connected to instead of the checked address.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(USER_AGENT)
        // object_store reads sizes from Content-Length: never a decompressed body.
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .no_deflate()
        .build()
}

/// Gives object_store the guarded client instead of one built from its options.
#[derive(Debug)]
struct GuardedConnector(reqwest::Client);

impl HttpConnector for GuardedConnector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

/// A bucket to upload to.
pub(crate) struct Bucket {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// What object_store does not offer, the open multipart uploads; `None` for a store a
    /// test gave, which has none.
    s3: Option<S3Bucket>,
}

struct S3Bucket {
    store: AmazonS3,
    http: HttpClient,
    credential: AwsCredential,
    region: String,
    name: String,
    /// Where a bucket-level request goes, query excluded.
    url: String,
}

impl Bucket {
    /// A store given by a test: nothing to list.
    pub(crate) fn fixed(store: Arc<dyn ObjectStore>) -> Self {
        Self { store, s3: None }
    }

    /// The bucket of `storage`, reached through `client`.
    pub(crate) fn open(
        storage: &StorageSpec,
        client: reqwest::Client,
    ) -> object_store::Result<Self> {
        // object_store puts the bucket after a path-style endpoint, and takes a
        // virtual-hosted one as the bucket's own address.
        let endpoint = if storage.path_style {
            storage.endpoint.as_str().trim_end_matches('/').to_owned()
        } else {
            storage.bucket_url()
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_region(&storage.region)
            .with_bucket_name(&storage.bucket)
            .with_access_key_id(&storage.access_key_id)
            .with_secret_access_key(storage.secret_access_key.expose_secret())
            .with_virtual_hosted_style_request(!storage.path_style)
            .with_http_connector(GuardedConnector(client.clone()))
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            })
            .build()?;
        let s3 = S3Bucket {
            store: store.clone(),
            http: HttpClient::new(client),
            credential: AwsCredential {
                key_id: storage.access_key_id.clone(),
                secret_key: storage.secret_access_key.expose_secret().to_owned(),
                token: None,
            },
            region: storage.region.clone(),
            name: storage.bucket.clone(),
            url: bucket_request_url(storage),
        };
        Ok(Self {
            store: Arc::new(store),
            s3: Some(s3),
        })
    }

    /// Aborts every open multipart upload of `key`. Hygiene, not part of the upload: a
    /// listing or an abort that fails is logged and the upload goes on, since the object
    /// is stored (or not) all the same, and the next attempt looks again.
    pub(crate) async fn abort_open_uploads(&self, key: &ObjectPath) {
        let Some(s3) = &self.s3 else {
            return;
        };
        let ids = match s3.open_uploads(key.as_ref()).await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(bucket = %s3.name, key = %key, %error,
                    "uploads: listing the open multipart uploads failed; none is aborted");
                return;
            }
        };
        for id in ids {
            match s3.store.abort_multipart(key, &id).await {
                Ok(()) => {
                    metrics::counter!("herald_upload_stale_multipart_aborted_total").increment(1);
                    tracing::info!(bucket = %s3.name, key = %key, upload_id = %id,
                        "uploads: aborted a multipart upload left open");
                }
                Err(error) => {
                    tracing::warn!(bucket = %s3.name, key = %key, upload_id = %id, %error,
                        "uploads: aborting a multipart upload left open failed");
                }
            }
        }
    }
}

impl S3Bucket {
    /// The ids of the open multipart uploads of exactly `key`, page after page.
    async fn open_uploads(&self, key: &str) -> Result<Vec<String>, String> {
        let mut ids = Vec::new();
        let mut after: Option<Marker> = None;
        for _ in 0..LIST_PAGES {
            let page = self
                .list_page(&list_url(&self.url, key, after.as_ref()))
                .await?;
            ids.extend(
                page.uploads
                    .into_iter()
                    .filter(|u| u.key == key)
                    .map(|u| u.upload_id),
            );
            match page.next {
                // A store that repeats its marker would list the same page for ever.
                Some(next) if after.as_ref() != Some(&next) => after = Some(next),
                _ => return Ok(ids),
            }
        }
        tracing::warn!(bucket = %self.name, key, pages = LIST_PAGES,
            "uploads: more open multipart uploads than listed; the rest wait for the next attempt");
        Ok(ids)
    }

    /// One signed ListMultipartUploads request.
    async fn list_page(&self, url: &str) -> Result<UploadsPage, String> {
        let mut request = hyper::Request::get(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| format!("a list request for {url}: {e}"))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region).authorize(&mut request, None);
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), LIST_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let code = text
                .split_once("<Code>")
                .and_then(|(_, rest)| rest.split_once("</Code>"))
                .map_or("no error code", |(code, _)| code);
            return Err(format!("ListMultipartUploads answered {status}: {code}"));
        }
        parse_uploads_page(&body)
    }
}

/// Where bucket-level requests go: `{endpoint}/{bucket}` path-style,
/// `{scheme}://{bucket}.{host}/` virtual-hosted.
fn bucket_request_url(storage: &StorageSpec) -> String {
    let url = storage.bucket_url();
    if storage.path_style { url } else { url + "/" }
}

/// ListMultipartUploads of `key` (`prefix`, which a store may match loosely: the answer is
/// filtered again), after `after` when continuing.
fn list_url(bucket: &str, key: &str, after: Option<&Marker>) -> String {
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, KEY_SEGMENT).to_string();
    let mut url = format!("{bucket}?uploads&prefix={}", encode(key));
    if let Some(marker) = after {
        url.push_str(&format!(
            "&key-marker={}&upload-id-marker={}",
            encode(&marker.key),
            encode(&marker.upload_id)
        ));
    }
    url
}

/// Where the next page of a truncated listing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    key: String,
    upload_id: String,
}

/// One page of a ListMultipartUploads answer.
#[derive(Debug)]
struct UploadsPage {
    uploads: Vec<OpenUpload>,
    /// `None` on the last page.
    next: Option<Marker>,
}

/// The fields of `ListMultipartUploadsResult` that are read; the rest are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    #[serde(default, rename = "Upload")]
    uploads: Vec<OpenUpload>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OpenUpload {
    key: String,
    upload_id: String,
}

fn parse_uploads_page(xml: &[u8]) -> Result<UploadsPage, String> {
    let text = std::str::from_utf8(xml).map_err(|e| format!("an answer not in UTF-8: {e}"))?;
    let result: ListMultipartUploadsResult =
        quick_xml::de::from_str(text).map_err(|e| format!("an unreadable answer: {e}"))?;
    let next = result.is_truncated.then(|| Marker {
        key: result.next_key_marker.unwrap_or_default(),
        upload_id: result.next_upload_id_marker.unwrap_or_default(),
    });
    // Truncated without a marker to go on from: nothing more can be asked for.
    let next = next.filter(|m| !m.key.is_empty() || !m.upload_id.is_empty());
    Ok(UploadsPage {
        uploads: result.uploads,
        next,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use herald_core::source::SourceSpec;
    use object_store::PutPayload;
    use reqwest::dns::Resolve;

    fn storage(fields: &str) -> StorageSpec {
        let body = format!(
            r#"{{"engine": "srs", "publish_domain": "push.example.com", "record_dir": "/rec",
                "storage": {{"region": "cn-north-4", "bucket": "mybucket",
                "access_key_id": "AK", "secret_access_key": "SK", {fields}}}}}"#
        );
        SourceSpec::parse_allowing(body.as_bytes(), true)
            .unwrap()
            .storage
            .unwrap()
    }

    /// AWS's example answer (ListMultipartUploads, API reference), with an escaped key.
    const TRUNCATED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>my-movie.m2ts</NextKeyMarker>
  <NextUploadIdMarker>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ</NextUploadIdMarker>
  <MaxUploads>3</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>my-divisor</Key>
    <UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>
    <Initiator>
      <ID>arn:aws:iam::111122223333:user/user1-11111a31-17b5-4fb7-9df5-b111111f13de</ID>
      <DisplayName>user1-11111a31-17b5-4fb7-9df5-b111111f13de</DisplayName>
    </Initiator>
    <Owner>
      <ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID>
      <DisplayName>OwnerDisplayName</DisplayName>
    </Owner>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>a&amp;b/my-movie.m2ts</Key>
    <UploadId>VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
    <Initiator>
      <ID>b1d16700c70b0b05597d7acd6a3f92be</ID>
      <DisplayName>InitiatorDisplayName</DisplayName>
    </Initiator>
    <Owner>
      <ID>b1d16700c70b0b05597d7acd6a3f92be</ID>
      <DisplayName>OwnerDisplayName</DisplayName>
    </Owner>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
</ListMultipartUploadsResult>"#;

    #[test]
    fn a_truncated_listing_gives_its_uploads_and_where_to_go_on() {
        let page = parse_uploads_page(TRUNCATED.as_bytes()).unwrap();
        let uploads: Vec<(&str, &str)> = page
            .uploads
            .iter()
            .map(|u| (u.key.as_str(), u.upload_id.as_str()))
            .collect();
        assert_eq!(
            uploads,
            [
                (
                    "my-divisor",
                    "XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw"
                ),
                (
                    "a&b/my-movie.m2ts",
                    "VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA"
                ),
            ]
        );
        assert_eq!(
            page.next,
            Some(Marker {
                key: "my-movie.m2ts".into(),
                upload_id: "YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ".into()
            })
        );
    }

    /// The last page (Garage's shape: no markers), an empty one, and a truncated one that
    /// gives nothing to go on from.
    #[test]
    fn the_last_page_ends_the_listing() {
        let last = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>recordings</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker><Prefix>Record/a.flv</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated><Upload><Key>Record/a.flv</Key><UploadId>0123abcd</UploadId><Initiated>2026-12-06T20:00:00.000Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let page = parse_uploads_page(last.as_bytes()).unwrap();
        assert_eq!(page.uploads.len(), 1);
        assert_eq!(page.uploads[0].key, "Record/a.flv");
        assert_eq!(page.uploads[0].upload_id, "0123abcd");
        assert_eq!(page.next, None);

        let empty = r#"<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let page = parse_uploads_page(empty.as_bytes()).unwrap();
        assert!(page.uploads.is_empty());
        assert_eq!(page.next, None);

        let stuck = r#"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>"#;
        assert_eq!(parse_uploads_page(stuck.as_bytes()).unwrap().next, None);

        assert!(parse_uploads_page(b"<Error><Code>AccessDenied</Code>").is_err());
    }

    #[test]
    fn listings_go_to_the_bucket_in_either_addressing_style() {
        let hosted = storage(r#""endpoint": "https://obs.cn-north-4.myhuaweicloud.com""#);
        let base = bucket_request_url(&hosted);
        assert_eq!(base, "https://mybucket.obs.cn-north-4.myhuaweicloud.com/");
        assert_eq!(
            list_url(&base, "Record/a b/c.flv", None),
            "https://mybucket.obs.cn-north-4.myhuaweicloud.com/?uploads&prefix=Record%2Fa%20b%2Fc.flv"
        );
        let path = storage(r#""endpoint": "http://10.0.0.5:3900/", "path_style": true"#);
        let base = bucket_request_url(&path);
        assert_eq!(base, "http://10.0.0.5:3900/mybucket");
        let after = Marker {
            key: "k/1.flv".into(),
            upload_id: "u+1".into(),
        };
        assert_eq!(
            list_url(&base, "k/1.flv", Some(&after)),
            "http://10.0.0.5:3900/mybucket?uploads&prefix=k%2F1.flv&key-marker=k%2F1.flv&upload-id-marker=u%2B1"
        );
    }

    /// The storage client's resolver drops loopback addresses unless private targets are
    /// allowed.
    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_a_private_address() {
        let refused = GuardedResolver {
            allow_private: false,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .err()
        .expect("localhost is refused");
        assert!(
            crate::client::refusal(refused.as_ref()).is_some(),
            "{refused}"
        );
        let allowed: Vec<_> = GuardedResolver {
            allow_private: true,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .unwrap()
        .collect();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()), "{allowed:?}");
        assert!(!allowed.is_empty());
    }

    /// object_store's requests go through the guarded resolver: a name that resolves to
    /// loopback is never connected to, and the error says it was refused.
    #[tokio::test]
    async fn object_store_connects_only_through_the_guard() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let storage = storage(&format!(
            r#""endpoint": "http://localhost:{port}", "path_style": true"#
        ));
        let bucket = Bucket::open(&storage, storage_client(false).unwrap()).unwrap();
        let error = bucket
            .store
            .put(&ObjectPath::from("a.flv"), PutPayload::from_static(b"x"))
            .await
            .expect_err("refused");
        assert!(
            crate::client::refusal(&error).is_some(),
            "not refused by the guard: {error}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "a connection reached the listener");
        // The listing is hygiene: refused as well, and it fails nothing.
        bucket.abort_open_uploads(&ObjectPath::from("a.flv")).await;
    }
}
