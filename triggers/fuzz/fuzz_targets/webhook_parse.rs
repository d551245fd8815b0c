//! A webhook delivery for every service: `verify` and `parse` never panic, a push to build has a
//! lower-case commit SHA, custom-git always builds from the trigger's URL, and the metadata
//! survives a JSON round trip (buildman stores it as `trigger_metadata`). Form-encoded bodies are
//! reached through a `Content-Type` header line.
//!
//! Input: byte 0 picks the service; then `Name: value` header lines up to an empty line; then
//! the body (scripts/fuzz.sh seeds it from fixtures/webhooks in this form).
#![no_main]

use libfuzzer_sys::fuzz_target;
use triggers::metadata::{Metadata, Push, is_commit_sha};
use triggers::webhook::{self, Headers, Service};

const SOURCES: [&str; 3] = [
    "",
    "lanternworks/kiln",
    "ssh://git@git.example.net/srv/app.git",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let service = Service::ALL[usize::from(first) % Service::ALL.len()];
    let build_source = SOURCES[usize::from(first / 4) % SOURCES.len()];
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&[][..], rest),
    };
    let headers = Headers::new(head.split(|&b| b == b'\n').filter_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?;
        Some((name.to_owned(), line[colon + 1..].to_vec()))
    }));

    let _ = webhook::verify(service, &headers, body, b"quarry-fixture-secret-0001");

    let Ok(Push::Build(m)) = webhook::parse(service, &headers, body, build_source) else {
        return;
    };
    assert!(is_commit_sha(&m.commit), "commit {:?}", m.commit);
    assert_eq!(m.commit, m.commit.to_ascii_lowercase());
    if service == Service::CustomGit {
        assert_eq!(
            m.git_url, build_source,
            "custom-git builds from the trigger's URL"
        );
    }
    let json = serde_json::to_value(&*m).expect("metadata serialises");
    let back: Metadata = serde_json::from_value(json).expect("metadata deserialises");
    assert_eq!(back, *m);
});
