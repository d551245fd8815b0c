-- buildman's database (builds.db, beside registry-core's meta.db). Times are Unix milliseconds.

CREATE TABLE build (
    id               INTEGER PRIMARY KEY,
    uuid             TEXT    NOT NULL UNIQUE,
    -- "<namespace>/<repository>" as registry-core names it
    repository       TEXT    NOT NULL,
    phase            TEXT    NOT NULL,
    display_name     TEXT    NOT NULL,
    -- JSON: docker_tags, build_subdir, context, archive_url, build_args, trigger_metadata
    job_config       TEXT    NOT NULL,
    -- file_id of an uploaded Dockerfile or archive (build_upload.id)
    resource_key     TEXT,
    pull_robot       TEXT,
    manual_user      TEXT,
    trigger_uuid     TEXT,
    -- why the build failed, in words a user can act on
    error            TEXT,
    -- JSON array of the manifest digests pushed, one per tag
    manifest_digests TEXT    NOT NULL DEFAULT '[]',
    attempts         INTEGER NOT NULL DEFAULT 0,
    started_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    completed_at     INTEGER
);
CREATE INDEX build_by_repo ON build (repository, started_at);
CREATE INDEX build_by_phase ON build (phase);

-- Quay's QueueItem, one row per build still to run or running; deleted when the build ends.
CREATE TABLE queue_item (
    id                 INTEGER PRIMARY KEY,
    -- dockerfilebuild/<namespace>/<repo>/
    queue_name         TEXT    NOT NULL,
    -- JSON {"build_uuid": ...}; never credentials
    body               TEXT    NOT NULL,
    build_uuid         TEXT    NOT NULL UNIQUE REFERENCES build(uuid) ON DELETE CASCADE,
    available_after    INTEGER NOT NULL,
    available          INTEGER NOT NULL,
    processing_expires INTEGER,
    retries_remaining  INTEGER NOT NULL,
    -- changes on every claim, so two managers never claim the same item
    state_id           TEXT    NOT NULL
);
CREATE INDEX queue_item_ready ON queue_item (available_after, id);
CREATE INDEX queue_item_by_name ON queue_item (queue_name);

CREATE TABLE build_log (
    build_id INTEGER NOT NULL REFERENCES build(id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    -- 'phase' | 'command' | 'error' | NULL (plain output)
    kind     TEXT,
    message  TEXT    NOT NULL,
    -- JSON object: datetime, and pull metadata for phase entries
    data     TEXT    NOT NULL,
    PRIMARY KEY (build_id, seq)
) WITHOUT ROWID;

-- Uploaded Dockerfiles and archives (Quay's filedrop), stored under DATA_DIR/buildfiles/<id>.
CREATE TABLE build_upload (
    id          TEXT    PRIMARY KEY,
    account     TEXT    NOT NULL,
    mime_type   TEXT    NOT NULL,
    size        INTEGER,
    sha256      TEXT,
    created_at  INTEGER NOT NULL,
    uploaded_at INTEGER
);
