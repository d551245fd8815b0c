//! The `build_trigger` rows (Quay's `RepositoryBuildTrigger`): create, read, activate, enable,
//! disable and delete, each in the caller's connection or transaction.

use registry_core::db::now_ms;
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::{Map, Value};
use triggers::webhook::Service;

use super::outcome::DisabledReason;
use crate::db::BuildDbError;

/// Why a trigger row could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `builds.db` failed.
    #[error(transparent)]
    Db(#[from] BuildDbError),
    /// A stored service is not one buildman knows (a hand-edited database).
    #[error("trigger {uuid} has unknown service {service:?}")]
    UnknownService {
        /// The trigger.
        uuid: String,
        /// The stored text.
        service: String,
    },
    /// The stored config does not parse, or the config to store does not serialise.
    #[error("config of trigger {uuid} is not valid JSON")]
    Config {
        /// The trigger.
        uuid: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e.into())
    }
}

impl From<registry_core::db::DbError> for StoreError {
    fn from(e: registry_core::db::DbError) -> Self {
        StoreError::Db(e.into())
    }
}

/// One trigger as stored. Secrets stay sealed (see [`crate::secrets`]); `Debug` omits them.
#[derive(Clone, PartialEq, Eq)]
pub struct Trigger {
    /// Public id.
    pub uuid: String,
    /// The provider.
    pub service: Service,
    /// `<namespace>/<repository>`.
    pub repository: String,
    /// The user who created it; webhook builds push with a token of theirs.
    pub connected_user: String,
    /// The stored config (Quay's keys; never the webhook secret nor credentials).
    pub config: Map<String, Value>,
    /// The deploy key's OpenSSH public line.
    pub public_key: String,
    /// The deploy key's PEM, sealed.
    pub secure_private_key: Vec<u8>,
    /// The webhook URL's access token, sealed; set by activation.
    pub secure_webhook_token: Option<Vec<u8>>,
    /// The provider's webhook secret, sealed; optional.
    pub secure_webhook_secret: Option<Vec<u8>>,
    /// Robot whose credentials pull base images.
    pub pull_robot: Option<String>,
    /// When it was activated (ms); `None` = inactive.
    pub activated_at: Option<i64>,
    /// Whether webhooks and manual starts build.
    pub enabled: bool,
    /// Why it is disabled (Quay's names).
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trigger")
            .field("uuid", &self.uuid)
            .field("service", &self.service.as_str())
            .field("repository", &self.repository)
            .field("activated_at", &self.activated_at)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Trigger {
    /// Whether it was activated.
    pub fn is_active(&self) -> bool {
        self.activated_at.is_some()
    }

    /// `config.build_source`, empty when unset.
    pub fn build_source(&self) -> &str {
        self.config
            .get("build_source")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// What [`create`] stores.
#[derive(Debug)]
pub struct NewTrigger<'a> {
    /// The provider.
    pub service: Service,
    /// `<namespace>/<repository>`.
    pub repository: &'a str,
    /// The creating user.
    pub connected_user: &'a str,
    /// The deploy key's public line.
    pub public_key: &'a str,
    /// The sealed private key.
    pub secure_private_key: &'a [u8],
}

/// What activation stores.
#[derive(Debug)]
pub struct Activation<'a> {
    /// The checked config.
    pub config: &'a Map<String, Value>,
    /// The sealed webhook token.
    pub secure_webhook_token: &'a [u8],
    /// The sealed webhook secret, if one was given.
    pub secure_webhook_secret: Option<&'a [u8]>,
    /// The pull robot.
    pub pull_robot: Option<&'a str>,
}

const COLUMNS: &str = "uuid, service, repository, connected_user, config, public_key, \
     secure_private_key, secure_webhook_token, secure_webhook_secret, pull_robot, activated_at, \
     enabled, disabled_reason";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Trigger, String, String)> {
    Ok((
        Trigger {
            uuid: r.get(0)?,
            service: Service::CustomGit,
            repository: r.get(2)?,
            connected_user: r.get(3)?,
            config: Map::new(),
            public_key: r.get(5)?,
            secure_private_key: r.get(6)?,
            secure_webhook_token: r.get(7)?,
            secure_webhook_secret: r.get(8)?,
            pull_robot: r.get(9)?,
            activated_at: r.get(10)?,
            enabled: r.get(11)?,
            disabled_reason: r.get(12)?,
        },
        r.get(1)?,
        r.get(4)?,
    ))
}

fn finish_row((mut t, service, config): (Trigger, String, String)) -> Result<Trigger, StoreError> {
    t.service = service.parse().map_err(|_| StoreError::UnknownService {
        uuid: t.uuid.clone(),
        service,
    })?;
    let config: Value = serde_json::from_str(&config).map_err(|source| StoreError::Config {
        uuid: t.uuid.clone(),
        source,
    })?;
    if let Value::Object(map) = config {
        t.config = map;
    }
    Ok(t)
}

/// Insert an inactive trigger; returns it.
pub fn create(conn: &Connection, new: &NewTrigger<'_>) -> Result<Trigger, StoreError> {
    let uuid = uuid::Uuid::new_v4().to_string();
    conn.execute(
        "INSERT INTO build_trigger (uuid, service, repository, connected_user, config, \
         public_key, secure_private_key, created_at) VALUES (?1, ?2, ?3, ?4, '{}', ?5, ?6, ?7)",
        params![
            uuid,
            new.service.as_str(),
            new.repository,
            new.connected_user,
            new.public_key,
            new.secure_private_key,
            now_ms()
        ],
    )?;
    get(conn, &uuid)?.ok_or(StoreError::Db(BuildDbError::NotFound(uuid)))
}

