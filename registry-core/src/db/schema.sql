-- registry-core metadata schema, version 2 (db/mod.rs: REGISTRY_SCHEMA; older files are upgraded by
-- the migrations listed there, so every change here needs one).
-- Modelled on Quay's tables (data/database.py), reduced to what a lean single-node registry needs.
-- Times are Unix milliseconds unless a column says otherwise.

-- Users, organisations and robot accounts share one table, as in Quay: a robot is an account named
-- `<namespace>+<short>` owned by a user or organisation, and can hold permissions like a user.
CREATE TABLE account (
    id                INTEGER PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    kind              TEXT    NOT NULL CHECK (kind IN ('user', 'org', 'robot')),
    email             TEXT,
    -- users: argon2id PHC string; NULL for orgs and robots
    password_hash     TEXT,
    -- robots: the user or organisation that owns it
    robot_owner_id    INTEGER REFERENCES account(id) ON DELETE CASCADE,
    -- robots: sha256 hex of the current token (regenerating replaces it, so the old one stops working)
    robot_token_hash  TEXT,
    description       TEXT    NOT NULL DEFAULT '',
    enabled           INTEGER NOT NULL DEFAULT 1,
    created_at        INTEGER NOT NULL
);
CREATE INDEX account_robot_owner ON account(robot_owner_id) WHERE robot_owner_id IS NOT NULL;

-- Teams of an organisation. role: member (read what the team is granted), creator (may also create
-- repositories in the organisation), admin (full control of the organisation).
CREATE TABLE team (
    id           INTEGER PRIMARY KEY,
    org_id       INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('member', 'creator', 'admin')),
    description  TEXT    NOT NULL DEFAULT '',
    UNIQUE (org_id, name)
);

CREATE TABLE team_member (
    team_id     INTEGER NOT NULL REFERENCES team(id) ON DELETE CASCADE,
    account_id  INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, account_id)
) WITHOUT ROWID;

-- Access tokens usable as the password of the `$token` user at /v2/auth (Quay's application tokens).
CREATE TABLE access_token (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
    title       TEXT    NOT NULL,
    -- sha256 hex of the token; the token itself is shown once, at creation
    token_hash  TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    -- scoped tokens (version 2): scope_role is the role ceiling, set iff the token is scoped;
    -- scope_repository the only repository it reaches (NULL: all of its owner's)
    scope_repository  TEXT,
    scope_role        TEXT CHECK (scope_role IN ('read', 'write', 'admin'))
);
-- buildman deletes a build's tokens by title when the build ends.
CREATE INDEX access_token_title ON access_token(title);

CREATE TABLE repository (
    id            INTEGER PRIMARY KEY,
    namespace_id  INTEGER NOT NULL REFERENCES account(id) ON DELETE CASCADE,
    -- full name, `<namespace>/<repository>`
    name          TEXT    NOT NULL UNIQUE,
    visibility    TEXT    NOT NULL DEFAULT 'private' CHECK (visibility IN ('public', 'private')),
    description   TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL
);

-- Direct repository permissions for a user or robot (account_id) or a team (team_id).
CREATE TABLE repo_permission (
    id             INTEGER PRIMARY KEY,
    repository_id  INTEGER NOT NULL REFERENCES repository(id) ON DELETE CASCADE,
    account_id     INTEGER REFERENCES account(id) ON DELETE CASCADE,
    team_id        INTEGER REFERENCES team(id) ON DELETE CASCADE,
    role           TEXT    NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    CHECK ((account_id IS NULL) <> (team_id IS NULL))
);
CREATE UNIQUE INDEX repo_permission_account ON repo_permission(repository_id, account_id)
    WHERE account_id IS NOT NULL;
CREATE UNIQUE INDEX repo_permission_team ON repo_permission(repository_id, team_id)
    WHERE team_id IS NOT NULL;

-- A blob whose bytes are stored, verified, at blobs/<alg>/<2 hex>/<hex>. A row exists only after the
-- file has been renamed into place, so a row always means "these bytes match this digest".
CREATE TABLE blob (
    digest      TEXT    PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Which repositories may see a blob (uploaded there or mounted into it).
CREATE TABLE repo_blob (
    repository_id  INTEGER NOT NULL REFERENCES repository(id) ON DELETE CASCADE,
    digest         TEXT    NOT NULL REFERENCES blob(digest),
    linked_at      INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;

CREATE TABLE manifest (
    id                 INTEGER PRIMARY KEY,
    repository_id      INTEGER NOT NULL REFERENCES repository(id) ON DELETE CASCADE,
    digest             TEXT    NOT NULL,
    media_type         TEXT    NOT NULL,
    -- the exact bytes the client pushed
    bytes              BLOB    NOT NULL,
    subject            TEXT,
    artifact_type      TEXT,
    config_media_type  TEXT,
    -- JSON object of the manifest's annotations, for referrers descriptors
    annotations        TEXT,
    created_at         INTEGER NOT NULL,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifest_subject ON manifest(repository_id, subject) WHERE subject IS NOT NULL;

-- Blobs (config, layers) a manifest references.
CREATE TABLE manifest_blob (
    manifest_id  INTEGER NOT NULL REFERENCES manifest(id) ON DELETE CASCADE,
    digest       TEXT    NOT NULL,
    PRIMARY KEY (manifest_id, digest)
) WITHOUT ROWID;

-- Manifests an index or manifest list references.
CREATE TABLE manifest_child (
    manifest_id   INTEGER NOT NULL REFERENCES manifest(id) ON DELETE CASCADE,
    child_digest  TEXT    NOT NULL,
    PRIMARY KEY (manifest_id, child_digest)
) WITHOUT ROWID;

-- Tags with history: a live tag has lifetime_end_ms NULL; moving or deleting a tag ends its row.
CREATE TABLE tag (
    id                 INTEGER PRIMARY KEY,
    repository_id      INTEGER NOT NULL REFERENCES repository(id) ON DELETE CASCADE,
    name               TEXT    NOT NULL,
    manifest_digest    TEXT    NOT NULL,
    lifetime_start_ms  INTEGER NOT NULL,
    lifetime_end_ms    INTEGER
);
CREATE UNIQUE INDEX tag_live ON tag(repository_id, name) WHERE lifetime_end_ms IS NULL;
CREATE INDEX tag_manifest ON tag(repository_id, manifest_digest) WHERE lifetime_end_ms IS NULL;

-- Upload sessions. offset and hash_state are updated together, after the bytes up to offset are
-- written to uploads/<uuid>; bytes past offset in that file (a crash mid-write) are discarded.
CREATE TABLE upload (
    uuid           TEXT    PRIMARY KEY,
    repository_id  INTEGER NOT NULL REFERENCES repository(id) ON DELETE CASCADE,
    algorithm      TEXT    NOT NULL,
    offset         INTEGER NOT NULL,
    hash_state     BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX upload_updated ON upload(updated_at);

-- Repository events (pushes, tag deletions) for the registry's consumers (buildman's repo_push).
CREATE TABLE repo_event (
    id             INTEGER PRIMARY KEY,
    repository_id  INTEGER NOT NULL REFERENCES repository(id) ON DELETE CASCADE,
    kind           TEXT    NOT NULL,
    -- JSON payload
    payload        TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);
