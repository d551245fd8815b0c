//! The notification methods: `webhook`, `slack`, `email` and `quay_notification` (in-app).
//! Each turns one delivery (the event name and its data) into a request, a mail or rows.

pub mod email;
pub mod http;
pub mod inapp;

use std::str::FromStr;

use registry_core::db::Db;
use serde_json::Value;

use super::delivery_rows::Delivery;
use super::target::TargetError;
use super::template::TemplateError;
use crate::config::NotificationConfig;
use crate::db::BuildDbError;

/// A notification method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// POST the event data (or the rendered `template`) to `url`.
    Webhook,
    /// POST a Slack message to `url` (an incoming-webhook URL).
    Slack,
    /// Mail a summary to `email`.
    Email,
    /// In-app notifications for `target`'s users.
    QuayNotification,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 4] = [
        Method::Webhook,
        Method::Slack,
        Method::Email,
        Method::QuayNotification,
    ];

    /// Quay's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Webhook => "webhook",
            Method::Slack => "slack",
            Method::Email => "email",
            Method::QuayNotification => "quay_notification",
        }
    }
}

/// A method name Quarry does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown notification method {0:?}: expected webhook, slack, email or quay_notification")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMethod(s.to_owned()))
    }
}

/// What the methods need.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// HTTP client for webhooks and Slack (timeout, no redirects, guarded resolver).
    pub client: reqwest::Client,
    /// `NOTIFICATION_*`, `WEBHOOK_HOSTNAME_BLACKLIST`, mail.
    pub config: NotificationConfig,
    /// The sender when `MAIL_DEFAULT_SENDER` is unset: `quarry@<SERVER_HOSTNAME's host>`.
    pub default_sender: String,
    /// registry-core's database (users and teams of in-app targets).
    pub registry: Db,
    /// buildman's database (in-app rows).
    pub builds: Db,
}

/// Why a delivery failed. Messages name the host, never the whole URL (Slack URLs hold a
/// secret).
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The stored config lacks a key (edited by hand, or an older format).
    #[error("notification config has no {key}")]
    MissingKey {
        /// The key.
        key: &'static str,
    },
    /// The target is no longer allowed.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The webhook template does not render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The request failed (connection, timeout).
    #[error("POST to {host} failed")]
    Send {
        /// The target host.
        host: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The target answered with a non-2xx status.
    #[error("{host} answered {status}")]
    Status {
        /// The target host.
        host: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// Mail is not configured (any more).
    #[error("e-mail is not configured: set FEATURE_MAILING: true and MAIL_SERVER")]
    MailNotConfigured,
    /// A mail address does not parse.
    #[error("e-mail address {address:?} is invalid")]
    Address {
        /// The address.
        address: String,
        /// The cause.
        #[source]
        source: lettre::address::AddressError,
    },
    /// The mail could not be built.
    #[error("failed to build the notification e-mail")]
    Message(#[source] lettre::error::Error),
    /// The SMTP exchange failed.
    #[error("sending mail through {server} failed")]
    Smtp {
        /// `MAIL_SERVER`.
        server: String,
        /// The cause.
        #[source]
        source: lettre::transport::smtp::Error,
    },
    /// The in-app target is invalid or no longer exists.
    #[error(transparent)]
    InApp(#[from] inapp::InAppTargetError),
    /// A database failed.
    #[error("notification database work failed")]
    Db(#[from] BuildDbError),
}

impl From<registry_core::db::DbError> for MethodError {
    fn from(e: registry_core::db::DbError) -> Self {
        MethodError::Db(BuildDbError::Db(e))
    }
}

/// What a successful delivery left to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    /// Sent: the caller records the success.
    Sent,
    /// Sent and recorded in the same transaction as its effect (in-app rows).
    Recorded,
}

/// Perform one delivery.
pub async fn perform(ctx: &Ctx, delivery: &Delivery) -> Result<Done, MethodError> {
    let (notification, event, data) = (&delivery.notification, &delivery.event, &delivery.payload);
    let sent = |r: Result<(), MethodError>| r.map(|()| Done::Sent);
    match notification.method.parse::<Method>() {
        Ok(Method::Webhook) => sent(http::webhook(ctx, &notification.config, data).await),
        Ok(Method::Slack) => sent(http::slack(ctx, &notification.config, event, data).await),
        Ok(Method::Email) => sent(email::send(ctx, &notification.config, event, data).await),
        Ok(Method::QuayNotification) => {
            inapp::deliver(ctx, delivery).await.map(|()| Done::Recorded)
        }
        // Stored methods were checked at creation; a hand-edited row is reported, not retried
        // forever (it counts as a failure and stops at the third).
        Err(_) => Err(MethodError::MissingKey { key: "method" }),
    }
}

/// `config[key]` as a non-empty string.
pub(crate) fn config_str<'a>(config: &'a Value, key: &'static str) -> Result<&'a str, MethodError> {
    config
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(MethodError::MissingKey { key })
}
