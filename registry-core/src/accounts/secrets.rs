//! Passwords, robot tokens and access tokens: generation, hashing and comparison.
//!
//! Passwords are stored as argon2id PHC strings (the `argon2` crate's defaults: 19 MiB, 2 passes),
//! robot and access tokens as the SHA-256 hex of the token: they are long random strings, so a fast
//! hash is enough and lets access tokens be looked up by an indexed column.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use rand::Rng as _;
use subtle::ConstantTimeEq as _;

use super::AccountError;
use crate::digest::{Algorithm, Digest};

/// Upper-case letters and digits, as Quay's robot tokens and generated passwords use.
const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Both cases and digits, as Quay's access tokens use.
const MIXED_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

fn random_from(alphabet: &[u8], len: usize) -> String {
    // rand's thread RNG is a CSPRNG (ChaCha12) reseeded from the OS.
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

/// A new robot token: 64 characters of `[A-Z0-9]` (about 330 bits).
pub fn new_robot_token() -> String {
    random_from(UPPER_ALNUM, 64)
}

/// A new access token: 40 characters of `[A-Za-z0-9]` (about 238 bits).
pub fn new_access_token() -> String {
    random_from(MIXED_ALNUM, 40)
}

/// A new generated password: 32 characters of `[A-Z0-9]` (about 165 bits), as Quay's superuser
/// API hands out.
pub fn new_password() -> String {
    random_from(UPPER_ALNUM, 32)
}

/// SHA-256 hex of a token, the stored form of robot and access tokens.
pub fn token_hash(token: &str) -> String {
    Digest::of(Algorithm::Sha256, token.as_bytes())
        .hex()
        .to_owned()
}

/// Compare a presented token with a stored hash in constant time.
pub fn token_matches(token: &str, stored_hash: &str) -> bool {
    token_hash(token)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// Hash a password into an argon2id PHC string (CPU-heavy: call it off the async threads).
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    if password.is_empty() {
        return Err(AccountError::Empty { field: "password" });
    }
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(AccountError::Hash)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(AccountError::Hash)
}

/// Check a password against a stored PHC string; a malformed stored hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .and_then(|h| Argon2::default().verify_password(password.as_bytes(), &h))
        .is_ok()
}

/// Spend the time a password check costs, for unknown users, so that the answer time does not tell
/// whether a user exists.
pub fn burn_password_check(password: &str) {
    let mut out = [0u8; 32];
    // The result is irrelevant; only the work matters.
    let _ =
        Argon2::default().hash_password_into(password.as_bytes(), b"quarry-no-user!!", &mut out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_to_argon2id_phc_and_verify() {
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("s3cret", &phc));
        assert!(!verify_password("S3cret", &phc));
        assert!(!verify_password("s3cret", "not a phc string"));
        // Salted: the same password hashes differently.
        assert_ne!(phc, hash_password("s3cret").unwrap());
        assert!(matches!(
            hash_password(""),
            Err(AccountError::Empty { field: "password" })
        ));
    }

    #[test]
    fn tokens_are_long_random_and_compared_by_hash() {
        let t = new_robot_token();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| UPPER_ALNUM.contains(&b)));
        assert_ne!(t, new_robot_token());
        assert_eq!(new_access_token().len(), 40);
        assert_eq!(new_password().len(), 32);
        let h = token_hash(&t);
        assert_eq!(h.len(), 64);
        assert!(token_matches(&t, &h));
        assert!(!token_matches("other", &h));
        assert!(!token_matches(&t, ""));
    }
}