/// The trigger `uuid`, if any.
pub fn get(conn: &Connection, uuid: &str) -> Result<Option<Trigger>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM build_trigger WHERE uuid = ?1"
    ))?
    .query_row(params![uuid], from_row)
    .optional()?
    .map(finish_row)
    .transpose()
}

/// The triggers of `repository`, oldest first.
pub fn list(conn: &Connection, repository: &str) -> Result<Vec<Trigger>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM build_trigger WHERE repository = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![repository], from_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(finish_row(row?)?);
    }
    Ok(out)
}

/// Store an activation (a re-activation replaces config, token, secret and robot).
pub fn activate(conn: &Connection, uuid: &str, a: &Activation<'_>) -> Result<bool, StoreError> {
    let config = serde_json::to_string(a.config).map_err(|source| StoreError::Config {
        uuid: uuid.to_owned(),
        source,
    })?;
    let n = conn.execute(
        "UPDATE build_trigger SET config = ?1, secure_webhook_token = ?2, \
         secure_webhook_secret = ?3, pull_robot = ?4, activated_at = ?5 WHERE uuid = ?6",
        params![
            config,
            a.secure_webhook_token,
            a.secure_webhook_secret,
            a.pull_robot,
            now_ms(),
            uuid
        ],
    )?;
    Ok(n == 1)
}

/// Enable (clearing the reason and both failure counts) or disable as `user_toggled`.
pub fn set_enabled(conn: &Connection, uuid: &str, enabled: bool) -> Result<bool, StoreError> {
    let n = if enabled {
        conn.execute(
            "UPDATE build_trigger SET enabled = 1, disabled_reason = NULL, disabled_at = NULL, \
             successive_failure_count = 0, successive_internal_error_count = 0 WHERE uuid = ?1",
            params![uuid],
        )?
    } else {
        conn.execute(
            "UPDATE build_trigger SET enabled = 0, disabled_reason = ?1, disabled_at = ?2 \
             WHERE uuid = ?3",
            params![DisabledReason::UserToggled.as_str(), now_ms(), uuid],
        )?
    };
    Ok(n == 1)
}

/// Delete the trigger; `false` when there was none. Its builds keep their `trigger_uuid`.
pub fn delete(conn: &Connection, uuid: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM build_trigger WHERE uuid = ?1", params![uuid])? == 1)
}

/// Ids of the builds the trigger started, newest first, at most `limit`.
pub fn build_uuids(conn: &Connection, uuid: &str, limit: u32) -> Result<Vec<String>, BuildDbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT uuid FROM build WHERE trigger_uuid = ?1 ORDER BY started_at DESC, id DESC \
         LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![uuid, limit], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The title of a trigger's webhook access token in registry-core.
pub fn token_title(uuid: &str) -> String {
    format!("Build Trigger: {uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_trigger(conn: &Connection) -> Trigger {
        create(
            conn,
            &NewTrigger {
                service: Service::Github,
                repository: "acme/app",
                connected_user: "alice",
                public_key: "ssh-rsa AAAA k",
                secure_private_key: b"sealed",
            },
        )
        .unwrap()
    }

    #[test]
    fn triggers_round_trip_through_activation_and_toggles() {
        let (_d, db) = crate::db::test_support::db();
        db.write_blocking(|tx| {
            let t = new_trigger(tx);
            assert!(!t.is_active() && t.enabled && t.config.is_empty());
            assert_eq!(t.service, Service::Github);
            let mut config = Map::new();
            config.insert("build_source".into(), "acme/src".into());
            let activation = Activation {
                config: &config,
                secure_webhook_token: b"tok",
                secure_webhook_secret: None,
                pull_robot: Some("acme+puller"),
            };
            assert!(activate(tx, &t.uuid, &activation)?);
            let t = get(tx, &t.uuid)?.unwrap();
            assert!(t.is_active());
            assert_eq!(t.build_source(), "acme/src");
            assert_eq!(t.secure_webhook_token.as_deref(), Some(&b"tok"[..]));
            assert_eq!(t.pull_robot.as_deref(), Some("acme+puller"));

            tx.execute("UPDATE build_trigger SET successive_failure_count = 7", [])?;
            assert!(set_enabled(tx, &t.uuid, false)?);
            let off = get(tx, &t.uuid)?.unwrap();
            assert_eq!(
                (off.enabled, off.disabled_reason.as_deref()),
                (false, Some("user_toggled"))
            );
            assert!(set_enabled(tx, &t.uuid, true)?);
            let on = get(tx, &t.uuid)?.unwrap();
            assert_eq!((on.enabled, on.disabled_reason.as_deref()), (true, None));
            let count: i64 = tx.query_row(
                "SELECT successive_failure_count FROM build_trigger",
                [],
                |r| r.get(0),
            )?;
            assert_eq!(count, 0);

            assert_eq!(list(tx, "acme/app")?.len(), 1);
            assert!(list(tx, "acme/other")?.is_empty());
            assert!(!format!("{on:?}").contains("sealed"));
            assert!(delete(tx, &t.uuid)?);
            assert!(!delete(tx, &t.uuid)?);
            assert_eq!(get(tx, &t.uuid)?, None);
            Ok::<_, StoreError>(())
        })
        .unwrap();
    }
}
