//! Malicious archives: each refused with the right reason and nothing written outside.

use super::*;

#[tokio::test]
async fn dotdot_entries_are_refused() {
    let tar = raw_tar(&[
        ("Dockerfile", EntryType::Regular, "", b"FROM scratch\n"),
        ("../../marker/escape", EntryType::Regular, "", b"pwned"),
    ]);
    let (layout, result, _) = fetch_archive(tar, "application/x-tar", &Limits::default()).await;
    assert_eq!(unsafe_reason(result), UnsafeReason::ParentDir);
    layout.assert_clean();

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file(
        "../../marker/zipped",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    zip.write_all(b"pwned").unwrap();
    let (layout, result, _) = fetch_archive(
        zip.finish().unwrap().into_inner(),
        "application/zip",
        &Limits::default(),
    )
    .await;
    assert_eq!(unsafe_reason(result), UnsafeReason::ParentDir);
    layout.assert_clean();
}

#[tokio::test]
async fn absolute_entries_are_refused() {
    let layout_probe = Layout::new();
    let abs = format!("{}/abs", layout_probe.marker().display());
    let tar = raw_tar(&[
        (abs.as_str(), EntryType::Regular, "", b"pwned"),
        ("/etc/quarry-pwned", EntryType::Regular, "", b"pwned"),
    ]);
    let (layout, result, _) = fetch_archive(tar, "application/x-tar", &Limits::default()).await;
    assert_eq!(unsafe_reason(result), UnsafeReason::Absolute);
    layout.assert_clean();
    layout_probe.assert_clean();
}

#[tokio::test]
async fn symlink_escapes_are_refused_before_anything_goes_through_them() {
    let cases: Vec<Vec<u8>> = vec![
        raw_tar(&[
            ("etc", EntryType::Symlink, "/etc", b""),
            ("etc/quarry-pwned", EntryType::Regular, "", b"pwned"),
        ]),
        raw_tar(&[
            ("m", EntryType::Symlink, "../../marker", b""),
            ("m/pwned", EntryType::Regular, "", b"pwned"),
        ]),
        // Each link alone stays inside; together `d/l` resolves to the staging dir's parent.
        raw_tar(&[
            ("d/up", EntryType::Symlink, "..", b""),
            ("d/l", EntryType::Symlink, "up/../x", b""),
        ]),
        gzip(&raw_tar(&[
            ("sub/", EntryType::Directory, "", b""),
            ("sub/out", EntryType::Symlink, "../../../marker/x", b""),
        ])),
    ];
    for tar in cases {
        let (layout, result, _) =
            fetch_archive(tar, "application/octet-stream", &Limits::default()).await;
        assert!(matches!(
            unsafe_reason(result),
            UnsafeReason::LinkOutside { .. }
        ));
        layout.assert_clean();
    }
    // A link that stays inside, then a write through it: refused all the same.
    let tar = raw_tar(&[
        ("real/", EntryType::Directory, "", b""),
        ("alias", EntryType::Symlink, "real", b""),
        ("alias/f", EntryType::Regular, "", b"x"),
    ]);
    let (layout, result, _) = fetch_archive(tar, "application/x-tar", &Limits::default()).await;
    assert_eq!(unsafe_reason(result), UnsafeReason::ThroughSymlink);
    layout.assert_clean();
}

#[tokio::test]
async fn hard_links_out_of_the_archive_are_refused() {
    for target in ["/etc/passwd", "../../../../../../etc/passwd", "missing"] {
        let tar = raw_tar(&[("passwd", EntryType::Link, target, b"")]);
        let (layout, result, _) = fetch_archive(tar, "application/x-tar", &Limits::default()).await;
        assert!(
            matches!(unsafe_reason(result), UnsafeReason::HardLinkTarget { .. }),
            "{target}"
        );
        layout.assert_clean();
    }
}

#[tokio::test]
async fn device_entries_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        let tar = raw_tar(&[
            ("Dockerfile", EntryType::Regular, "", b"FROM scratch\n"),
            ("null", kind, "", b""),
        ]);
        let (layout, result, _) = fetch_archive(tar, "application/x-tar", &Limits::default()).await;
        assert_eq!(unsafe_reason(result), UnsafeReason::Device, "{kind:?}");
        layout.assert_clean();
    }
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_size_limit() {
    // 8 MiB of zeros compresses to a few KiB; the limit is 1 MiB.
    let bomb = gzip(&raw_tar(&[(
        "zeros",
        EntryType::Regular,
        "",
        &vec![0u8; 8 << 20],
    )]));
    assert!(bomb.len() < 64 << 10);
    let (layout, result, _) = fetch_archive(bomb, "application/gzip", &small_limits()).await;
    let err = result.unwrap_err();
    assert!(matches!(err, SourceError::TooLarge { .. }), "{err:?}");
    assert!(err.is_user_error());
    layout.assert_clean();
}

#[tokio::test]
async fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, EntryType, &str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), EntryType::Regular, "", &b"x"[..]))
        .collect();
    let (layout, result, _) =
        fetch_archive(raw_tar(&entries), "application/x-tar", &small_limits()).await;
    assert!(
        matches!(result, Err(SourceError::TooManyEntries { limit: 20, .. })),
        "{result:?}"
    );
    layout.assert_clean();

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for n in &names {
        zip.start_file(n.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
    }
    let (layout, result, _) = fetch_archive(
        zip.finish().unwrap().into_inner(),
        "application/zip",
        &small_limits(),
    )
    .await;
    assert!(
        matches!(result, Err(SourceError::TooManyEntries { limit: 20, .. })),
        "{result:?}"
    );
    layout.assert_clean();
}
