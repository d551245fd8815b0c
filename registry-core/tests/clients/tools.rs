//! Running skopeo, podman and buildah in isolation for `clients.rs` (see its module docs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{self, Registry};

const TOOL_DEADLINE: Duration = Duration::from_secs(180);

/// Run by `sh` inside the new mount namespace: $1 is the cache dir, the rest the command.
/// A constant script; every variable part is a positional argument, never spliced into it.
const NAMESPACE_SCRIPT: &str = r#"set -eu
cache="$1"; shift
mount -t tmpfs tmpfs /var/lib
mkdir /var/lib/containers
mount --bind "$cache" /var/lib/containers
exec "$@""#;

/// Panic (never skip) when a tool is missing.
pub fn require(tools: &[&str]) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools.iter().chain(["unshare", "sh"].iter()) {
        let found = std::env::split_paths(&path).any(|d| d.join(tool).is_file());
        assert!(
            found,
            "{tool} is not on PATH: these tests need skopeo, podman and buildah (Debian packages \
             skopeo, podman, buildah) and util-linux's unshare"
        );
    }
}

/// One test's client state: home, XDG dirs, auth file, storage, blob-info cache.
pub struct Tools {
    pub dir: PathBuf,
    /// Podman refuses a runroot path over 50 characters: this one is short (`/tmp/rcXXXXXX`).
    pub runroot: tempfile::TempDir,
    pub registry: String,
}

impl Tools {
    pub fn new(reg: &Registry) -> Tools {
        let dir = reg.scratch("tools");
        for sub in [
            "home",
            "run",
            "config",
            "data",
            "cache",
            "tmp",
            "var-lib-containers",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let runroot = tempfile::Builder::new().prefix("rc").tempdir().unwrap();
        std::fs::write(dir.join("registries.conf"), "").unwrap();
        std::fs::write(dir.join("auth.json"), "{}").unwrap();
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("storage/root").display(),
                runroot.path().display()
            ),
        )
        .unwrap();
        Tools {
            dir,
            runroot,
            registry: reg.host(),
        }
    }

    pub fn p(&self, sub: &str) -> String {
        self.dir.join(sub).display().to_string()
    }

    /// `--root/--runroot/--storage-driver` for podman and buildah.
    pub fn storage_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.p("storage/root"),
            "--runroot".into(),
            self.runroot.path().display().to_string(),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// Run `program args` isolated; returns the output whatever the exit status.
    pub fn run(&self, program: &str, args: &[String], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            NAMESPACE_SCRIPT,
        ])
        .arg("sh")
        .arg(self.p("var-lib-containers"))
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", self.p("home"))
        .env("XDG_RUNTIME_DIR", self.p("run"))
        .env("XDG_CONFIG_HOME", self.p("config"))
        .env("XDG_DATA_HOME", self.p("data"))
        .env("XDG_CACHE_HOME", self.p("cache"))
        .env("TMPDIR", self.p("tmp"))
        .env("REGISTRY_AUTH_FILE", self.p("auth.json"))
        .env("CONTAINERS_REGISTRIES_CONF", self.p("registries.conf"))
        .env("CONTAINERS_STORAGE_CONF", self.p("storage.conf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = match stdin {
            Some(input) => {
                let file = self.dir.join("tmp/stdin");
                std::fs::write(&file, input).unwrap();
                cmd.stdin(std::fs::File::open(&file).unwrap());
                common::run_with_deadline(cmd, TOOL_DEADLINE)
            }
            None => {
                cmd.stdin(Stdio::null());
                common::run_with_deadline(cmd, TOOL_DEADLINE)
            }
        };
        out.unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    /// [`Tools::run`] that must succeed; returns stdout.
    #[track_caller]
    pub fn ok(&self, program: &str, args: &[String]) -> String {
        let out = self.run(program, args, None);
        assert!(
            out.status.success(),
            "{program} {args:?} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker://127.0.0.1:PORT/<repo>`.
    pub fn docker(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.registry)
    }

    pub fn podman(&self, args: &[&str]) -> Vec<String> {
        let mut v = self.storage_args();
        v.extend(
            [
                "--tmpdir",
                &self.p("tmp"),
                "--events-backend",
                "file",
                "--cgroup-manager",
                "cgroupfs",
            ]
            .map(str::to_owned),
        );
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The set of blob digests in an OCI layout.
pub fn layout_blobs(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

pub fn layout_manifest_digest(dir: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}
