//! Event data (reference 7.1): what webhooks receive as their body and what the other methods
//! summarise. Every payload starts with Quay's `build_repository_event_data`.

use serde_json::{Map, Value, json};

use crate::events::BuildEvent;
use crate::model::Build;

/// The most bytes of free text (an error message, a commit message) a payload carries.
pub const MAX_TEXT: usize = 4096;
/// What ends a text cut to [`MAX_TEXT`].
pub const TRUNCATED: &str = "... [truncated]";

/// `text` cut to at most [`MAX_TEXT`] bytes on a char boundary, ending in [`TRUNCATED`] when
/// cut: each delivery, in-app row and retry stores its payload, so a megabyte commit message
/// must not be copied into all of them.
pub fn truncate_text(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT - TRUNCATED.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &text[..end])
}

/// `trigger_metadata` with its commit message cut to [`MAX_TEXT`].
fn cut_commit_message(mut metadata: Value) -> Value {
    if let Some(message) = metadata
        .get_mut("commit_info")
        .and_then(|c| c.get_mut("message"))
        && let Some(text) = message.as_str()
        && text.len() > MAX_TEXT
    {
        *message = Value::String(truncate_text(text));
    }
    metadata
}

/// Where the payload's links point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urls {
    /// `<scheme>://<host>` of the web UI and API (a trailing `/` is ignored).
    pub public_base_url: String,
    /// `SERVER_HOSTNAME`, the registry host of `docker_url`.
    pub server_hostname: String,
}

impl Urls {
    fn base(&self) -> &str {
        self.public_base_url.trim_end_matches('/')
    }

    /// `<server_hostname>/<repository>`.
    pub fn docker_url(&self, repository: &str) -> String {
        format!("{}/{repository}", self.server_hostname)
    }
}

/// Quay's `build_repository_event_data`: `repository`, `namespace`, `name`, `docker_url`,
/// `homepage` (the build's page when `build_uuid` is given).
pub fn repository_data(
    urls: &Urls,
    repository: &str,
    build_uuid: Option<&str>,
) -> Map<String, Value> {
    let (namespace, name) = repository.split_once('/').unwrap_or((repository, ""));
    let mut homepage = format!("{}/repository/{repository}", urls.base());
    if let Some(uuid) = build_uuid {
        homepage.push_str("/build/");
        homepage.push_str(uuid);
    }
    let mut m = Map::new();
    m.insert("repository".into(), json!(repository));
    m.insert("namespace".into(), json!(namespace));
    m.insert("name".into(), json!(name));
    m.insert("docker_url".into(), json!(urls.docker_url(repository)));
    m.insert("homepage".into(), json!(homepage));
    m
}

/// The event data of `event` for `build`. `trigger_kind` is the service of the build's trigger
/// (if it still exists); `message` the failure's error text.
pub fn build_event_data(
    urls: &Urls,
    build: &Build,
    event: BuildEvent,
    trigger_kind: Option<&str>,
    message: Option<&str>,
) -> Value {
    let mut m = repository_data(urls, &build.repository, Some(&build.uuid));
    let job = &build.job_config;
    let trigger_metadata = if job.trigger_metadata.is_null() {
        json!({})
    } else {
        cut_commit_message(job.trigger_metadata.clone())
    };
    m.insert("build_id".into(), json!(build.uuid));
    m.insert("docker_tags".into(), json!(job.docker_tags));
    if event == BuildEvent::Queued {
        // Quay's start_build: no build_name; trigger fields only for trigger builds.
        let is_manual = build.manual_user.is_some();
        let name = m.get("name").cloned().unwrap_or(Value::Null);
        m.insert("repo".into(), name);
        m.insert("is_manual".into(), json!(is_manual));
        m.insert("manual_user".into(), json!(build.manual_user));
        if let Some(trigger) = &build.trigger_uuid {
            m.insert("trigger_id".into(), json!(trigger));
            m.insert("trigger_kind".into(), json!(trigger_kind));
            m.insert("trigger_metadata".into(), trigger_metadata);
            m.insert("trigger_manual".into(), json!(is_manual));
        }
        return Value::Object(m);
    }
    // Quay's BuildJob.send_notification: the trigger fields are always present (null without one).
    m.insert("build_name".into(), json!(build.display_name));
    m.insert("trigger_id".into(), json!(build.trigger_uuid));
    m.insert("trigger_kind".into(), json!(trigger_kind));
    m.insert("trigger_metadata".into(), trigger_metadata);
    match event {
        BuildEvent::Success => {
            let docker_url = urls.docker_url(&build.repository);
            let digests: Vec<String> = build
                .manifest_digests
                .iter()
                .map(|d| {
                    if d.contains('@') {
                        d.clone()
                    } else {
                        format!("{docker_url}@{d}")
                    }
                })
                .collect();
            m.insert("manifest_digests".into(), json!(digests));
        }
        BuildEvent::Failure => {
            if let Some(error) = message.or(build.error.as_deref()) {
                m.insert("error_message".into(), json!(truncate_text(error)));
            }
        }
        _ => {}
    }
    Value::Object(m)
}

/// The event data of a registry push of `tags` to `repository`.
pub fn repo_push_data(urls: &Urls, repository: &str, tags: &[String]) -> Value {
    let mut m = repository_data(urls, repository, None);
    m.insert("updated_tags".into(), json!(tags));
    Value::Object(m)
}

/// Sample data of `event` for `repository` (the `test` call), shaped as the real event.
pub fn sample(urls: &Urls, repository: &str, event: &str) -> Value {
    if event == "repo_push" {
        return repo_push_data(urls, repository, &["latest".to_owned()]);
    }
    let Some(event) = BuildEvent::from_name(event) else {
        return Value::Object(repository_data(urls, repository, None));
    };
    build_event_data(
        urls,
        &sample_build(repository),
        event,
        Some("custom-git"),
        None,
    )
}

