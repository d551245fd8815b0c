-- Version 2: build triggers, build events, repository notifications (reference 5 and 7).
-- Applied to new databases after schema.sql, and to version-1 databases as a migration.

-- Quay's RepositoryBuildTrigger.
CREATE TABLE build_trigger (
    id                              INTEGER PRIMARY KEY,
    uuid                            TEXT    NOT NULL UNIQUE,
    -- 'github' | 'gitlab' | 'bitbucket' | 'custom-git'
    service                         TEXT    NOT NULL,
    -- "<namespace>/<repository>"
    repository                      TEXT    NOT NULL,
    -- the user who created it; builds run with their permissions (as Quay's connected_user)
    connected_user                  TEXT    NOT NULL,
    -- JSON: Quay's trigger config (build_source, dockerfile_path, context, branchtag_regex,
    -- default_tag_from_ref, latest_for_default_branch, tag_templates, credentials, ...)
    config                          TEXT    NOT NULL DEFAULT '{}',
    -- the deploy key: public half in OpenSSH form, private half (PEM) encrypted (secrets.rs)
    public_key                      TEXT    NOT NULL,
    secure_private_key              BLOB    NOT NULL,
    -- the $token of the webhook URL, encrypted (shown to repository admins in the view); the
    -- access token itself lives in registry-core, titled "Build Trigger: <uuid>"
    secure_webhook_token            BLOB,
    -- the provider's webhook secret (GitHub/Bitbucket HMAC key, GitLab token), encrypted
    secure_webhook_secret           BLOB,
    pull_robot                      TEXT,
    -- set by activation; NULL = not active (no builds)
    activated_at                    INTEGER,
    enabled                         INTEGER NOT NULL DEFAULT 1,
    -- 'successive_build_failures' | 'successive_build_internal_errors' | 'user_toggled'
    disabled_reason                 TEXT,
    disabled_at                     INTEGER,
    successive_failure_count        INTEGER NOT NULL DEFAULT 0,
    successive_internal_error_count INTEGER NOT NULL DEFAULT 0,
    created_at                      INTEGER NOT NULL
);
CREATE INDEX build_trigger_by_repo ON build_trigger (repository);
CREATE INDEX build_by_trigger ON build (trigger_uuid, started_at);

-- Outbox of build events, written in the transaction that changes the build, so that no event
-- is lost or sent for a change that rolled back. The dispatcher turns each row into notification
-- deliveries and trigger failure counts, then deletes it.
CREATE TABLE build_event (
    id         INTEGER PRIMARY KEY,
    build_uuid TEXT    NOT NULL,
    -- 'build_queued' | 'build_start' | 'build_success' | 'build_failure' | 'build_cancelled'
    event      TEXT    NOT NULL,
    -- the error message of build_failure
    message    TEXT,
    created_at INTEGER NOT NULL
);

-- Quay's RepositoryNotification.
CREATE TABLE repo_notification (
    id                 INTEGER PRIMARY KEY,
    uuid               TEXT    NOT NULL UNIQUE,
    repository         TEXT    NOT NULL,
    -- 'build_queued' | 'build_start' | 'build_success' | 'build_failure' | 'build_cancelled'
    -- | 'repo_push'
    event              TEXT    NOT NULL,
    -- 'webhook' | 'slack' | 'email' | 'quay_notification'
    method             TEXT    NOT NULL,
    title              TEXT,
    -- JSON: the method's config (url, email, template, ...)
    config             TEXT    NOT NULL DEFAULT '{}',
    -- JSON: the event's config (ref-regex)
    event_config       TEXT    NOT NULL DEFAULT '{}',
    number_of_failures INTEGER NOT NULL DEFAULT 0,
    created_by         TEXT,
    created_at         INTEGER NOT NULL
);
CREATE INDEX repo_notification_by_repo ON repo_notification (repository, event);

-- Deliveries still to make, one per (notification, event occurrence); deleted once delivered or
-- given up. Survives restarts.
CREATE TABLE notification_delivery (
    id                INTEGER PRIMARY KEY,
    notification_uuid TEXT    NOT NULL REFERENCES repo_notification(uuid) ON DELETE CASCADE,
    event             TEXT    NOT NULL,
    -- JSON event_data, built when the event happened
    payload           TEXT    NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    available_after   INTEGER NOT NULL,
    last_error        TEXT,
    created_at        INTEGER NOT NULL
);
CREATE INDEX notification_delivery_ready ON notification_delivery (available_after, id);

-- The in-app notification list (method quay_notification): one row per recipient user.
CREATE TABLE user_notification (
    id         INTEGER PRIMARY KEY,
    uuid       TEXT    NOT NULL UNIQUE,
    username   TEXT    NOT NULL,
    -- the event name, Quay's notification kind
    kind       TEXT    NOT NULL,
    -- JSON: repository, event data
    metadata   TEXT    NOT NULL,
    dismissed  INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE INDEX user_notification_by_user ON user_notification (username, created_at);

-- Small named values: the last registry-core repo_event id turned into repo_push notifications.
CREATE TABLE buildman_state (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
