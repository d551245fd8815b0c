//! A private OpenSSH sshd on 127.0.0.1 serving git repositories over SSH to the keys a test puts
//! in its `authorized_keys` (and no others: no passwords, no user configuration), plus the key
//! and git helpers the trigger tests use around it.
//!
//! The daemon runs in the foreground (`-D -e`) in its own process group, its log (stderr) goes to
//! a file the test reads to see which key was accepted, and the group is killed on drop.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::quarry::free_port;

const SSHD: &str = "/usr/sbin/sshd";
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// A running sshd; see the module docs.
pub struct Sshd {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: PathBuf,
}

/// Run `cmd`; panic with its stderr when it fails; return stdout, trimmed.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `ssh-keygen -t ed25519` into `dir/name` (no passphrase); returns the private key's path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "quarry-test", "-f"])
        .arg(&path));
    path
}

/// The SHA256 fingerprint (`SHA256:...`) of the public key line `public` (ssh-keygen -l).
pub fn fingerprint(public: &str, scratch: &Path) -> String {
    let file = scratch.join(format!("fp-{}.pub", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("{}\n", public.trim())).unwrap();
    let out = run(Command::new("ssh-keygen").arg("-l").arg("-f").arg(&file));
    let _ = std::fs::remove_file(&file);
    out.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("ssh-keygen -l printed {out:?}"))
        .to_owned()
}

/// The user name sshd will log this process's user in as.
pub fn current_user() -> String {
    run(Command::new("id").arg("-un"))
}

impl Sshd {
    /// Start an sshd whose state (host key, config, authorized_keys, log) lives in `dir`,
    /// accepting only the public key lines in `authorized`.
    pub fn start(dir: &Path, authorized: &[&str]) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "this test needs {SSHD} (apt-get install openssh-server; scripts/install-deps.sh does)"
        );
        std::fs::create_dir_all(dir).unwrap();
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_key");
        if !host_key.exists() {
            keygen(dir, "host_key");
        }
        let port = free_port();
        let d = dir.display();
        let config = dir.join("sshd_config");
        // StrictModes no: the files live in a temp dir whose modes sshd would otherwise reject.
        // LogLevel VERBOSE: the log names the fingerprint of every accepted key.
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nLogLevel VERBOSE\n"
            ),
        )
        .unwrap();
        write_authorized(dir, authorized);
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {SSHD}: {e}"));
        let mut sshd = Sshd {
            child,
            port,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + LISTEN_DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited with {status}: {}", sshd.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {port} within {LISTEN_DEADLINE:?}: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// Replace the accepted keys (sshd reads the file at each login).
    pub fn set_authorized(&self, authorized: &[&str]) {
        write_authorized(&self.dir, authorized);
    }

    /// Everything sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// How many logins the key with `fingerprint` (`SHA256:...`) made.
    pub fn accepted(&self, fingerprint: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("Accepted publickey") && l.contains(fingerprint))
            .count()
    }

    /// `ssh://<user>@127.0.0.1:<port><path>`.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            current_user(),
            self.port,
            path.display()
        )
    }

    /// `git <args>` with ssh using only the private key at `key` (no agent, no user config,
    /// no host key check); returns the command's output, success or not.
    pub fn git_with_key(&self, key: &Path, args: &[&str]) -> std::process::Output {
        let ssh = format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none \
             -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            key.display()
        );
        Command::new("git")
            .args(args)
            .env("GIT_SSH_COMMAND", ssh)
            .env_remove("SSH_AUTH_SOCK")
            .output()
            .expect("running git")
    }
}

fn write_authorized(dir: &Path, authorized: &[&str]) {
    let lines: String = authorized
        .iter()
        .map(|k| format!("{}\n", k.trim()))
        .collect();
    std::fs::write(dir.join("authorized_keys"), lines).unwrap();
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A bare repository `<parent>/<name>.git` and a work tree `<parent>/<name>-work` whose `origin`
/// is that bare repository (pushed over the filesystem), on branch `main`.
pub struct GitRepo {
    /// The bare repository sshd serves.
    pub bare: PathBuf,
    /// The work tree the test commits in.
    pub work: PathBuf,
}

impl GitRepo {
    /// Create both (empty).
    pub fn create(parent: &Path, name: &str) -> GitRepo {
        let bare = parent.join(format!("{name}.git"));
        let work = parent.join(format!("{name}-work"));
        run(Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare));
        run(Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .arg(&work));
        let repo = GitRepo { bare, work };
        repo.git(&["remote", "add", "origin", &repo.bare.display().to_string()]);
        repo
    }

    /// `git -C <work> <args>` as a fixed test identity; returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        run(Command::new("git")
            .arg("-C")
            .arg(&self.work)
            .args(args)
            .env("GIT_AUTHOR_NAME", "Quarry Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Quarry Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com"))
    }

    /// Write `files` (relative path, content), commit them with `message` and push `main` to the
    /// bare repository; returns the commit's SHA.
    pub fn commit_and_push(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let p = self.work.join(path);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(p, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["push", "-q", "origin", "main"]);
        self.git(&["rev-parse", "HEAD"])
    }
}
