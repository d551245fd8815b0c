//! The `registry-core` command line: `check-config` and the `admin` commands, run as a process.
#![allow(clippy::unwrap_used, clippy::tests_outside_test_module)]

use std::path::Path;

use assert_cmd::Command;

fn bin(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_registry-core"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env_remove("REGISTRY_ADMIN_PASSWORD");
    cmd
}

/// Run `admin <args>` successfully and return stdout.
fn admin(data_dir: &Path, args: &[&str]) -> String {
    let out = bin(data_dir)
        .arg("admin")
        .args(args)
        .env("REGISTRY_ADMIN_PASSWORD", "pw")
        .assert()
        .success();
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

/// Run `admin <args>`, expect exit 1, return stderr.
fn admin_fails(data_dir: &Path, args: &[&str]) -> String {
    let out = bin(data_dir)
        .arg("admin")
        .args(args)
        .write_stdin("")
        .assert()
        .failure()
        .code(1);
    String::from_utf8(out.get_output().stderr.clone()).unwrap()
}

#[test]
fn check_config_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "SERVER_HOSTNAM: registry.test\n").unwrap();
    let out = bin(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .assert()
        .failure()
        .code(2);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(stderr.contains("SERVER_HOSTNAM"), "{stderr}");

    std::fs::write(
        &config,
        "SERVER_HOSTNAME: registry.test\nSUPER_USERS: [root]\n",
    )
    .unwrap();
    let out = bin(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout);
    assert!(stdout.contains("configuration is valid"), "{stdout}");
}

#[test]
fn admin_sets_up_accounts_and_prints_secrets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(
        d,
        &["user", "create", "alice", "--email", "alice@example.test"],
    );
    // The password may come on stdin instead of the environment.
    bin(d)
        .args(["admin", "user", "create", "bob"])
        .write_stdin("bob-password\n")
        .assert()
        .success();
    admin(d, &["org", "create", "acme", "--owner", "alice"]);
    admin(
        d,
        &["team", "create", "acme", "builders", "--role", "creator"],
    );
    admin(d, &["team", "add-member", "acme", "builders", "bob"]);
    admin(d, &["repo", "create", "acme/app"]);
    admin(d, &["repo", "create", "acme/site", "--public"]);
    admin(d, &["repo", "set-visibility", "acme/app", "public"]);

    let out = admin(d, &["robot", "create", "acme", "ci"]);
    let fields: Vec<&str> = out.trim().split(' ').collect();
    assert_eq!(fields.len(), 2, "{out:?}");
    assert_eq!(fields[0], "acme+ci");
    assert_eq!(out.lines().count(), 1);
    admin(d, &["team", "add-member", "acme", "builders", "acme+ci"]);
    admin(
        d,
        &[
            "permission",
            "set",
            "acme/app",
            "--robot",
            "acme+ci",
            "--role",
            "write",
        ],
    );
    admin(
        d,
        &[
            "permission",
            "set",
            "acme/app",
            "--user",
            "bob",
            "--role",
            "admin",
        ],
    );
    admin(
        d,
        &[
            "permission",
            "set",
            "acme/app",
            "--team",
            "acme/builders",
            "--role",
            "read",
        ],
    );

    let token = admin(d, &["robot", "regenerate", "acme+ci"]);
    assert_eq!(token.trim().len(), 64, "{token:?}");
    assert_ne!(token.trim(), fields[1]);
    let access = admin(d, &["token", "create", "alice", "ci pipeline"]);
    assert_eq!(access.trim().len(), 40, "{access:?}");
}

#[test]
fn admin_errors_exit_1_and_name_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = admin_fails(d, &["repo", "create", "x/app"]);
    assert!(err.contains("namespace \"x\" does not exist"), "{err}");
    let err = admin_fails(d, &["user", "create", "alice"]);
    assert!(err.contains("REGISTRY_ADMIN_PASSWORD"), "{err}");
    admin(d, &["user", "create", "alice"]);
    let err = admin_fails(d, &["user", "create", "Alice!"]);
    assert!(err.contains("user name is invalid"), "{err}");
    let err = admin_fails(d, &["robot", "create", "nobody", "ci"]);
    assert!(err.contains("namespace \"nobody\" does not exist"), "{err}");
    let err = admin_fails(d, &["org", "create", "acme", "--owner", "ghost"]);
    assert!(err.contains("user \"ghost\" does not exist"), "{err}");
    let err = admin_fails(d, &["team", "create", "alice", "devs"]);
    assert!(err.contains("expected organisation"), "{err}");
    let err = admin_fails(
        d,
        &[
            "permission",
            "set",
            "alice/none",
            "--user",
            "alice",
            "--role",
            "read",
        ],
    );
    assert!(
        err.contains("repository \"alice/none\" does not exist"),
        "{err}"
    );
    let err = admin_fails(d, &["repo", "create", "alice"]);
    assert!(err.contains("needs a namespace"), "{err}");
    // A missing target is a usage error from clap (exit 2).
    bin(d)
        .args(["admin", "permission", "set", "alice/app", "--role", "read"])
        .assert()
        .failure()
        .code(2);
}
