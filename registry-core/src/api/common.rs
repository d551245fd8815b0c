//! Pieces every REST handler uses: the caller extractors, body parsing, names and timestamps.

use axum::extract::FromRequestParts;
use http::request::Parts;
use rusqlite::Connection;
use serde::de::DeserializeOwned;

use super::error::ApiV1Error;
use crate::accounts::credentials::{self, Identity, Principal};
use crate::accounts::{self, Account, AccountKind, robots};
use crate::db::Db;
use crate::names::RepoName;
use crate::state::AppState;

/// An authenticated caller; extracting it answers 401 without credentials or with wrong ones.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

/// A caller that may be anonymous; wrong credentials still answer 401.
#[derive(Clone, Debug)]
pub struct MaybeCaller(pub Option<Principal>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiV1Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = credentials::from_headers(&parts.headers);
        match credentials::identify(&state.db, &presented).await? {
            Identity::Anonymous => Ok(MaybeCaller(None)),
            Identity::Known(p) => Ok(MaybeCaller(Some(p))),
            Identity::BadCredentials => Err(ApiV1Error::Unauthenticated),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiV1Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        MaybeCaller::from_request_parts(parts, state)
            .await?
            .0
            .map(Caller)
            .ok_or(ApiV1Error::Unauthenticated)
    }
}

/// Parse a JSON body; an empty body parses as `{}` (Quay's PUT robot takes none).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiV1Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(ApiV1Error::Body)
}

/// The repository `{ns}/{repo}` of a path (`repo` may hold `%2F`-encoded slashes).
pub fn repo_name(ns: &str, repo: &str) -> Result<RepoName, ApiV1Error> {
    Ok(format!("{ns}/{repo}").parse()?)
}

/// Whether a handler's database work only reads (on a reader connection) or writes (in an
/// immediate transaction).
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// [`Db::read`].
    Read,
    /// [`Db::write`].
    Write,
}

impl Access {
    /// Run `f` on a connection of this kind.
    pub async fn run<T, F>(self, db: &Db, f: F) -> Result<T, ApiV1Error>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiV1Error> + Send + 'static,
    {
        match self {
            Access::Read => db.read(f).await,
            Access::Write => db.write(move |tx| f(tx)).await,
        }
    }
}

/// A user or robot named in a path (`ns+short` is a robot; `+` may arrive as `%2B`).
pub fn user_or_robot(conn: &Connection, name: &str) -> Result<Account, ApiV1Error> {
    let kind = if robots::split_name(name).is_some() {
        AccountKind::Robot
    } else {
        AccountKind::User
    };
    Ok(accounts::get_kind(conn, name, kind)?)
}

/// Forbidden, naming what was refused.
pub fn forbidden(action: impl Into<String>) -> ApiV1Error {
    ApiV1Error::Forbidden {
        action: action.into(),
    }
}

/// Format Unix seconds as RFC 3339 UTC (`2024-01-31T12:00:00Z`).
///
/// Hand-written (the civil-from-days calendar conversion) to avoid a date crate for the one
/// timestamp format the token and REST responses need.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = i64::try_from(unix_secs / 86_400).unwrap_or(0);
    let secs_of_day = unix_secs % 86_400;
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs_of_day / 3_600,
        secs_of_day % 3_600 / 60,
        secs_of_day % 60
    )
}

/// [`rfc3339`] of a Unix-milliseconds database time.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    rfc3339(u64::try_from(unix_ms / 1_000).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_ms(1_700_000_000_999), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn bodies_and_names_parse() {
        let v: serde_json::Value = parse_body(b"").unwrap();
        assert!(v.as_object().unwrap().is_empty());
        assert!(parse_body::<serde_json::Value>(b"{nope").is_err());
        assert_eq!(repo_name("acme", "a/b").unwrap().as_str(), "acme/a/b");
        assert!(repo_name("Acme", "app").is_err());
    }
}
