//! Repository notifications (reference 7): build events and registry pushes turned into
//! webhook, Slack, e-mail and in-app deliveries.
//!
//! Two loops run beside the manager, both over database rows only, so that a slow or failing
//! target never holds up a build:
//! - the dispatcher takes the `build_event` outbox (written by the transactions that change
//!   builds, see [`crate::events`]) and registry-core's `repo_event` pushes, and queues
//!   `notification_delivery` rows ([`dispatch`], [`push`]); it also counts trigger build
//!   outcomes, disabling triggers whose builds keep failing;
//! - the delivery worker performs due deliveries with retries and Quay's stop after three
//!   failures in a row ([`deliver`], [`methods`]).
//!
//! It must not send anything a user could not configure through the REST API's checks
//! ([`check`]); webhook targets are checked again at each delivery ([`target`]).

pub mod check;
pub mod deliver;
pub mod delivery_rows;
pub mod dispatch;
pub mod inbox;
pub mod methods;
pub mod model;
pub mod payload;
pub mod push;
pub mod target;
pub mod template;

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry_core::db::Db;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::NotificationConfig;
use crate::db::BuildDbError;
use crate::trigger::TriggerLimits;
use payload::Urls;

/// Settings of the notification loops.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// `<scheme>://<host>` of the web UI (homepage links).
    pub public_base_url: String,
    /// `SERVER_HOSTNAME` (`docker_url`, the default mail sender's domain).
    pub server_hostname: String,
    /// Trigger disable thresholds.
    pub limits: TriggerLimits,
    /// `NOTIFICATION_*`, `WEBHOOK_HOSTNAME_BLACKLIST`, mail.
    pub config: NotificationConfig,
    /// How often both loops look for work (1 s).
    pub poll: Duration,
    /// The first retry's wait (Quay: 30 s); doubled for each further one.
    pub retry_base: Duration,
}

impl NotifySettings {
    /// The payloads' link settings.
    pub fn urls(&self) -> Urls {
        Urls {
            public_base_url: self.public_base_url.clone(),
            server_hostname: self.server_hostname.clone(),
        }
    }

    /// `quarry@<host of SERVER_HOSTNAME>`.
    pub fn default_sender(&self) -> String {
        let host = self
            .server_hostname
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.server_hostname.as_str(), |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // A bare name or an address is not a mail domain lettre accepts everywhere; localhost
        // installs get a syntactically valid sender anyway.
        if host.contains('.') && !host.contains(':') {
            format!("quarry@{host}")
        } else {
            "quarry@localhost.localdomain".to_owned()
        }
    }
}

/// What the loops need.
#[derive(Clone, Debug)]
pub struct NotifyParts {
    /// `builds.db`: events, notifications, deliveries, in-app rows, triggers.
    pub builds: Db,
    /// registry-core's database: `repo_event`, users and teams.
    pub registry: Db,
    /// Settings.
    pub settings: NotifySettings,
}

/// Why the notification loops cannot start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("failed to build the HTTP client for notifications")]
    Client(#[source] reqwest::Error),
    /// A database failed.
    #[error("notification database work failed")]
    Db(#[from] BuildDbError),
}

/// Dispatch every pending build event, then one round of registry pushes (which runs whatever
/// the outbox step returned). Returns the number of events handled.
///
/// An event whose handling fails for good (its build row does not parse, counting its trigger's
/// outcome fails, ...) is a poison event: logged at error with its id and the cause, and deleted
/// in a transaction of its own, so the events after it still go out. A transient failure (the
/// database busy) ends the round; the event is tried again at the next one.
pub async fn dispatch_pending(parts: &NotifyParts) -> Result<usize, BuildDbError> {
    let outbox = dispatch_outbox(parts).await;
    let urls = parts.settings.urls();
    let pushes = push::poll(&parts.builds, &parts.registry, &urls).await;
    match (outbox, pushes) {
        (Ok(n), Ok(_)) => Ok(n),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(e), Err(p)) => {
            tracing::error!(error = %registry_core::error::error_chain(&p),
                "reading registry pushes for notifications failed; retrying");
            Err(e)
        }
    }
}

async fn dispatch_outbox(parts: &NotifyParts) -> Result<usize, BuildDbError> {
    let urls = parts.settings.urls();
    let limits = parts.settings.limits;
    let mut handled = 0;
    while let Some(event_id) = parts.builds.read(dispatch::next_event).await? {
        let u = urls.clone();
        let result = parts
            .builds
            .write(move |tx| dispatch::dispatch_event(tx, event_id, &u, limits))
            .await;
        handled += 1;
        let done = match result {
            Ok(Some(done)) => done,
            Ok(None) => continue,
            Err(e) if dispatch::is_transient(&e) => return Err(e),
            Err(e) => {
                tracing::error!(event_id, error = %registry_core::error::error_chain(&e),
                    "dropped a build event whose notifications cannot be made");
                parts
                    .builds
                    .write(move |tx| dispatch::drop_event(tx, event_id))
                    .await?;
                continue;
            }
        };
        tracing::debug!(build_id = %done.build_uuid, event = %done.event,
            deliveries = done.deliveries, "build event dispatched");
        if let Some((trigger, reason)) = done.disabled {
            tracing::warn!(trigger_id = %trigger, build_id = %done.build_uuid,
                reason = reason.as_str(), "build trigger disabled after successive failed builds");
        }
    }
    Ok(handled)
}

