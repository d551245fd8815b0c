//! The token service, `GET /v2/auth?service=..&scope=repository:ns/name:pull,push&scope=..`
//! (and the OAuth2 form `POST`), as Quay's `endpoints/v2/v2auth.py` behaves.
//!
//! Callers present Basic credentials (user + password, `ns+robot` + token, `$token` + access
//! token) or none. Each requested repository scope is scoped down to what the caller may do:
//! `pull` needs read, `push` and `delete` need write, `*` needs admin. A push to a repository that
//! does not exist yet is granted (with pull) when the caller may create repositories in its
//! namespace. Anonymous callers get pull on public repositories only, and only when
//! `FEATURE_ANONYMOUS_ACCESS` is on. Credentials and tokens are never logged.
//!
//! A scoped access token ([`TokenScope`]) gets the account's actions capped by its scope: nothing
//! outside its repository, nothing above its role (write = pull + push; `delete` and `*` need an
//! admin ceiling), and a registry token that expires no later than the access token does.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::token::{AccessEntry, Claims, ISSUER, ScopeClaim, TokenContext, now_s};
use crate::accounts::AccountError;
use crate::accounts::credentials::{self, Identity, Presented, Principal};
use crate::accounts::permissions::{self, Role};
use crate::accounts::tokens::TokenScope;
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::repos;
use crate::state::AppState;

/// One parsed `scope` entry we act on.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    /// `repository:<name>:<actions>`.
    Repository {
        name: RepoName,
        actions: Vec<String>,
    },
    /// `registry:catalog:*`.
    Catalog,
}

/// Parse one scope; `Ok(None)` for resource types we ignore (the token spec says to).
fn parse_scope(raw: &str) -> Result<Option<Scope>, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            format!("scope {raw:?} is invalid: expected repository:<namespace>/<name>:<actions>"),
        )
    };
    let (kind, rest) = raw.split_once(':').ok_or_else(invalid)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(invalid)?;
    // A resource class may follow the type: `repository(plugin)`.
    let kind = kind.split_once('(').map_or(kind, |(k, _)| k);
    match kind {
        "repository" => {
            let name = name.parse::<RepoName>().map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::NameInvalid,
                    e.to_string(),
                )
            })?;
            let actions = actions
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            Ok(Some(Scope::Repository { name, actions }))
        }
        "registry" if name == "catalog" => Ok(Some(Scope::Catalog)),
        _ => Ok(None),
    }
}

/// The actions granted out of `requested`, given the caller's role and whether the repository is
/// missing but creatable by the caller. Pure; the order is canonical (pull, push, delete, `*`).
fn downscope(requested: &[String], role: Role, creatable: bool) -> Vec<String> {
    let effective = if creatable {
        role.max(Role::Write)
    } else {
        role
    };
    let wants = |a: &str| requested.iter().any(|r| r == a);
    let mut granted = Vec::new();
    let push = wants("push") && effective >= Role::Write;
    if (wants("pull") || (push && creatable)) && effective >= Role::Read {
        granted.push("pull".to_owned());
    }
    if push {
        granted.push("push".to_owned());
    }
    if wants("delete") && effective >= Role::Write {
        granted.push("delete".to_owned());
    }
    if wants("*") && effective == Role::Admin {
        granted.push("*".to_owned());
    }
    granted
}

/// Body of a successful answer.
#[derive(Debug, Serialize)]
struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "invalid credentials: the user name, password or token is wrong",
    )
}

fn account_error(e: AccountError) -> ApiError {
    ApiError::internal(e)
}

/// Collect the `scope` values (repeated, each possibly space-separated as in OAuth2).
fn scopes_of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Vec<Scope>, ApiError> {
    let mut out: Vec<Scope> = Vec::new();
    for (k, v) in pairs {
        if k != "scope" {
            continue;
        }
        for raw in v.split_whitespace() {
            let Some(scope) = parse_scope(raw)? else {
                continue;
            };
            // Merge repeated scopes for one repository.
            match (&scope, out.iter_mut().find(|s| same_resource(s, &scope))) {
                (
                    Scope::Repository { actions, .. },
                    Some(Scope::Repository { actions: have, .. }),
                ) => {
                    have.extend(actions.iter().cloned());
                }
                (_, Some(_)) => {}
                (_, None) => out.push(scope),
            }
        }
    }
    Ok(out)
}

fn same_resource(a: &Scope, b: &Scope) -> bool {
    match (a, b) {
        (Scope::Repository { name: x, .. }, Scope::Repository { name: y, .. }) => x == y,
        (Scope::Catalog, Scope::Catalog) => true,
        _ => false,
    }
}

