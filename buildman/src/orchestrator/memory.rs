//! The in-process orchestrator: Redis's semantics over a mutex'd map, for a single manager.
//!
//! The map mirrors the Redis layout (keys, `/expiring` and `/expired` twins, each with an optional
//! deadline), so both backends behave alike down to the twins `get_key` can read. A timer task
//! sleeps until the earliest `/expiring` deadline (or until a new key wakes it) and then claims
//! the keys whose twin has run out, exactly as [`Orchestrator::sweep`] does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{
    EVENT_CAPACITY, EXPIRED_SUFFIX, EXPIRING_SUFFIX, EventKind, KeyEvent, LOCK_PREFIX,
    Orchestrator, OrchestratorError, SAFETY_NET, check_writable_key, is_twin,
};

/// The in-process [`Orchestrator`] (`backend() == "memory"`).
pub struct MemoryOrchestrator {
    inner: Arc<Inner>,
    timer: Option<JoinHandle<()>>,
}

struct Inner {
    entries: Mutex<HashMap<String, Entry>>,
    events: broadcast::Sender<KeyEvent>,
    wake: Notify,
}

struct Entry {
    value: String,
    deadline: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|d| d > now)
    }
}

impl MemoryOrchestrator {
    /// An empty store whose timer task reports expiries at their deadline.
    ///
    /// # Panics
    /// Outside a Tokio runtime (it spawns the timer task).
    pub fn new() -> Self {
        let inner = Arc::new(Inner::new());
        let timer = tokio::spawn(run_timer(Arc::clone(&inner)));
        Self {
            inner,
            timer: Some(timer),
        }
    }

    /// An empty store with no timer: expiries are only found by [`Orchestrator::sweep`], as with
    /// a Redis whose keyspace events are lost. Useful to test sweeping.
    pub fn sweep_only() -> Self {
        Self {
            inner: Arc::new(Inner::new()),
            timer: None,
        }
    }
}

impl Default for MemoryOrchestrator {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MemoryOrchestrator {
    fn drop(&mut self) {
        if let Some(timer) = &self.timer {
            timer.abort();
        }
    }
}

impl std::fmt::Debug for MemoryOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryOrchestrator")
            .field("keys", &self.inner.lock().len())
            .field("timer", &self.timer.is_some())
            .finish()
    }
}

impl Inner {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_CAPACITY).0,
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters
        // more than stopping every build, so keep serving from the poisoned map.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, kind: EventKind, key: &str, value: String) {
        // No receivers is fine: nobody is listening yet.
        let _ = self.events.send(KeyEvent {
            kind,
            key: key.to_owned(),
            value,
        });
    }

    /// Claim every key with a deadline whose `/expiring` twin is gone, drop dead entries, and
    /// return how many keys were claimed.
    fn expire_due(&self) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        let due: Vec<String> = map
            .iter()
            .filter(|(key, entry)| {
                !is_twin(key)
                    && !key.starts_with(LOCK_PREFIX)
                    && entry.deadline.is_some()
                    && entry.live(now)
                    && !map
                        .get(&format!("{key}{EXPIRING_SUFFIX}"))
                        .is_some_and(|twin| twin.live(now))
            })
            .map(|(key, _)| key.clone())
            .collect();
        map.retain(|_, entry| entry.live(now));
        for key in &due {
            if let Some(entry) = map.remove(key) {
                map.insert(
                    format!("{key}{EXPIRED_SUFFIX}"),
                    Entry {
                        value: entry.value.clone(),
                        deadline: Some(now + SAFETY_NET),
                    },
                );
                self.emit(EventKind::Expire, key, entry.value);
            }
        }
        due.len()
    }

    /// The earliest live `/expiring` deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.lock()
            .iter()
            .filter(|(key, _)| key.ends_with(EXPIRING_SUFFIX))
            .filter_map(|(_, entry)| entry.deadline)
            .min()
    }
}

