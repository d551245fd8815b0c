//! Top-level keys of build triggers and repository notifications (reference 5 and 7).
//!
//! Quay's keys keep their names and defaults: `DATABASE_SECRET_KEY` (encrypts deploy keys and
//! webhook secrets at rest), `SUCCESSIVE_TRIGGER_*_DISABLE_THRESHOLD`, `REGISTRY_TITLE`,
//! `NOTIFICATION_SEND_TIMEOUT`, `WEBHOOK_HOSTNAME_BLACKLIST`, `FEATURE_MAILING` and `MAIL_*`.
//! Quarry adds `NOTIFICATION_ALLOW_LOCAL_WEBHOOKS`.

use std::time::Duration;

use super::reader::{Ctx, MapReader};
use super::values::Secret;

/// The keys read here (they leave the Quay-only list; checked by a test there).
#[cfg(test)]
pub(super) const KEYS: &[&str] = &[
    "DATABASE_SECRET_KEY",
    "SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD",
    "SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD",
    "REGISTRY_TITLE",
    "NOTIFICATION_SEND_TIMEOUT",
    "WEBHOOK_HOSTNAME_BLACKLIST",
    "NOTIFICATION_ALLOW_LOCAL_WEBHOOKS",
    "FEATURE_MAILING",
    "MAIL_SERVER",
    "MAIL_PORT",
    "MAIL_USE_TLS",
    "MAIL_USE_AUTH",
    "MAIL_USERNAME",
    "MAIL_PASSWORD",
    "MAIL_DEFAULT_SENDER",
];

/// Build trigger settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerConfig {
    /// `DATABASE_SECRET_KEY`: the key deploy keys and webhook secrets are encrypted with. When
    /// unset, a random key is generated once in `DATA_DIR/buildman-secret.key` (mode 0600).
    pub secret_key: Option<Secret>,
    /// `SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD` (Quay: 100): a trigger whose builds failed
    /// this many times in a row is disabled (`successive_build_failures`); 0 = never.
    pub failure_disable_threshold: u32,
    /// `SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD` (Quay: 5): the same for builds that
    /// ended in an internal error (`successive_build_internal_errors`); 0 = never.
    pub internal_error_disable_threshold: u32,
    /// `REGISTRY_TITLE` (Quay: "Project Quay"; Quarry: "Quarry"): names deploy keys
    /// (`"<title> Builder"`).
    pub registry_title: String,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            secret_key: None,
            failure_disable_threshold: 100,
            internal_error_disable_threshold: 5,
            registry_title: "Quarry".to_owned(),
        }
    }
}

/// Outgoing mail (`FEATURE_MAILING: true` and `MAIL_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailConfig {
    /// `MAIL_SERVER`.
    pub server: String,
    /// `MAIL_PORT` (Quay: 587).
    pub port: u16,
    /// `MAIL_USE_TLS` (Quay: true): STARTTLS, required when true.
    pub use_tls: bool,
    /// `MAIL_USERNAME` and `MAIL_PASSWORD`, when `MAIL_USE_AUTH` is true.
    pub auth: Option<(String, Secret)>,
    /// `MAIL_DEFAULT_SENDER` (Quay: `support@quay.io`; Quarry: `quarry@<SERVER_HOSTNAME host>`).
    pub sender: Option<String>,
}

/// Repository notification settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotificationConfig {
    /// `NOTIFICATION_SEND_TIMEOUT` (Quay: 10 s) for webhook, Slack and mail deliveries.
    pub send_timeout: Duration,
    /// `WEBHOOK_HOSTNAME_BLACKLIST`: hosts webhooks may not target (besides local ones).
    pub webhook_hostname_blacklist: Vec<String>,
    /// `NOTIFICATION_ALLOW_LOCAL_WEBHOOKS` (Quarry; default false): allow webhook targets on
    /// loopback (`localhost`, `127.0.0.0/8`, `::1`), which Quay always refuses.
    pub allow_local_webhooks: bool,
    /// Mail, when `FEATURE_MAILING` is true and `MAIL_SERVER` is set.
    pub mail: Option<MailConfig>,
}

impl Default for NotificationConfig {
    fn default() -> Self {
        NotificationConfig {
            send_timeout: Duration::from_secs(10),
            webhook_hostname_blacklist: Vec::new(),
            allow_local_webhooks: false,
            mail: None,
        }
    }
}