/// The actions out of `requested` that `who` (None = anonymous), holding a token limited by
/// `scope` (None = not a scoped token), may perform on `repo` now.
pub(crate) fn allowed_actions(
    conn: &rusqlite::Connection,
    who: Option<&crate::accounts::Account>,
    scope: Option<&TokenScope>,
    super_users: &[String],
    repo: &crate::names::RepoName,
    requested: &[String],
) -> Result<Vec<String>, AccountError> {
    let role = permissions::repo_role(conn, who, super_users, repo)?;
    let creatable = repos::find(conn, repo)?.is_none()
        && scope.is_none_or(|s| s.may_create(repo))
        && permissions::can_create(conn, who, super_users, repo.namespace())?;
    Ok(capped_downscope(requested, role, creatable, scope, repo))
}

/// [`downscope`] with the scope's caps applied (pure).
fn capped_downscope(
    requested: &[String],
    role: Role,
    creatable: bool,
    scope: Option<&TokenScope>,
    repo: &RepoName,
) -> Vec<String> {
    let Some(scope) = scope else {
        return downscope(requested, role, creatable);
    };
    let mut granted = downscope(requested, scope.cap(repo, role), creatable);
    granted.retain(|a| scope.permits(a));
    granted
}

/// Compute the access entries for `who` (None = anonymous).
async fn grant(
    state: &AppState,
    who: Option<&Principal>,
    scopes: Vec<Scope>,
) -> Result<Vec<AccessEntry>, ApiError> {
    let account = who.map(|p| p.account.clone());
    let token_scope = who.and_then(|p| p.scope.clone());
    let super_users = state.config.super_users.clone();
    state
        .db
        .read(move |conn| {
            let mut entries = Vec::with_capacity(scopes.len());
            for scope in scopes {
                match scope {
                    Scope::Repository { name, actions } => {
                        let who = account.as_ref();
                        let granted = allowed_actions(
                            conn,
                            who,
                            token_scope.as_ref(),
                            &super_users,
                            &name,
                            &actions,
                        )?;
                        // Anonymous callers get no entry for what they may not do (the registry
                        // then asks them to log in); accounts get the entry with what they may do.
                        if who.is_some() || !granted.is_empty() {
                            entries.push(AccessEntry {
                                kind: "repository".to_owned(),
                                name: name.to_string(),
                                actions: granted,
                            });
                        }
                    }
                    // Any logged-in account may list (a repository-scoped token may not); a
                    // catalog endpoint must show it only the repositories it may read.
                    Scope::Catalog
                        if account.is_some()
                            && token_scope.as_ref().is_none_or(|s| s.repository.is_none()) =>
                    {
                        entries.push(AccessEntry {
                            kind: "registry".to_owned(),
                            name: "catalog".to_owned(),
                            actions: vec!["*".to_owned()],
                        })
                    }
                    Scope::Catalog => {}
                }
            }
            Ok::<_, AccountError>(entries)
        })
        .await
        .map_err(account_error)
}

/// Authenticate, downscope and sign.
async fn issue(
    state: &AppState,
    presented: &Presented,
    scopes: Vec<Scope>,
) -> Result<Response, ApiError> {
    let who = match credentials::identify(&state.db, presented)
        .await
        .map_err(account_error)?
    {
        Identity::Known(p) => Some(p),
        Identity::Anonymous if state.config.anonymous_access => None,
        Identity::Anonymous => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "anonymous access is disabled: log in",
            ));
        }
        Identity::BadCredentials => {
            if let Presented::Basic { username, .. } = presented {
                tracing::info!(user = %username, "registry login refused");
            }
            return Err(unauthorized());
        }
    };
    let access = grant(state, who.as_ref(), scopes).await?;
    let now = now_s();
    let scope = who.as_ref().and_then(|p| p.scope.as_ref());
    let lifetime = lifetime_s(
        state.config.token_validity_lifetime_s,
        now,
        scope.and_then(|s| s.expires_at_ms),
    );
    let sub = who
        .as_ref()
        .map_or(String::new(), |p| p.account.name.clone());
    let claims = Claims {
        iss: ISSUER.to_owned(),
        sub: sub.clone(),
        aud: state.config.server_hostname.clone(),
        exp: now.saturating_add(lifetime),
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        access,
        context: TokenContext {
            kind: who
                .as_ref()
                .map_or("anonymous", |p| p.via.context_kind())
                .to_owned(),
            user: who.as_ref().map(|p| p.account.name.clone()),
            token_scope: scope.map(ScopeClaim::from),
        },
    };
    let token = state.keys.sign(&claims).map_err(ApiError::internal)?;
    tracing::debug!(subject = %sub, entries = claims.access.len(), "issued registry token");
    Ok(Json(TokenResponse {
        access_token: token.clone(),
        token,
        expires_in: lifetime,
        issued_at: crate::api::common::rfc3339(now),
    })
    .into_response())
}