/// How often the dispatcher prunes the in-app lists.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// When the in-app lists were last pruned: the dispatcher prunes at its first round, then at
/// most once per [`PRUNE_EVERY`].
#[derive(Debug, Default)]
pub struct Pruner {
    last: Option<Instant>,
}

impl Pruner {
    /// Whether a prune is due at `now` (and if so, remember `now` as the last one).
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= PRUNE_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Apply the in-app retention ([`inbox::prune`]) once. Returns the rows deleted.
pub async fn prune_inbox(parts: &NotifyParts) -> Result<usize, BuildDbError> {
    parts
        .builds
        .write(|tx| {
            inbox::prune(
                tx,
                registry_core::db::now_ms(),
                inbox::DISMISSED_KEEP_MS,
                inbox::MAX_PER_USER,
            )
        })
        .await
}

/// The methods' context for `parts`.
pub fn context(parts: &NotifyParts) -> Result<methods::Ctx, NotifyError> {
    Ok(methods::Ctx {
        client: methods::http::client(&parts.settings.config).map_err(NotifyError::Client)?,
        config: parts.settings.config.clone(),
        default_sender: parts.settings.default_sender(),
        registry: parts.registry.clone(),
        builds: parts.builds.clone(),
    })
}

async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let stopped = tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(d) => false,
    };
    stopped || *stop.borrow()
}

async fn dispatch_loop(parts: Arc<NotifyParts>, mut stop: watch::Receiver<bool>) {
    let mut pruner = Pruner::default();
    loop {
        if let Err(e) = dispatch_pending(&parts).await {
            tracing::error!(error = %registry_core::error::error_chain(&e),
                "dispatching notifications failed; retrying");
        }
        if pruner.due(Instant::now()) {
            match prune_inbox(&parts).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned in-app notifications"),
                Err(e) => tracing::error!(error = %registry_core::error::error_chain(&e),
                    "pruning in-app notifications failed; trying again in an hour"),
            }
        }
        if wait(&mut stop, parts.settings.poll).await {
            return;
        }
    }
}

async fn delivery_loop(
    parts: Arc<NotifyParts>,
    ctx: methods::Ctx,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // A shutdown cuts a round short: rows change only after an attempt ends, so the
        // interrupted deliveries are made again at the next start.
        let busy = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = deliver::round(&ctx, parts.settings.retry_base) => match r {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::error!(error = %registry_core::error::error_chain(&e),
                        "delivering notifications failed; retrying");
                    false
                }
            },
        };
        if !busy && wait(&mut stop, parts.settings.poll).await {
            return;
        }
    }
}

/// Start the dispatcher (with the push poller) and the delivery worker; both end when `stop`
/// becomes true. They start independently: if the delivery context cannot be made (the HTTP
/// client's TLS set-up), only delivery stops, with an error log; events are still dispatched,
/// triggers still counted, and deliveries wait in the database.
pub fn spawn(parts: NotifyParts, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let ctx = context(&parts);
    spawn_with(parts, ctx, stop)
}

/// [`spawn`] with a given delivery context (or the error that prevented it).
pub fn spawn_with(
    parts: NotifyParts,
    ctx: Result<methods::Ctx, NotifyError>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let parts = Arc::new(parts);
        let dispatcher = tokio::spawn(dispatch_loop(parts.clone(), stop.clone()));
        let worker = tokio::spawn(async move {
            match ctx {
                Ok(ctx) => delivery_loop(parts, ctx, stop).await,
                Err(e) => tracing::error!(error = %registry_core::error::error_chain(&e),
                    "notifications are queued but not delivered until the server restarts \
                     with a working HTTP client"),
            }
        });
        let (a, b) = tokio::join!(dispatcher, worker);
        for r in [a, b] {
            if let Err(e) = r {
                tracing::error!(error = %e, "a notification task panicked");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_is_pruned_at_the_first_round_then_hourly() {
        let mut p = Pruner::default();
        let t0 = Instant::now();
        assert!(p.due(t0));
        assert!(!p.due(t0 + Duration::from_secs(60)));
        assert!(!p.due(t0 + PRUNE_EVERY - Duration::from_secs(1)));
        assert!(p.due(t0 + PRUNE_EVERY));
        assert!(!p.due(t0 + PRUNE_EVERY + Duration::from_secs(1)));
    }

    #[test]
    fn default_sender_uses_the_host_without_port() {
        let s = |host: &str| NotifySettings {
            public_base_url: String::new(),
            server_hostname: host.into(),
            limits: TriggerLimits {
                failures: 0,
                internal_errors: 0,
            },
            config: NotificationConfig::default(),
            poll: Duration::from_secs(1),
            retry_base: Duration::from_secs(30),
        };
        assert_eq!(
            s("quarry.example.com:8443").default_sender(),
            "quarry@quarry.example.com"
        );
        assert_eq!(
            s("quarry.example.com").default_sender(),
            "quarry@quarry.example.com"
        );
        assert_eq!(
            s("localhost:5000").default_sender(),
            "quarry@localhost.localdomain"
        );
    }
}
