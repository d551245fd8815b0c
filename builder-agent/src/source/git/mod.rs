//! Git sources through libgit2: fetch, check out the exact commit (detached), then submodules.
//!
//! libgit2 is blocking, so the work runs on its own thread; progress lines come back over a
//! channel and an async watchdog enforces `Limits::git_idle_timeout` (libgit2 callbacks only run
//! when data arrives, so a stalled server is noticed from the outside, then cancelled at the next
//! callback). Instead of `git clone` + `git checkout` (Quay) we init an empty repository, fetch
//! branches and tags from `origin`, and check out the commit; a commit no branch or tag reaches
//! is then asked for by id. Before checkout, the commit's tree is measured against the byte and
//! entry limits, so a small pack that expands hugely (a "git bomb") is refused unwritten.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use git2::build::CheckoutBuilder;
use git2::{
    AutotagOption, CertificateCheckStatus, Commit, Cred, CredentialType, ErrorClass, ErrorCode,
    FetchOptions, ObjectType, Oid, Remote, RemoteCallbacks, Repository, TreeWalkMode,
    TreeWalkResult,
};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::error::SourceError;
use super::{Limits, human_bytes, redact_url};

mod submodule;

/// How often a transfer in progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Branches and tags: enough for any commit a trigger reports. Other commits are fetched by id.
const REFSPECS: [&str; 2] = [
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];