/// The registry token's lifetime: the configured one, cut so that it ends no later than the
/// access token it was issued for (`expires_at_ms`).
fn lifetime_s(configured: u64, now: u64, expires_at_ms: Option<i64>) -> u64 {
    match expires_at_ms {
        Some(ms) => {
            let left = u64::try_from(ms / 1_000).unwrap_or(0).saturating_sub(now);
            configured.min(left)
        }
        None => configured,
    }
}

/// `GET /v2/auth`: Basic credentials in the header, scopes in the query.
pub async fn get_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let scopes = scopes_of(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    issue(&state, &credentials::from_headers(&headers), scopes).await
}

/// `POST /v2/auth`: the OAuth2 password grant (`grant_type=password&username=..&password=..
/// &scope=..&service=..`), or Basic credentials in the header with the form's scopes.
pub async fn post_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            "the body must be an application/x-www-form-urlencoded OAuth2 token request",
        )
    })?;
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let presented = match field("grant_type").as_deref() {
        Some("password") => Presented::Basic {
            username: field("username").unwrap_or_default(),
            secret: field("password").unwrap_or_default(),
        },
        None => credentials::from_headers(&headers),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("grant_type {other:?} is not supported: use password"),
            ));
        }
    };
    let scopes = scopes_of(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    issue(&state, &presented, scopes).await
}