/// Read the keys of this module from the top level.
pub(super) fn parse(ctx: &mut Ctx, r: &mut MapReader<'_>) -> (TriggerConfig, NotificationConfig) {
    let d = TriggerConfig::default();
    let threshold = "a whole number (0 = never disable)";
    let triggers = TriggerConfig {
        secret_key: r.secret(ctx, "DATABASE_SECRET_KEY"),
        failure_disable_threshold: r
            .uint32(
                ctx,
                "SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD",
                0..=u32::MAX,
                threshold,
            )
            .unwrap_or(d.failure_disable_threshold),
        internal_error_disable_threshold: r
            .uint32(
                ctx,
                "SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD",
                0..=u32::MAX,
                threshold,
            )
            .unwrap_or(d.internal_error_disable_threshold),
        registry_title: r
            .string(ctx, "REGISTRY_TITLE")
            .filter(|t| !t.trim().is_empty())
            .unwrap_or(d.registry_title),
    };
    let n = NotificationConfig::default();
    let send_timeout = r
        .seconds(ctx, "NOTIFICATION_SEND_TIMEOUT", 1)
        .map_or(n.send_timeout, Duration::from_secs);
    let webhook_hostname_blacklist = r
        .strings(ctx, "WEBHOOK_HOSTNAME_BLACKLIST")
        .unwrap_or_default();
    let allow_local_webhooks = r
        .bool(ctx, "NOTIFICATION_ALLOW_LOCAL_WEBHOOKS")
        .unwrap_or(false);
    let mailing = r.bool(ctx, "FEATURE_MAILING").unwrap_or(false);
    let server = r
        .string(ctx, "MAIL_SERVER")
        .filter(|s| !s.trim().is_empty());
    let port = r.port(ctx, "MAIL_PORT").unwrap_or(587);
    let use_tls = r.bool(ctx, "MAIL_USE_TLS").unwrap_or(true);
    let use_auth = r.bool(ctx, "MAIL_USE_AUTH").unwrap_or(false);
    let username = r.string(ctx, "MAIL_USERNAME");
    let password = r.secret(ctx, "MAIL_PASSWORD");
    let sender = r
        .string(ctx, "MAIL_DEFAULT_SENDER")
        .filter(|s| !s.trim().is_empty());
    let mail = match (mailing, server) {
        (false, _) => None,
        (true, None) => {
            ctx.problem(
                "MAIL_SERVER",
                super::ProblemKind::Conflict {
                    problem: "FEATURE_MAILING is true but MAIL_SERVER is not set: set the SMTP \
                              server's host name, or FEATURE_MAILING: false"
                        .to_owned(),
                },
            );
            None
        }
        (true, Some(server)) => {
            let auth = match (use_auth, username, password) {
                (false, _, _) => None,
                (true, Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
                (true, _, _) => {
                    ctx.problem(
                        "MAIL_USERNAME",
                        super::ProblemKind::Conflict {
                            problem: "MAIL_USE_AUTH is true: set MAIL_USERNAME and MAIL_PASSWORD"
                                .to_owned(),
                        },
                    );
                    None
                }
            };
            Some(MailConfig {
                server,
                port,
                use_tls,
                auth,
                sender,
            })
        }
    };
    let notifications = NotificationConfig {
        send_timeout,
        webhook_hostname_blacklist,
        allow_local_webhooks,
        mail,
    };
    (triggers, notifications)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_are_quays() {
        let c = Config::from_yaml_str("").unwrap();
        assert_eq!(c.triggers.failure_disable_threshold, 100);
        assert_eq!(c.triggers.internal_error_disable_threshold, 5);
        assert_eq!(c.triggers.registry_title, "Quarry");
        assert!(c.triggers.secret_key.is_none());
        assert_eq!(c.notifications.send_timeout.as_secs(), 10);
        assert!(!c.notifications.allow_local_webhooks);
        assert!(c.notifications.mail.is_none());
    }

    #[test]
    fn keys_are_read() {
        let c = Config::from_yaml_str(
            "DATABASE_SECRET_KEY: s3cret\n\
             SUCCESSIVE_TRIGGER_FAILURE_DISABLE_THRESHOLD: 3\n\
             SUCCESSIVE_TRIGGER_INTERNAL_ERROR_DISABLE_THRESHOLD: 0\n\
             NOTIFICATION_SEND_TIMEOUT: 3\n\
             WEBHOOK_HOSTNAME_BLACKLIST: [internal.example.com]\n\
             NOTIFICATION_ALLOW_LOCAL_WEBHOOKS: true\n\
             FEATURE_MAILING: true\n\
             MAIL_SERVER: smtp.example.com\n\
             MAIL_PORT: 2525\n\
             MAIL_USE_TLS: false\n\
             MAIL_DEFAULT_SENDER: builds@example.com\n",
        )
        .unwrap();
        assert_eq!(c.triggers.secret_key.unwrap().expose(), "s3cret");
        assert_eq!(c.triggers.failure_disable_threshold, 3);
        assert_eq!(c.triggers.internal_error_disable_threshold, 0);
        assert_eq!(c.notifications.send_timeout.as_secs(), 3);
        assert_eq!(
            c.notifications.webhook_hostname_blacklist,
            ["internal.example.com"]
        );
        assert!(c.notifications.allow_local_webhooks);
        let mail = c.notifications.mail.unwrap();
        assert_eq!(
            (mail.server.as_str(), mail.port),
            ("smtp.example.com", 2525)
        );
        assert!(!mail.use_tls);
        assert_eq!(mail.sender.as_deref(), Some("builds@example.com"));
    }

    #[test]
    fn mailing_without_a_server_or_credentials_is_an_error_naming_the_key() {
        let err = Config::from_yaml_str("FEATURE_MAILING: true\n").unwrap_err();
        assert!(err.to_string().contains("MAIL_SERVER"), "{err}");
        let err = Config::from_yaml_str(
            "FEATURE_MAILING: true\nMAIL_SERVER: smtp.example.com\nMAIL_USE_AUTH: true\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("MAIL_USERNAME"), "{err}");
    }
}
