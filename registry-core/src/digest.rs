//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and resumable hashing.
//!
//! [`Digest`] is a validated newtype; [`Hasher`] is an incremental hash whose internal state can be
//! saved after every upload chunk and restored later (after a restart, or on another request), so
//! finishing an upload never re-reads the bytes already received.

use std::fmt;
use std::str::FromStr;

use sha2::digest::Digest as _;
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Sha256, Sha512};

/// A digest algorithm this registry accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, the default.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The name used in digest strings and `digest-algorithm` query parameters.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other => Err(DigestError::UnsupportedAlgorithm {
                algorithm: other.to_owned(),
            }),
        }
    }
}

/// Why a digest string or a saved hash state was rejected.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// The string has no `algorithm:` prefix.
    #[error("digest {input:?} is not of the form <algorithm>:<hex>")]
    Malformed {
        /// The rejected input (digests are not secret).
        input: String,
    },
    /// The algorithm is not sha256 or sha512.
    #[error("unsupported digest algorithm {algorithm:?} (supported: sha256, sha512)")]
    UnsupportedAlgorithm {
        /// The algorithm named by the client.
        algorithm: String,
    },
    /// The encoded part is not lowercase hex of the right length.
    #[error("digest {input:?} must have {expected} lowercase hex characters after the colon")]
    BadEncoding {
        /// The rejected input.
        input: String,
        /// How many hex characters the algorithm needs.
        expected: usize,
    },
    /// A stored hash state could not be restored.
    #[error("saved {algorithm} hash state is corrupt")]
    CorruptState {
        /// The algorithm of the state.
        algorithm: &'static str,
    },
}

/// A validated content digest such as `sha256:e3b0c4...`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    // Invariant: lowercase hex of `algorithm.hex_len()` characters.
    hex: String,
}