#[cfg(test)]
mod tests {
    //! Unit tests of the pure parts; the HTTP behaviour is tested in `api::tests::v2auth`.

    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scopes_parse_merge_and_ignore_unknown_types() {
        let pairs = [
            ("service", "reg"),
            ("scope", "repository:acme/app:pull"),
            (
                "scope",
                "repository:acme/app:push repository(plugin):a/b:pull",
            ),
            ("scope", "registry:catalog:*"),
            ("scope", "plugin:x:y"),
        ];
        let scopes = scopes_of(pairs.into_iter()).unwrap();
        assert_eq!(
            scopes,
            vec![
                Scope::Repository {
                    name: "acme/app".parse().unwrap(),
                    actions: strings(&["pull", "push"])
                },
                Scope::Repository {
                    name: "a/b".parse().unwrap(),
                    actions: strings(&["pull"])
                },
                Scope::Catalog,
            ]
        );
        for bad in ["repository", "repository:acme/app", "repository:NoNs:pull"] {
            let err = parse_scope(bad).unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn downscope_matrix() {
        let all = strings(&["pull", "push", "delete", "*"]);
        let cases: [(Role, bool, &[&str]); 6] = [
            (Role::None, false, &[]),
            (Role::Read, false, &["pull"]),
            (Role::Write, false, &["pull", "push", "delete"]),
            (Role::Admin, false, &["pull", "push", "delete", "*"]),
            (Role::None, true, &["pull", "push", "delete"]),
            (Role::Read, true, &["pull", "push", "delete"]),
        ];
        for (role, creatable, want) in cases {
            assert_eq!(
                downscope(&all, role, creatable),
                strings(want),
                "{role:?} {creatable}"
            );
        }
        // Push on a missing, creatable repository brings pull with it.
        assert_eq!(
            downscope(&strings(&["push"]), Role::None, true),
            strings(&["pull", "push"])
        );
        // But not on an existing one where the caller only writes what it asked for.
        assert_eq!(
            downscope(&strings(&["push"]), Role::Write, false),
            strings(&["push"])
        );
        assert!(downscope(&strings(&["fly"]), Role::Admin, false).is_empty());
    }

    #[test]
    fn scoped_tokens_are_capped() {
        let all = strings(&["pull", "push", "delete", "*"]);
        let app: RepoName = "acme/app".parse().unwrap();
        let other: RepoName = "acme/other".parse().unwrap();
        let scope = |repo: Option<&RepoName>, max_role| TokenScope {
            repository: repo.cloned(),
            max_role,
            expires_at_ms: None,
        };
        let build = scope(Some(&app), Role::Write);
        let cases: [(&TokenScope, &RepoName, Role, bool, &[&str]); 7] = [
            // Quay's build token: write = pull + push, even for an admin owner; no delete.
            (&build, &app, Role::Admin, false, &["pull", "push"]),
            (&build, &app, Role::Read, false, &["pull"]),
            (&build, &app, Role::None, true, &["pull", "push"]),
            // Nothing outside the scope's repository, even for its admin.
            (&build, &other, Role::Admin, false, &[]),
            (&build, &other, Role::Read, false, &[]),
            // A read-capped pull token pulls what the owner may pull, never more.
            (
                &scope(None, Role::Read),
                &other,
                Role::Write,
                false,
                &["pull"],
            ),
            (
                &scope(None, Role::Admin),
                &other,
                Role::Admin,
                false,
                &["pull", "push", "delete", "*"],
            ),
        ];
        for (s, repo, role, creatable, want) in cases {
            assert_eq!(
                capped_downscope(&all, role, creatable, Some(s), repo),
                strings(want),
                "{s:?} on {repo} with {role:?}"
            );
        }
        assert_eq!(
            capped_downscope(&all, Role::Write, false, None, &app),
            strings(&["pull", "push", "delete"])
        );
    }

    #[test]
    fn registry_tokens_end_with_the_access_token() {
        assert_eq!(lifetime_s(300, 1_000, None), 300);
        assert_eq!(lifetime_s(300, 1_000, Some(1_060_000)), 60);
        assert_eq!(lifetime_s(300, 1_000, Some(9_000_000)), 300);
        assert_eq!(lifetime_s(300, 1_000, Some(500_000)), 0);
        assert_eq!(lifetime_s(300, 1_000, Some(-5)), 0);
    }

    use proptest::prelude::*;

    /// Scope-shaped strings: known and unknown types, resource classes, valid and invalid names,
    /// action lists with blanks, spaces and odd separators.
    fn scopey() -> impl Strategy<Value = String> {
        let kind = prop_oneof![
            Just("repository".to_owned()),
            Just("registry".to_owned()),
            "[a-z()]{0,12}",
            "repository\\([a-z]{0,6}\\)?",
        ];
        let name = prop_oneof![
            "[a-z0-9]{1,4}/[a-z0-9._-]{1,6}(/[a-z0-9]{1,3})?",
            Just("catalog".to_owned()),
            "[A-Za-z0-9/:._-]{0,12}",
        ];
        let actions = prop_oneof![
            prop::collection::vec(
                prop::sample::select(vec!["pull", "push", "delete", "*", "", " ", "fly"]),
                0..5,
            )
            .prop_map(|v| v.join(",")),
            "[a-z*, :\t]{0,16}",
        ];
        (kind, ":{1,2}", name, ":{0,2}", actions)
            .prop_map(|(k, c1, n, c2, a)| format!("{k}{c1}{n}{c2}{a}"))
    }

    fn render(scope: &Scope) -> String {
        match scope {
            Scope::Repository { name, actions } => {
                format!("repository:{name}:{}", actions.join(","))
            }
            Scope::Catalog => "registry:catalog:*".to_owned(),
        }
    }

    fn check_scope(raw: &str, scope: &Scope) -> Result<(), TestCaseError> {
        if let Scope::Repository { actions, .. } = scope {
            for a in actions {
                prop_assert!(
                    !a.is_empty() && a.trim() == a && !a.contains([',', ':']),
                    "{:?} from {:?}",
                    a,
                    raw
                );
            }
        }
        // The canonical form of what was understood means the same thing.
        let again = parse_scope(&render(scope))
            .map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
        prop_assert_eq!(again.as_ref(), Some(scope), "{:?}", raw);
        Ok(())
    }

    proptest! {
        #[test]
        fn parse_scope_never_panics(raw in any::<String>()) {
            let _ = parse_scope(&raw);
        }

        #[test]
        fn accepted_scopes_round_trip(raw in scopey()) {
            if let Ok(Some(scope)) = parse_scope(&raw) {
                check_scope(&raw, &scope)?;
            }
        }

        #[test]
        fn scopes_of_never_panics_and_merges_each_resource_once(
            pairs in prop::collection::vec(
                (
                    prop_oneof![
                        Just("scope".to_owned()),
                        Just("service".to_owned()),
                        any::<String>(),
                    ],
                    prop_oneof![
                        scopey(),
                        prop::collection::vec(scopey(), 0..4).prop_map(|v| v.join(" ")),
                        any::<String>(),
                    ],
                ),
                0..6,
            ),
        ) {
            let Ok(scopes) = scopes_of(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))) else {
                return Ok(());
            };
            for (i, a) in scopes.iter().enumerate() {
                check_scope("(merged)", a)?;
                prop_assert!(!scopes[i + 1..].iter().any(|b| same_resource(a, b)), "{:?}", scopes);
            }
        }
    }
}
