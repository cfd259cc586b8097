//! `herald credentials …` and `herald tokens …`: the operator's way to grant access.

use herald_core::project::ProjectId;
use herald_core::secrets::{
    generate_access_key, generate_secret_key, generate_token, token_digest,
};
use herald_core::timefmt::utc_seconds;
use std::time::Duration;

use herald_store::{AccessKey, NewToken, Store};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

/// Creates an AK/SK pair and prints it once.
pub async fn create(store: &dyn Store, project: &ProjectId, as_json: bool) -> anyhow::Result<()> {
    let key = AccessKey {
        access_key: generate_access_key(),
        project_id: project.clone(),
        secret_key: generate_secret_key(),
        created_at: OffsetDateTime::now_utc(),
    };
    store.insert_access_key(&key).await?;
    if as_json {
        /// Field order as SPEC §6 shows it.
        #[derive(Serialize)]
        struct Created<'a> {
            project_id: &'a str,
            access_key: &'a str,
            secret_key: &'a str,
        }
        let created = Created {
            project_id: project.as_str(),
            access_key: &key.access_key,
            secret_key: key.secret_key.expose_secret(),
        };
        println!("{}", serde_json::to_string(&created)?);
    } else {
        println!("project_id: {project}");
        println!("access_key: {}", key.access_key);
        println!("secret_key: {}", key.secret_key.expose_secret());
        println!("The secret key is shown only now; keep it somewhere safe.");
    }
    Ok(())
}

/// Lists access keys, never their secrets.
pub async fn list(
    store: &dyn Store,
    project: Option<&ProjectId>,
    as_json: bool,
) -> anyhow::Result<()> {
    if !as_json {
        println!("ACCESS_KEY\tPROJECT\tCREATED");
    }
    for key in store.list_access_keys(project).await? {
        let created = utc_seconds(key.created_at);
        if as_json {
            println!(
                "{}",
                json!({"project_id": key.project_id.as_str(), "access_key": key.access_key, "created_at": created})
            );
        } else {
            println!("{}\t{}\t{created}", key.access_key, key.project_id);
        }
    }
    Ok(())
}

/// Deletes an access key; requests signed with it fail from then on.
pub async fn revoke(store: &dyn Store, access_key: &str) -> anyhow::Result<()> {
    if store.delete_access_key(access_key).await? {
        println!("revoked {access_key}");
        Ok(())
    } else {
        anyhow::bail!("no access key {access_key}")
    }
}

/// Creates an `X-Auth-Token` for a project, valid for `ttl` (until revoked when `None`),
/// and prints it once; only its digest is kept.
pub async fn create_token(
    store: &dyn Store,
    project: &ProjectId,
    ttl: Option<Duration>,
    as_json: bool,
) -> anyhow::Result<()> {
    let token = generate_token();
    let digest = token_digest(token.expose_secret());
    let now = OffsetDateTime::now_utc();
    let new = NewToken {
        sha256: &digest,
        project_id: project,
        created_at: now,
        expires_at: ttl.map(|ttl| now + ttl),
    };
    store.insert_token(&new).await?;
    let expires_at = new.expires_at.map(utc_seconds);
    if as_json {
        println!(
            "{}",
            json!({"project_id": project.as_str(), "token": token.expose_secret(), "id": new.id(), "expires_at": expires_at})
        );
    } else {
        println!("project_id: {project}");
        println!("token: {}", token.expose_secret());
        println!("id: {}", new.id());
        println!(
            "expires_at: {}",
            expires_at.as_deref().unwrap_or("never (until revoked)")
        );
        println!("The token is shown only now; keep it somewhere safe.");
    }
    Ok(())
}

/// Lists tokens by id, never the tokens themselves.
pub async fn list_tokens(
    store: &dyn Store,
    project: Option<&ProjectId>,
    as_json: bool,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    if !as_json {
        println!("ID\tPROJECT\tCREATED\tEXPIRES");
    }
    for token in store.list_tokens(project).await? {
        let created = utc_seconds(token.created_at);
        let expires = token.expires_at.map(utc_seconds);
        let expired = token.expires_at.is_some_and(|at| at <= now);
        if as_json {
            println!(
                "{}",
                json!({"id": token.id, "project_id": token.project_id.as_str(), "created_at": created,
                       "expires_at": expires, "expired": expired})
            );
        } else {
            let expires = match (&expires, expired) {
                (Some(at), true) => format!("expired {at}"),
                (Some(at), false) => format!("expires {at}"),
                (None, _) => "never expires".to_owned(),
            };
            println!("{}\t{}\t{created}\t{expires}", token.id, token.project_id);
        }
    }
    Ok(())
}

/// Deletes a token by id; a running server refuses it from the next request on.
pub async fn revoke_token(store: &dyn Store, id: &str) -> anyhow::Result<()> {
    if id.starts_with(herald_core::secrets::TOKEN_PREFIX) {
        // The token itself: it would work as an id of nothing, and it is now in the shell's
        // history, so say what to give instead.
        anyhow::bail!(
            "TOKEN_ID: expects the token's id (the ID column of `herald tokens list`), not the token itself"
        );
    }
    if store.delete_token(id).await? {
        println!("revoked token {id}");
        Ok(())
    } else {
        anyhow::bail!("no token with id {id}; `herald tokens list` shows the ids")
    }
}