/// The build of the samples.
fn sample_build(repository: &str) -> Build {
    const SAMPLE_BUILD: &str = "00000000-0000-4000-8000-000000000000";
    const SAMPLE_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    Build {
        id: 0,
        uuid: SAMPLE_BUILD.to_owned(),
        repository: repository.to_owned(),
        phase: crate::model::Phase::Complete,
        display_name: SAMPLE_COMMIT[..7].to_owned(),
        job_config: crate::model::JobConfig {
            docker_tags: vec!["latest".to_owned()],
            trigger_metadata: json!({
                "commit": SAMPLE_COMMIT,
                "ref": "refs/heads/main",
                "default_branch": "main",
                "git_url": "git@git.example.com:example/app.git",
                "commit_info": {"message": "a sample commit", "author": {"username": "someone"}},
            }),
            ..Default::default()
        },
        resource_key: None,
        pull_robot: None,
        manual_user: None,
        trigger_uuid: Some("00000000-0000-4000-8000-000000000001".to_owned()),
        error: Some("a sample build error".to_owned()),
        manifest_digests: vec![format!("sha256:{}", "0".repeat(64))],
        attempts: 1,
        started_ms: 0,
        updated_ms: 0,
        completed_ms: None,
    }
}

/// `trigger_metadata.ref` of build event data, if any.
pub fn git_ref(data: &Value) -> Option<&str> {
    data.get("trigger_metadata")?.get("ref")?.as_str()
}

/// A one-line summary of an event, for Slack, e-mail subjects and logs.
pub fn summary(event: &str, data: &Value) -> String {
    let s = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
    let repo = s("repository");
    let build = match s("build_name") {
        "" => s("build_id").chars().take(8).collect::<String>(),
        name => name.to_owned(),
    };
    match event {
        "repo_push" => {
            let tags: Vec<&str> = data
                .get("updated_tags")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if tags.is_empty() {
                format!("Images were pushed to {repo}")
            } else {
                format!("Pushed {} to {repo}", tags.join(", "))
            }
        }
        "build_queued" => format!("Build {build} for {repo} was queued"),
        "build_start" => format!("Build {build} for {repo} started"),
        "build_success" => format!("Build {build} for {repo} completed"),
        "build_failure" => match s("error_message") {
            "" => format!("Build {build} for {repo} failed"),
            e => format!("Build {build} for {repo} failed: {e}"),
        },
        "build_cancelled" => format!("Build {build} for {repo} was cancelled"),
        other => format!("{other} for {repo}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> Urls {
        Urls {
            public_base_url: "https://quarry.example/".into(),
            server_hostname: "quarry.example".into(),
        }
    }

    #[test]
    fn repository_data_and_push_have_quays_fields() {
        let v = repo_push_data(&urls(), "acme/app", &["latest".into()]);
        assert_eq!(
            v,
            json!({"repository": "acme/app", "namespace": "acme", "name": "app",
                   "docker_url": "quarry.example/acme/app",
                   "homepage": "https://quarry.example/repository/acme/app",
                   "updated_tags": ["latest"]})
        );
    }

    #[test]
    fn long_error_and_commit_messages_are_cut_on_a_char_boundary() {
        assert_eq!(truncate_text("short"), "short");
        let exact = "a".repeat(MAX_TEXT);
        assert_eq!(truncate_text(&exact), exact);
        // 'é' is two bytes: the cut must not split one.
        let long = "é".repeat(MAX_TEXT);
        let cut = truncate_text(&long);
        assert!(cut.len() <= MAX_TEXT, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.len() > MAX_TEXT - TRUNCATED.len() - 2);

        let mut b = sample_build("acme/app");
        b.error = Some("x".repeat(100_000));
        b.job_config.trigger_metadata["commit_info"]["message"] = json!("m".repeat(100_000));
        let v = build_event_data(&urls(), &b, BuildEvent::Failure, None, None);
        let error = v["error_message"].as_str().unwrap();
        assert_eq!(error.len(), MAX_TEXT);
        assert!(error.ends_with(TRUNCATED));
        let message = v["trigger_metadata"]["commit_info"]["message"]
            .as_str()
            .unwrap();
        assert_eq!(message.len(), MAX_TEXT);
        assert!(message.ends_with(TRUNCATED));
        let v = build_event_data(&urls(), &b, BuildEvent::Failure, None, Some("short"));
        assert_eq!(v["error_message"], "short");
    }

    #[test]
    fn samples_summarise_and_carry_a_ref() {
        for event in [
            "build_queued",
            "build_start",
            "build_success",
            "build_failure",
        ] {
            let v = sample(&urls(), "acme/app", event);
            assert_eq!(v["build_id"], "00000000-0000-4000-8000-000000000000");
            assert_eq!(git_ref(&v), Some("refs/heads/main"), "{event}");
            assert!(summary(event, &v).contains("acme/app"), "{event}");
        }
        let v = sample(&urls(), "acme/app", "build_failure");
        assert_eq!(
            summary("build_failure", &v),
            "Build 0123456 for acme/app failed: a sample build error"
        );
        let v = sample(&urls(), "acme/app", "build_success");
        assert_eq!(
            v["manifest_digests"][0],
            format!("quarry.example/acme/app@sha256:{}", "0".repeat(64))
        );
        assert_eq!(
            summary("repo_push", &sample(&urls(), "acme/app", "repo_push")),
            "Pushed latest to acme/app"
        );
    }
}
