//! Small value types of the configuration: secrets that never print, and sizes in Quay's syntax.

use std::fmt;

/// A password or token from the config file. `Debug` never shows it, so a `Config` can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that hands it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A size written in Quay's syntax (`2G`, `512M`, `8G`, or bytes), kept with its text because
/// some consumers (a Kubernetes env var, a VM disk) want the text and others want bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByteSize {
    text: String,
    bytes: u64,
}

impl ByteSize {
    /// Parse Quay's size syntax; `None` for anything else or zero.
    pub fn parse(text: &str) -> Option<ByteSize> {
        let bytes = registry_core::config::parse_size(text).filter(|&n| n > 0)?;
        Some(ByteSize {
            text: text.trim().to_owned(),
            bytes,
        })
    }

    /// The size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The size as written in the file.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn sizes_keep_text_and_bytes() {
        let s = ByteSize::parse(" 2G ").unwrap();
        assert_eq!(s.bytes(), 2 << 30);
        assert_eq!(s.as_str(), "2G");
        assert!(ByteSize::parse("0").is_none());
        assert!(ByteSize::parse("lots").is_none());
    }
}
