//! Registry bearer tokens: RS256 JWTs in the Docker token format, signed with a key kept in the
//! data directory (generated on first start).

use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::accounts::tokens::TokenScope;

/// Issuer claim of our tokens (Quay uses `quay`).
pub const ISSUER: &str = "quarry";

/// Why a key could not be loaded or a token could not be issued or verified.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Reading or writing the key file failed.
    #[error("failed to access signing key {path:?}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is not an RSA PKCS#8 PEM key.
    #[error("signing key {path:?} is not an RSA private key in PKCS#8 PEM form")]
    BadKey {
        /// The key file.
        path: PathBuf,
    },
    /// Key generation failed.
    #[error("failed to generate an RSA signing key")]
    Generate,
    /// Signing failed.
    #[error("failed to sign token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The token is malformed, expired, for another audience or badly signed.
    #[error("invalid token")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

/// One entry of a token's `access` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    /// Resource type: `repository` (or `registry` for catalog).
    #[serde(rename = "type")]
    pub kind: String,
    /// Resource name, such as `ns/repo`.
    pub name: String,
    /// Granted actions: `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

/// Who the token was issued to, as Quay's `context` claim carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenContext {
    /// `user`, `robot`, `token` or `anonymous`.
    pub kind: String,
    /// The account name (absent for anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The scope of the access token the registry token was issued for, so that the registry's
    /// refusal path caps the account's rights as `/v2/auth` did (absent for other credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_scope: Option<ScopeClaim>,
}

/// A [`TokenScope`] in a registry token (the expiry is in `exp`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeClaim {
    /// The only repository; absent = all of the account's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The role ceiling: `read`, `write` or `admin`.
    pub max_role: String,
}

impl From<&TokenScope> for ScopeClaim {
    fn from(s: &TokenScope) -> Self {
        ScopeClaim {
            repository: s.repository.as_ref().map(ToString::to_string),
            max_role: s.max_role.as_str().to_owned(),
        }
    }
}

impl ScopeClaim {
    /// The scope again; `None` when a field does not parse (callers then refuse).
    pub fn to_scope(&self) -> Option<TokenScope> {
        Some(TokenScope {
            repository: self
                .repository
                .as_deref()
                .map(str::parse)
                .transpose()
                .ok()?,
            max_role: self.max_role.parse().ok()?,
            expires_at_ms: None,
        })
    }
}

/// The claims of a registry token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the account name, or empty for anonymous.
    pub sub: String,
    /// Audience: the registry's `SERVER_HOSTNAME`.
    pub aud: String,
    /// Expiry (seconds).
    pub exp: u64,
    /// Not before (seconds).
    pub nbf: u64,
    /// Issued at (seconds).
    pub iat: u64,
    /// Unique id.
    pub jti: String,
    /// Granted access.
    pub access: Vec<AccessEntry>,
    /// Who the token is for.
    pub context: TokenContext,
}

/// The signing key and its verifying half.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys").field("kid", &self.kid).finish()
    }
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_unwrap(label: &str, pem: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = pem.split_once(&begin)?.1.split_once(&end)?.0;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

impl TokenKeys {
    /// Load the key at `path`, generating a 2048-bit RSA key there (mode 0600) if it is missing.
    pub fn load_or_generate(path: &Path) -> Result<TokenKeys, TokenError> {
        let key_file = |source| TokenError::KeyFile {
            path: path.to_owned(),
            source,
        };
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair =
                    RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| TokenError::Generate)?;
                let der = pair.as_der().map_err(|_| TokenError::Generate)?;
                let pem = pem_wrap("PRIVATE KEY", der.as_ref());
                write_private(path, pem.as_bytes()).map_err(key_file)?;
                pem
            }
            Err(e) => return Err(key_file(e)),
        };
        Self::from_pem(&pem).ok_or_else(|| TokenError::BadKey {
            path: path.to_owned(),
        })
    }

    fn from_pem(pem: &str) -> Option<TokenKeys> {
        let der = pem_unwrap("PRIVATE KEY", pem)?;
        let pair = RsaKeyPair::from_pkcs8(&der).ok()?;
        let public_pkcs1 = pair.public_key().as_ref().to_vec();
        let kid = {
            let d = crate::digest::Digest::of(crate::digest::Algorithm::Sha256, &public_pkcs1);
            d.hex()[..16].to_owned()
        };
        Some(TokenKeys {
            // from_rsa_pem understands the PKCS#8 label; from_rsa_der wants PKCS#1.
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).ok()?,
            decoding: DecodingKey::from_rsa_der(&public_pkcs1),
            kid,
        })
    }

    /// The key id put in every token's `kid` header (derived from the public key).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The RS256 signing key, for other token kinds signed with the instance key (buildman's
    /// build JWTs, as Quay signs them with its instance service key).
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The verifying half of [`TokenKeys::encoding_key`].
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// Sign `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(TokenError::Sign)
    }

    /// Verify signature, expiry, issuer and audience, and return the claims.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[audience]);
        v.set_issuer(&[ISSUER]);
        v.validate_nbf = true;
        v.leeway = 5;
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(TokenError::Invalid)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &str, exp_in: i64) -> Claims {
        let now = now_s();
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: aud.into(),
            exp: now.saturating_add_signed(exp_in),
            nbf: now,
            iat: now,
            jti: "j".into(),
            access: vec![AccessEntry {
                kind: "repository".into(),
                name: "alice/app".into(),
                actions: vec!["pull".into()],
            }],
            context: TokenContext {
                kind: "user".into(),
                user: Some("alice".into()),
                token_scope: None,
            },
        }
    }

    #[test]
    fn generated_key_persists_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing-key.pem");
        let k1 = TokenKeys::load_or_generate(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let tok = k1.sign(&claims("reg:5000", 60)).unwrap();
        // A reloaded key verifies tokens signed before the restart.
        let k2 = TokenKeys::load_or_generate(&path).unwrap();
        assert_eq!(k2.verify(&tok, "reg:5000").unwrap().sub, "alice");
        assert!(k2.verify(&tok, "other:5000").is_err());
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = TokenKeys::load_or_generate(&dir.path().join("a.pem")).unwrap();
        let other = TokenKeys::load_or_generate(&dir.path().join("b.pem")).unwrap();
        assert!(k.verify(&k.sign(&claims("r", -120)).unwrap(), "r").is_err());
        assert!(
            k.verify(&other.sign(&claims("r", 60)).unwrap(), "r")
                .is_err()
        );
        assert!(k.verify("not.a.jwt", "r").is_err());
    }

    #[test]
    fn scope_claims_round_trip_and_stay_out_of_unscoped_tokens() {
        use crate::accounts::permissions::Role;
        let scope = TokenScope {
            repository: Some("acme/app".parse().unwrap()),
            max_role: Role::Write,
            expires_at_ms: None,
        };
        let claim = ScopeClaim::from(&scope);
        assert_eq!(claim.to_scope(), Some(scope));
        let json = serde_json::to_value(&claim).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"repository": "acme/app", "max_role": "write"})
        );
        let bad = ScopeClaim {
            repository: None,
            max_role: "none".into(),
        };
        assert_eq!(bad.to_scope(), None);
        let ctx = serde_json::to_value(claims("r", 60).context).unwrap();
        assert!(ctx.get("token_scope").is_none(), "{ctx}");
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, "garbage").unwrap();
        let err = TokenKeys::load_or_generate(&p).unwrap_err();
        assert!(err.to_string().contains("PKCS#8"), "{err}");
    }
}