impl PartialOrd for Algorithm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Algorithm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl Digest {
    /// The digest of `bytes` with `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| DigestError::Malformed {
            input: s.to_owned(),
        })?;
        let algorithm: Algorithm = alg.parse()?;
        let ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(DigestError::BadEncoding {
                input: s.to_owned(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The most bytes a restored hash state may claim to have hashed (1 EiB, far beyond any blob).
///
/// sha2 restores its block counter as saved and, when finishing, multiplies it into a bit count
/// without an overflow check: a corrupt counter panics in debug builds and yields a wrong digest in
/// release builds. Capping it well below the overflow leaves room for any later upload.
const MAX_HASHED_BYTES: u128 = 1 << 60;

fn block_size(algorithm: Algorithm) -> u128 {
    match algorithm {
        Algorithm::Sha256 => 64,
        Algorithm::Sha512 => 128,
    }
}

/// The hashed-block counter of a saved state (sha2 0.11's layout: the chaining state, then the
/// counter in little-endian, then the partial block), or `None` if the state is too short.
fn hashed_blocks(algorithm: Algorithm, state: &[u8]) -> Option<u128> {
    match algorithm {
        Algorithm::Sha256 => {
            let b: [u8; 8] = state.get(32..40)?.try_into().ok()?;
            Some(u128::from(u64::from_le_bytes(b)))
        }
        Algorithm::Sha512 => Some(u128::from_le_bytes(state.get(64..80)?.try_into().ok()?)),
    }
}

/// An incremental hash whose state can be saved and restored.
#[derive(Clone, Debug)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm of this hasher.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far (the hasher itself is left untouched).
    pub fn current(&self) -> Digest {
        self.clone().finish()
    }

    /// Consume the hasher and return the digest.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }

    /// The opaque saved state (to store beside the upload's offset).
    pub fn save(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// Restore a state produced by [`Hasher::save`].
    pub fn restore(algorithm: Algorithm, state: &[u8]) -> Result<Hasher, DigestError> {
        let corrupt = || DigestError::CorruptState {
            algorithm: algorithm.name(),
        };
        if hashed_blocks(algorithm, state)
            .is_none_or(|n| n > MAX_HASHED_BYTES / block_size(algorithm))
        {
            return Err(corrupt());
        }
        match algorithm {
            Algorithm::Sha256 => {
                let arr = state.try_into().map_err(|_| corrupt())?;
                Sha256::deserialize(arr)
                    .map(Hasher::Sha256)
                    .map_err(|_| corrupt())
            }
            Algorithm::Sha512 => {
                let arr = state.try_into().map_err(|_| corrupt())?;
                Sha512::deserialize(arr)
                    .map(Hasher::Sha512)
                    .map_err(|_| corrupt())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_round_trip() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(Digest::of(Algorithm::Sha256, b""), d);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "sha256",
            "md5:abcd",
            "sha256:ABC",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn saved_state_continues_where_it_stopped() {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let mut h = Hasher::new(alg);
            h.update(&data[..3333]);
            let saved = h.save();
            let mut restored = Hasher::restore(alg, &saved).unwrap();
            restored.update(&data[3333..]);
            assert_eq!(restored.finish(), Digest::of(alg, &data));
        }
    }

    #[test]
    fn corrupt_state_is_an_error() {
        assert!(Hasher::restore(Algorithm::Sha256, b"short").is_err());
    }

    #[test]
    fn saved_state_layout_is_the_one_restore_checks() {
        // Pins sha2's serialisation: a sha2 upgrade that moves the block counter fails here.
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let bs = usize::try_from(block_size(alg)).unwrap();
            let mut h = Hasher::new(alg);
            h.update(&vec![7u8; 3 * bs + 5]);
            assert_eq!(hashed_blocks(alg, &h.save()), Some(3), "{alg:?}");
        }
    }

    #[test]
    fn restored_state_claiming_an_impossible_length_is_corrupt_not_a_panic() {
        // Found by `restored_corrupt_state_never_panics_when_used`: sha2 accepted the saved block
        // counter as is, and `finish` then overflowed multiplying it into a bit count (a panic
        // in debug builds, a wrong digest in release builds).
        for (alg, at) in [(Algorithm::Sha256, 32..40), (Algorithm::Sha512, 64..80)] {
            let mut state = Hasher::new(alg).save();
            state[at].fill(0xff);
            assert!(Hasher::restore(alg, &state).is_err(), "{alg:?}");
        }
    }

    use proptest::prelude::*;

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![Just(Algorithm::Sha256), Just(Algorithm::Sha512)]
    }

    /// A valid digest string of either algorithm.
    fn valid_digest() -> impl Strategy<Value = String> {
        prop_oneof!["sha256:[0-9a-f]{64}", "sha512:[0-9a-f]{128}"]
    }

    proptest! {
        #[test]
        fn digest_parse_never_panics(s in any::<String>()) {
            let _ = s.parse::<Digest>();
        }

        #[test]
        fn digest_parse_never_panics_on_near_misses(
            s in "(sha256|sha512|SHA256|md5|)(:|::|)[0-9a-fA-Fg:]{0,130}",
        ) {
            if let Ok(d) = s.parse::<Digest>() {
                // Anything accepted is canonical: it prints back unchanged.
                prop_assert_eq!(d.to_string(), s);
            }
        }

        #[test]
        fn valid_digests_print_back_unchanged(s in valid_digest()) {
            let d: Digest = s.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(d.hex().len(), d.algorithm().hex_len());
            prop_assert_eq!(d.to_string(), s);
        }

        #[test]
        fn hasher_restore_never_panics(
            alg in algorithm(),
            state in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = Hasher::restore(alg, &state);
        }

        #[test]
        fn restored_corrupt_state_never_panics_when_used(
            alg in algorithm(),
            fed in prop::collection::vec(any::<u8>(), 0..300),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            more in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            // Start from a genuine saved state and corrupt some of its bytes, so the corruption
            // reaches past the length check into the fields the hash library accepts as they are.
            let mut h = Hasher::new(alg);
            h.update(&fed);
            let mut state = h.save();
            for (i, b) in flips {
                let i = i.index(state.len());
                state[i] = b;
            }
            if let Ok(mut h) = Hasher::restore(alg, &state) {
                h.update(&more);
                let _ = h.current();
                let _ = h.save();
                let _ = h.finish();
            }
        }
    }
}
