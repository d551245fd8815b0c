//! Git over ssh with the build pack's key held in memory (heavy: a private sshd).

use super::*;

/// An sshd on 127.0.0.1 accepting `authorized` keys for the current user; killed on drop.
struct Sshd {
    child: std::process::Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(dir: &Path, name: &str, args: &[&str]) -> (String, String) {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-N", "", "-C", "quarry-test", "-f"])
        .arg(&path)
        .output()
        .expect("running ssh-keygen: this test needs openssh-client");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let private = std::fs::read_to_string(&path).unwrap();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (private, public)
}

fn start_sshd(dir: &Path, authorized: &[&str]) -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "this test needs /usr/sbin/sshd (apt-get install openssh-server)"
    );
    // sshd refuses to start without its privilege separation directory.
    std::fs::create_dir_all("/run/sshd").unwrap();
    keygen(dir, "host_key", &["-t", "ed25519"]);
    std::fs::write(dir.join("authorized_keys"), authorized.concat()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(sshd)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, port }
}

#[tokio::test]
#[ignore = "heavy: starts a private sshd on loopback"]
async fn git_over_ssh_with_an_in_memory_key_including_submodules() {
    let repos = make_repos();
    let keys = tempfile::tempdir().unwrap();
    let (ed25519, ed25519_pub) = keygen(keys.path(), "ed25519", &["-t", "ed25519"]);
    let (rsa_pem, rsa_pub) = keygen(
        keys.path(),
        "rsa",
        &["-t", "rsa", "-b", "2048", "-m", "PEM"],
    );
    let (stranger, _) = keygen(keys.path(), "stranger", &["-t", "ed25519"]);
    let sshd = start_sshd(keys.path(), &[&ed25519_pub, &rsa_pub]);
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let url = format!(
        "ssh://{}@127.0.0.1:{}{}",
        user.trim(),
        sshd.port,
        repos.sup.display()
    );

    for key in [&ed25519, &rsa_pem] {
        let layout = Layout::new();
        let source = Source::Git {
            url: url.clone(),
            sha: repos.first.clone(),
            private_key: Some(key.clone()),
        };
        let (result, lines) = fetch_logged(&source, &layout.dest(), &Limits::default()).await;
        result.unwrap();
        // The relative submodule resolved to the same ssh server and used the same key.
        assert_eq!(
            std::fs::read_to_string(layout.dest().join("lib/lib.txt")).unwrap(),
            "sub v1\n"
        );
        assert!(!lines.join("\n").contains("PRIVATE KEY"));
    }

    let layout = Layout::new();
    let source = Source::Git {
        url,
        sha: repos.first.clone(),
        private_key: Some(stranger),
    };
    let (result, _) = fetch_logged(&source, &layout.dest(), &Limits::default()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, SourceError::GitAuth { .. }), "{err:?}");
    assert!(err.is_user_error());
    layout.assert_clean();
}
