//! An orchestrator for tests: the in-process one, plus an outage switch and injected events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use buildman::orchestrator::{KeyEvent, MemoryOrchestrator, Orchestrator, OrchestratorError};
use tokio::sync::broadcast;

/// [`MemoryOrchestrator`] whose key operations fail while [`ChaosOrchestrator::set_down`] is on,
/// and whose event stream also carries events a test injects (a late or duplicated expiry).
#[derive(Debug)]
pub struct ChaosOrchestrator {
    inner: Arc<MemoryOrchestrator>,
    down: AtomicBool,
    events: broadcast::Sender<KeyEvent>,
}

impl ChaosOrchestrator {
    /// Must be called inside a tokio runtime (it forwards the inner events in a task).
    pub fn new() -> Arc<ChaosOrchestrator> {
        let inner = Arc::new(MemoryOrchestrator::new());
        let (events, _) = broadcast::channel(4096);
        let mut from = inner.subscribe();
        let to = events.clone();
        tokio::spawn(async move {
            loop {
                match from.recv().await {
                    Ok(e) => {
                        // No subscriber yet is fine.
                        let _ = to.send(e);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Arc::new(ChaosOrchestrator {
            inner,
            down: AtomicBool::new(false),
            events,
        })
    }

    /// While `down`, every key operation fails as if the backend were unreachable.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Deliver `event` to subscribers as if the backend had reported it.
    pub fn inject(&self, event: KeyEvent) {
        self.events.send(event).expect("the manager subscribes");
    }

    fn check(&self) -> Result<(), OrchestratorError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(OrchestratorError::ConnectTimeout {
                addr: "chaos:0".into(),
                timeout: Duration::ZERO,
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Orchestrator for ChaosOrchestrator {
    async fn set_key(
        &self,
        key: &str,
        value: &str,
        overwrite: bool,
        expiration: Option<Duration>,
    ) -> Result<(), OrchestratorError> {
        self.check()?;
        self.inner.set_key(key, value, overwrite, expiration).await
    }
    async fn get_key(&self, key: &str) -> Result<Option<String>, OrchestratorError> {
        self.check()?;
        self.inner.get_key(key).await
    }
    async fn delete_key(&self, key: &str) -> Result<Option<String>, OrchestratorError> {
        self.check()?;
        self.inner.delete_key(key).await
    }
    async fn get_prefixed_keys(
        &self,
        prefix: &str,
    ) -> Result<BTreeMap<String, String>, OrchestratorError> {
        self.check()?;
        self.inner.get_prefixed_keys(prefix).await
    }
    async fn lock(&self, key: &str, ttl: Duration) -> Result<bool, OrchestratorError> {
        self.check()?;
        self.inner.lock(key, ttl).await
    }
    fn subscribe(&self) -> broadcast::Receiver<KeyEvent> {
        self.events.subscribe()
    }
    async fn sweep(&self) -> Result<usize, OrchestratorError> {
        self.check()?;
        self.inner.sweep().await
    }
    fn backend(&self) -> &'static str {
        "memory"
    }
}