/// Sleep until the earliest twin deadline (or a wake-up from `set_key`), then claim what is due.
async fn run_timer(inner: Arc<Inner>) {
    loop {
        inner.expire_due();
        match inner.next_deadline() {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = inner.wake.notified() => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
}

#[async_trait::async_trait]
impl Orchestrator for MemoryOrchestrator {
    async fn set_key(
        &self,
        key: &str,
        value: &str,
        overwrite: bool,
        expiration: Option<Duration>,
    ) -> Result<(), OrchestratorError> {
        check_writable_key(key)?;
        let now = Instant::now();
        let expiring = format!("{key}{EXPIRING_SUFFIX}");
        {
            let mut map = self.inner.lock();
            let existed = map.get(key).is_some_and(|e| e.live(now));
            if existed && !overwrite {
                return Err(OrchestratorError::KeyExists {
                    key: key.to_owned(),
                });
            }
            let deadline = expiration.map(|exp| now + exp + SAFETY_NET);
            map.insert(
                key.to_owned(),
                Entry {
                    value: value.to_owned(),
                    deadline,
                },
            );
            match expiration {
                Some(exp) => {
                    let twin = Entry {
                        value: String::new(),
                        deadline: Some(now + exp),
                    };
                    map.insert(expiring, twin);
                }
                None => {
                    map.remove(&expiring);
                }
            }
            map.remove(&format!("{key}{EXPIRED_SUFFIX}"));
            let kind = if existed {
                EventKind::Set
            } else {
                EventKind::Create
            };
            // Emitted under the lock so that events are seen in the order of the changes.
            self.inner.emit(kind, key, value.to_owned());
        }
        if expiration.is_some() {
            self.inner.wake.notify_one();
        }
        Ok(())
    }

    async fn get_key(&self, key: &str) -> Result<Option<String>, OrchestratorError> {
        let now = Instant::now();
        let map = self.inner.lock();
        Ok(map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone()))
    }

    async fn delete_key(&self, key: &str) -> Result<Option<String>, OrchestratorError> {
        check_writable_key(key)?;
        let now = Instant::now();
        let mut map = self.inner.lock();
        map.remove(&format!("{key}{EXPIRING_SUFFIX}"));
        map.remove(&format!("{key}{EXPIRED_SUFFIX}"));
        let old = map.remove(key).filter(|e| e.live(now)).map(|e| e.value);
        if let Some(value) = &old {
            self.inner.emit(EventKind::Delete, key, value.clone());
        }
        Ok(old)
    }

    async fn get_prefixed_keys(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, String>, OrchestratorError> {
        let now = Instant::now();
        let map = self.inner.lock();
        Ok(map
            .iter()
            .filter(|(key, entry)| key.starts_with(prefix) && !is_twin(key) && entry.live(now))
            .map(|(key, entry)| (key.clone(), entry.value.clone()))
            .collect())
    }

    async fn lock(&self, key: &str, ttl: Duration) -> Result<bool, OrchestratorError> {
        let full = format!("{LOCK_PREFIX}{key}");
        check_writable_key(&full)?;
        let now = Instant::now();
        let mut map = self.inner.lock();
        if map.get(&full).is_some_and(|e| e.live(now)) {
            return Ok(false);
        }
        let entry = Entry {
            value: String::new(),
            deadline: Some(now + ttl),
        };
        map.insert(full, entry);
        Ok(true)
    }

    fn subscribe(&self) -> broadcast::Receiver<KeyEvent> {
        self.inner.events.subscribe()
    }

    async fn sweep(&self) -> Result<usize, OrchestratorError> {
        Ok(self.inner.expire_due())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Paused time: the timer fires exactly at the deadline, without waiting in real time.
    #[tokio::test(start_paused = true)]
    async fn timer_reports_expiry_at_the_deadline_and_not_before() {
        let orch = MemoryOrchestrator::new();
        let mut events = orch.subscribe();
        orch.set_key("building/a", "job", false, Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(events.recv().await.unwrap().kind, EventKind::Create);

        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(events.try_recv().is_err(), "expired early");
        assert_eq!(
            orch.get_key("building/a").await.unwrap().as_deref(),
            Some("job")
        );

        let event = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.kind, EventKind::Expire);
        assert_eq!(
            (event.key.as_str(), event.value.as_str()),
            ("building/a", "job")
        );
        assert_eq!(orch.get_key("building/a").await.unwrap(), None);
        let copy = orch.get_key("building/a/expired").await.unwrap();
        assert_eq!(copy.as_deref(), Some("job"));
    }

    #[tokio::test(start_paused = true)]
    async fn refreshing_the_expiration_postpones_the_expiry() {
        let orch = MemoryOrchestrator::new();
        let mut events = orch.subscribe();
        let ttl = Some(Duration::from_secs(10));
        orch.set_key("k", "1", false, ttl).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        orch.set_key("k", "2", true, ttl).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let kinds: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, [EventKind::Create, EventKind::Set]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(events.try_recv().unwrap().kind, EventKind::Expire);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_set_without_expiration_no_longer_expires() {
        let orch = MemoryOrchestrator::new();
        orch.set_key("k", "1", false, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        orch.set_key("k", "2", true, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(orch.sweep().await.unwrap(), 0);
        assert_eq!(orch.get_key("k").await.unwrap().as_deref(), Some("2"));
    }

    #[tokio::test(start_paused = true)]
    async fn locks_are_not_swept_as_expiries() {
        let orch = MemoryOrchestrator::sweep_only();
        assert!(orch.lock("b1", Duration::from_secs(5)).await.unwrap());
        assert_eq!(orch.sweep().await.unwrap(), 0);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(orch.sweep().await.unwrap(), 0);
        assert!(orch.lock("b1", Duration::from_secs(5)).await.unwrap());
    }
}