/// Fetches `url` at `sha` into the empty directory `work`.
pub(super) async fn fetch(
    url: &str,
    sha: &str,
    private_key: Option<&str>,
    work: &Path,
    limits: &Limits,
    progress: &dyn Fn(&str),
) -> Result<(), SourceError> {
    let sha = parse_sha(sha)?;
    let shown = redact_url(url);
    progress(&format!("cloning {shown} at {sha}"));
    let watch = Arc::new(Watch::new());
    let (tx, mut rx) = unbounded_channel();
    let job = Job {
        url: url.to_owned(),
        sha,
        key: private_key.map(str::to_owned),
        work: work.to_owned(),
        max_bytes: limits.max_bytes,
        max_entries: limits.max_entries,
        tx,
        watch: Arc::clone(&watch),
    };
    // A plain thread, not `spawn_blocking`: a stalled server can leave libgit2 blocked in a
    // socket read that no callback interrupts, and a tokio runtime waits for its blocking tasks
    // when it shuts down. A detached thread cannot hold up the agent's exit.
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("quarry-git".into())
        .spawn(move || {
            // The receiver is gone only when the fetch was abandoned (idle timeout).
            let _ = done_tx.send(job.run());
        })
        .map_err(|source| SourceError::Io {
            op: "starting a git thread for",
            path: work.to_owned(),
            source,
        })?;
    let idle = limits.git_idle_timeout;
    let mut tick =
        tokio::time::interval((idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
    loop {
        tokio::select! {
            biased;
            Some(line) = rx.recv() => progress(&line),
            finished = &mut done => {
                while let Ok(line) = rx.try_recv() {
                    progress(&line);
                }
                return finished.map_err(|_| SourceError::GitWorkerLost)?;
            }
            _ = tick.tick() => {
                if watch.idle_for() > idle {
                    // The thread stops at libgit2's next callback, if one ever comes; the
                    // staging directory it writes to is deleted by our caller.
                    watch.cancel();
                    return Err(SourceError::GitIdle { url: shown, secs: idle.as_secs() });
                }
            }
        }
    }
}

/// A commit id: 7 to 40 hex digits, lower-cased. Branch names and `HEAD` are refused: the
/// build must be of exactly the commit the trigger reported.
fn parse_sha(sha: &str) -> Result<String, SourceError> {
    let sha = sha.trim();
    if (7..=40).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(SourceError::InvalidSha {
            sha: sha.to_owned(),
        })
    }
}

/// Liveness shared between the blocking task and the async watchdog.
#[derive(Debug)]
struct Watch {
    start: Instant,
    /// Milliseconds after `start` of the last sign of life.
    last: AtomicU64,
    cancelled: AtomicBool,
}

impl Watch {
    fn new() -> Self {
        Watch {
            start: Instant::now(),
            last: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// What a libgit2 progress callback returns: false aborts the operation.
    fn go_on(&self) -> bool {
        self.touch();
        !self.cancelled.load(Ordering::Relaxed)
    }
}

/// What is left of the limits while the superproject and its submodules are fetched.
#[derive(Debug)]
struct Budget {
    transfer_left: u64,
    checkout_left: u64,
    entries_left: u64,
}

/// Everything the blocking side needs; owns copies so it can outlive a cancelled fetch.
struct Job {
    url: String,
    sha: String,
    key: Option<String>,
    work: PathBuf,
    max_bytes: u64,
    max_entries: u64,
    tx: UnboundedSender<String>,
    watch: Arc<Watch>,
}

impl Job {
    fn run(self) -> Result<(), SourceError> {
        self.watch.touch();
        let repo = Repository::init(&self.work).map_err(|e| self.local("init", &self.work, e))?;
        let mut budget = Budget {
            transfer_left: self.max_bytes,
            checkout_left: self.max_bytes,
            entries_left: self.max_entries,
        };
        self.fetch_commit(&repo, &self.url, &self.sha, &mut budget)?;
        self.submodules(&repo, &self.url, &mut budget, 0)
    }

    fn say(&self, line: String) {
        // The receiver is gone only when the fetch was abandoned; nobody is listening then.
        let _ = self.tx.send(line);
    }

    /// Fetches `url` into `repo` and checks out `sha` detached.
    fn fetch_commit(
        &self,
        repo: &Repository,
        url: &str,
        sha: &str,
        budget: &mut Budget,
    ) -> Result<(), SourceError> {
        let mut remote = match repo.find_remote("origin") {
            Ok(r) => r,
            Err(_) => repo
                .remote("origin", url)
                .map_err(|e| classify(url, repo, "remote setup", e))?,
        };
        self.fetch_refs(&mut remote, repo, &REFSPECS, url, budget)?;
        let commit = match find_commit(repo, sha) {
            Some(c) => c,
            None => {
                if sha.len() == 40 {
                    // Servers refuse this unless they allow fetching unadvertised commits; a
                    // refusal just means the commit is not there for us.
                    match self.fetch_refs(&mut remote, repo, &[sha], url, budget) {
                        Ok(()) | Err(SourceError::GitUnreachable { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                find_commit(repo, sha).ok_or_else(|| SourceError::ShaNotFound {
                    url: redact_url(url),
                    sha: sha.to_owned(),
                })?
            }
        };
        self.check_tree(repo, &commit, url, budget)?;
        repo.set_head_detached(commit.id())
            .map_err(|e| self.local("checkout", &self.work, e))?;
        let mut checkout = CheckoutBuilder::new();
        checkout.force();
        let watch = &self.watch;
        checkout.progress(|_, _, _| watch.touch());
        repo.checkout_head(Some(&mut checkout))
            .map_err(|e| self.local("checkout", repo.workdir().unwrap_or(&self.work), e))?;
        let id = commit.id().to_string();
        self.say(format!(
            "checked out {} {}",
            &id[..12],
            String::from_utf8_lossy(commit.summary_bytes().unwrap_or_default())
        ));
        Ok(())
    }

    fn fetch_refs(
        &self,
        remote: &mut Remote<'_>,
        repo: &Repository,
        refspecs: &[&str],
        url: &str,
        budget: &mut Budget,
    ) -> Result<(), SourceError> {
        let over = Cell::new(false);
        let limit = budget.transfer_left;
        let watch = &self.watch;
        let key = self.key.as_deref();
        let mut callbacks = RemoteCallbacks::new();
        let mut attempts = 0;
        callbacks.credentials(move |_url, username, allowed| {
            watch.touch();
            attempts += 1;
            credentials(key, username, allowed, attempts)
        });
        // Host keys are accepted unchecked, as Quay's agent does (`StrictHostKeyChecking=no`):
        // the build machine has no known_hosts for arbitrary git servers, and the deploy key is
        // read-only and specific to one repository. https certificates are verified as usual.
        callbacks.certificate_check(move |cert, _host| {
            watch.touch();
            Ok(if cert.as_hostkey().is_some() {
                CertificateCheckStatus::CertificateOk
            } else {
                CertificateCheckStatus::CertificatePassthrough
            })
        });
        callbacks.sideband_progress(move |_| watch.go_on());
        let mut last_report = Instant::now();
        let over_ref = &over;
        callbacks.transfer_progress(move |p| {
            if p.received_bytes() as u64 > limit {
                over_ref.set(true);
                return false;
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                self.say(format!(
                    "receiving objects: {}/{}, {}",
                    p.received_objects(),
                    p.total_objects(),
                    human_bytes(p.received_bytes() as u64)
                ));
            }
            watch.go_on()
        });
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks);
        opts.download_tags(AutotagOption::None);
        let result = remote.fetch(refspecs, Some(&mut opts), None);
        let stats = remote.stats();
        let received = stats.received_bytes() as u64;
        budget.transfer_left = budget.transfer_left.saturating_sub(received);
        if over.get() {
            return Err(SourceError::TooLarge {
                what: format!("git repository {}", redact_url(url)),
                limit: self.max_bytes,
            });
        }
        result.map_err(|e| classify(url, repo, "fetch", e))?;
        if stats.received_objects() > 0 {
            self.say(format!(
                "fetched {} objects, {}",
                stats.received_objects(),
                human_bytes(received)
            ));
        }
        Ok(())
    }

    /// Measures the commit's tree against the limits before anything is written.
    fn check_tree(
        &self,
        repo: &Repository,
        commit: &Commit<'_>,
        url: &str,
        budget: &mut Budget,
    ) -> Result<(), SourceError> {
        let tree = commit
            .tree()
            .map_err(|e| self.local("reading the tree", &self.work, e))?;
        let odb = repo
            .odb()
            .map_err(|e| self.local("opening objects", &self.work, e))?;
        let mut outcome = Ok(());
        let walked = tree.walk(TreeWalkMode::PreOrder, |_, entry| {
            self.watch.touch();
            if budget.entries_left == 0 {
                outcome = Err(SourceError::TooManyEntries {
                    what: format!("git repository {}", redact_url(url)),
                    limit: self.max_entries,
                });
                return TreeWalkResult::Abort;
            }
            budget.entries_left -= 1;
            if entry.kind() == Some(ObjectType::Blob) {
                let size = match odb.read_header(entry.id()) {
                    Ok((size, _)) => size as u64,
                    Err(e) => {
                        outcome = Err(self.local("reading objects", &self.work, e));
                        return TreeWalkResult::Abort;
                    }
                };
                if size > budget.checkout_left {
                    outcome = Err(SourceError::TooLarge {
                        what: format!("the checkout of git repository {}", redact_url(url)),
                        limit: self.max_bytes,
                    });
                    return TreeWalkResult::Abort;
                }
                budget.checkout_left -= size;
            }
            TreeWalkResult::Ok
        });
        outcome?;
        walked.map_err(|e| self.local("reading the tree", &self.work, e))
    }

    fn local(&self, op: &'static str, path: &Path, source: git2::Error) -> SourceError {
        SourceError::GitLocal {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

fn find_commit<'r>(repo: &'r Repository, sha: &str) -> Option<Commit<'r>> {
    if sha.len() == 40 {
        Oid::from_str(sha)
            .ok()
            .and_then(|oid| repo.find_commit(oid).ok())
    } else {
        repo.find_commit_by_prefix(sha).ok()
    }
}

/// Answers libgit2's credential requests: the deploy key for ssh, nothing else (credentials
/// embedded in an https URL are applied by libgit2 itself). Gives up after 3 rounds, because
/// libgit2 asks again for as long as the server refuses.
fn credentials(
    key: Option<&str>,
    username: Option<&str>,
    allowed: CredentialType,
    attempt: u32,
) -> Result<Cred, git2::Error> {
    let refused = |msg| git2::Error::new(ErrorCode::Auth, ErrorClass::Callback, msg);
    if attempt > 3 {
        return Err(refused("the git server refused the credentials"));
    }
    let user = username.unwrap_or("git");
    if allowed.contains(CredentialType::USERNAME) {
        return Cred::username(user);
    }
    if allowed.intersects(CredentialType::SSH_KEY | CredentialType::SSH_MEMORY)
        && let Some(key) = key
    {
        return Cred::ssh_key_from_memory(user, None, key, None);
    }
    Err(refused("no credentials for this repository"))
}

/// Errors on the build machine's side (disk, memory, the object database) are ours to retry;
/// everything else in a fetch comes from the URL, the server or the repository's content.
fn classify(url: &str, repo: &Repository, op: &'static str, e: git2::Error) -> SourceError {
    if e.code() == ErrorCode::Auth {
        return SourceError::GitAuth {
            url: redact_url(url),
            source: e,
        };
    }
    match e.class() {
        ErrorClass::NoMemory
        | ErrorClass::Filesystem
        | ErrorClass::Odb
        | ErrorClass::Index
        | ErrorClass::Checkout
        | ErrorClass::Thread => SourceError::GitLocal {
            op,
            path: repo.path().to_owned(),
            source: e,
        },
        _ => SourceError::GitUnreachable {
            url: redact_url(url),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commit_ids_are_accepted() {
        assert_eq!(parse_sha(" ABCDEF1 ").unwrap(), "abcdef1");
        assert!(parse_sha(&"a".repeat(40)).is_ok());
        for bad in ["main", "HEAD", "abc", &"a".repeat(41), "abcdefg", ""] {
            assert!(
                matches!(parse_sha(bad), Err(SourceError::InvalidSha { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn credentials_offer_the_key_for_ssh_and_give_up() {
        let key = Some("not a real key");
        let code = |r: Result<Cred, git2::Error>| r.err().map(|e| e.code());
        assert!(credentials(key, Some("git"), CredentialType::USERNAME, 1).is_ok());
        assert!(credentials(key, Some("git"), CredentialType::SSH_MEMORY, 1).is_ok());
        let auth = Some(ErrorCode::Auth);
        assert_eq!(
            code(credentials(None, Some("git"), CredentialType::SSH_KEY, 1)),
            auth
        );
        assert_eq!(
            code(credentials(key, Some("git"), CredentialType::SSH_KEY, 4)),
            auth
        );
        let plain = CredentialType::USER_PASS_PLAINTEXT;
        assert_eq!(code(credentials(key, None, plain, 1)), auth);
    }

    #[test]
    fn the_watch_reports_idleness_and_cancellation() {
        let w = Watch::new();
        assert!(w.go_on());
        std::thread::sleep(Duration::from_millis(30));
        assert!(w.idle_for() >= Duration::from_millis(25));
        w.touch();
        assert!(w.idle_for() < Duration::from_millis(25));
        w.cancel();
        assert!(!w.go_on());
    }
}
