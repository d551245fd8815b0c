//! Trigger paths of another repository, and activations or deletions that fail half-way: no
//! webhook token is left behind in registry-core.

use http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{activate, counts, create, trigger_path, webhook_token};
use crate::support::Fixture;

const SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Webhook tokens of trigger `uuid` in registry-core.
async fn tokens_of(f: &Fixture, uuid: &str) -> i64 {
    let title = format!("Build Trigger: {uuid}");
    f.state
        .registry
        .db
        .read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM access_token WHERE title = ?1",
                [title],
                |r| r.get(0),
            )
            .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap()
}

/// Run `sql` on builds.db.
async fn builds_sql(f: &Fixture, sql: &'static str) {
    f.state
        .builds
        .write(move |tx| {
            tx.execute_batch(sql)
                .map_err(registry_core::db::DbError::from)
        })
        .await
        .unwrap();
}

/// A custom-git trigger of alice's, activated on `git@h:a/b.git`.
async fn active_custom_git(f: &Fixture) -> String {
    let uuid = create(f, "custom-git").await;
    let r = activate(
        f,
        &uuid,
        json!({"config": {"build_source": "git@h:a/b.git"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    uuid
}

#[tokio::test]
async fn another_repositorys_path_finds_no_trigger_and_changes_nothing() {
    let f = Fixture::new().await;
    let uuid = active_custom_git(&f).await;
    let before = f
        .call("GET", &trigger_path(&uuid), Some("alice"), None)
        .await
        .json;
    // alice administers acme/pub too: only the trigger's own repository finds it.
    let other = format!("/api/v1/repository/acme/pub/trigger/{uuid}");
    let calls: [(&str, String, Option<Value>); 5] = [
        (
            "POST",
            format!("{other}/activate"),
            Some(json!({"config": {"build_source": "git@h:c/d.git"}})),
        ),
        ("PUT", other.clone(), Some(json!({"enabled": false}))),
        ("DELETE", other.clone(), None),
        (
            "POST",
            format!("{other}/start"),
            Some(json!({"commit_sha": SHA})),
        ),
        ("GET", format!("{other}/builds"), None),
    ];
    for (method, path, body) in calls {
        let r = f.call(method, &path, Some("alice"), body).await;
        assert_eq!(
            r.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {:?}",
            r.json
        );
        assert!(r.message().contains(&uuid), "{}", r.message());
    }
    let after = f
        .call("GET", &trigger_path(&uuid), Some("alice"), None)
        .await
        .json;
    assert_eq!(before, after, "nothing changed");
    assert_eq!(tokens_of(&f, &uuid).await, 1);
    assert_eq!(counts(&f).await, (0, 0));
}

#[tokio::test]
async fn a_failed_activation_leaves_no_token() {
    let f = Fixture::new().await;
    let body = json!({"config": {"build_source": "git@h:a/b.git"}});

    // The store fails.
    let failing = create(&f, "custom-git").await;
    builds_sql(
        &f,
        "CREATE TRIGGER fail_activation BEFORE UPDATE ON build_trigger \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .await;
    let r = activate(&f, &failing, body.clone()).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", r.json);
    assert_eq!(
        tokens_of(&f, &failing).await,
        0,
        "the new token was deleted"
    );
    builds_sql(&f, "DROP TRIGGER fail_activation;").await;

    // The trigger is deleted between the checks and the store.
    let vanishing = create(&f, "custom-git").await;
    builds_sql(
        &f,
        "CREATE TRIGGER vanish BEFORE UPDATE ON build_trigger \
         BEGIN DELETE FROM build_trigger WHERE uuid = OLD.uuid; SELECT RAISE(IGNORE); END;",
    )
    .await;
    let r = activate(&f, &vanishing, body.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.json);
    assert_eq!(
        tokens_of(&f, &vanishing).await,
        0,
        "the new token was deleted"
    );
    builds_sql(&f, "DROP TRIGGER vanish;").await;

    let r = activate(&f, &failing, body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json);
    assert_eq!(tokens_of(&f, &failing).await, 1);
    assert!(!webhook_token(&r.json).is_empty());
}

#[tokio::test]
async fn a_failed_deletion_can_be_retried_and_cleans_up() {
    let f = Fixture::new().await;
    let uuid = active_custom_git(&f).await;
    let path = trigger_path(&uuid);
    // registry-core refuses to delete the token: the trigger stays, so a retry can finish.
    let fail = "CREATE TRIGGER keep_tokens BEFORE DELETE ON access_token \
                BEGIN SELECT RAISE(ABORT, 'injected failure'); END;";
    let registry = |sql: &'static str| {
        let db = f.state.registry.db.clone();
        async move {
            db.write(move |tx| {
                tx.execute_batch(sql)
                    .map_err(registry_core::db::DbError::from)
            })
            .await
            .unwrap();
        }
    };
    registry(fail).await;
    let r = f.call("DELETE", &path, Some("alice"), None).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", r.json);
    let r = f.call("GET", &path, Some("alice"), None).await;
    assert_eq!(r.status, StatusCode::OK, "the trigger is still there");
    registry("DROP TRIGGER keep_tokens;").await;
    let r = f.call("DELETE", &path, Some("alice"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.json);
    assert_eq!(tokens_of(&f, &uuid).await, 0);
    let r = f.call("GET", &path, Some("alice"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
