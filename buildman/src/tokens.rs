//! Build JWTs: the registration token a worker is started with and the job token it gets back
//! from `RegisterBuildJob` (Quay's `build_token.py` claims, so Quay's agent accepts ours).
//!
//! Tokens are RS256, signed with registry-core's instance key (`DATA_DIR/signing-key.pem`) and
//! carry its `kid`. Claims: `iss`, `aud` (the manager hostname), `nbf`, `iat`, `exp`,
//! `sub = "(anonymous)"`, `access = {}` and `context = {token_type, build_id, job_id,
//! expiration}`. Verification allows 30 s of clock skew (Quay's `JWT_CLOCK_SKEW_SECONDS`).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use registry_core::auth::token::{TokenKeys, now_s};
use serde::{Deserialize, Serialize};

/// Quay's subject of build tokens.
pub const ANONYMOUS_SUB: &str = "(anonymous)";
/// Clock skew allowed when verifying (Quay's `JWT_CLOCK_SKEW_SECONDS`).
pub const LEEWAY_S: u64 = 30;
/// Added to `JOB_REGISTRATION_TIMEOUT` for the registration token's lifetime (Quay: +30 s).
pub const REGISTRATION_GRACE: Duration = Duration::from_secs(30);

/// Which of the two build tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Handed to a worker at start; exchanged for a job token by `RegisterBuildJob`.
    Registration,
    /// Authenticates every later call of the worker.
    Job,
}

impl TokenType {
    /// Quay's `token_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Registration => "build_job_registration",
            TokenType::Job => "build_job_token",
        }
    }
}

/// Why a build token was refused or could not be made. The display text is the `<reason>` of
/// the gRPC status `Invalid build token: <reason>`.
#[derive(Debug, thiserror::Error)]
pub enum BuildTokenError {
    /// Signing failed.
    #[error("failed to sign build token")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Not a JWT, or claims missing or of the wrong shape.
    #[error("token is malformed")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    /// No `kid` header, or not the key of this installation.
    #[error("token key id is missing or unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("token has expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Another manager hostname.
    #[error("token audience is not this build manager")]
    WrongAudience,
    /// Another issuer.
    #[error("token issuer is unknown")]
    WrongIssuer,
    /// `sub` is not `(anonymous)`.
    #[error("token subject is not {ANONYMOUS_SUB}")]
    WrongSubject,
    /// The `job_id` does not name the token's build on this manager's orchestrator prefix.
    #[error("token job id does not match its build")]
    WrongJob,
    /// A registration token where a job token is needed, or the reverse.
    #[error("token type is {actual:?}, expected {expected:?}")]
    WrongType {
        /// The type the call needs.
        expected: &'static str,
        /// The token's type.
        actual: String,
    },
}

/// Quay's `context` claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildContext {
    /// `build_job_registration` or `build_job_token`.
    pub token_type: String,
    /// The build's uuid.
    pub build_id: String,
    /// The job's orchestrator key (`<ORCHESTRATOR_PREFIX>building/<uuid>`).
    pub job_id: String,
    /// The token's lifetime in seconds.
    pub expiration: u64,
    /// Quarry addition: the queue claim (`state_id`) of the attempt the token was minted for,
    /// so an agent left over from an earlier attempt cannot act on the current one. Quay's
    /// agent passes tokens through unread, so the extra field is compatible.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub attempt_id: String,
}

/// Whom a token is minted for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobIdentity {
    /// The build's uuid.
    pub build_id: String,
    /// The job's orchestrator key, with `ORCHESTRATOR_PREFIX` (Quay's `job_id`).
    pub job_id: String,
    /// The attempt's queue claim id.
    pub attempt_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct BuildClaims {
    iss: String,
    aud: String,
    nbf: u64,
    iat: u64,
    exp: u64,
    sub: String,
    /// Always `{}` in build tokens; kept loose on the way in.
    access: serde_json::Value,
    context: BuildContext,
}

/// Mints and verifies build tokens for one manager hostname.
pub struct BuildTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for BuildTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("BuildTokens")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl BuildTokens {
    /// Tokens signed with `keys`, issued by registry-core's issuer, for `manager_hostname`.
    pub fn new(keys: &TokenKeys, manager_hostname: &str) -> BuildTokens {
        BuildTokens {
            encoding: keys.encoding_key().clone(),
            decoding: keys.decoding_key().clone(),
            kid: keys.kid().to_owned(),
            issuer: registry_core::auth::token::ISSUER.to_owned(),
            audience: manager_hostname.to_owned(),
        }
    }

    /// The audience tokens are minted for and checked against.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Mint a token of type `ty` for the job `who`, valid for `lifetime`.
    pub fn mint(
        &self,
        ty: TokenType,
        who: &JobIdentity,
        lifetime: Duration,
    ) -> Result<String, BuildTokenError> {
        self.mint_at(now_s(), ty, who, lifetime.as_secs())
    }

    fn mint_at(
        &self,
        now: u64,
        ty: TokenType,
        who: &JobIdentity,
        lifetime_s: u64,
    ) -> Result<String, BuildTokenError> {
        let claims = BuildClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            nbf: now,
            iat: now,
            exp: now.saturating_add(lifetime_s),
            sub: ANONYMOUS_SUB.to_owned(),
            access: serde_json::Value::Object(serde_json::Map::new()),
            context: BuildContext {
                token_type: ty.as_str().to_owned(),
                build_id: who.build_id.clone(),
                job_id: who.job_id.clone(),
                expiration: lifetime_s,
                attempt_id: who.attempt_id.clone(),
            },
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(BuildTokenError::Sign)
    }

    /// Verify `token` as a token of type `expected` and return its context.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenType,
    ) -> Result<BuildContext, BuildTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(BuildTokenError::Malformed)?;
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(BuildTokenError::UnknownKey);
        }
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.validate_nbf = true;
        v.leeway = LEEWAY_S;
        v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<BuildClaims>(token, &self.decoding, &v)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => BuildTokenError::Expired,
                ErrorKind::ImmatureSignature => BuildTokenError::NotYetValid,
                ErrorKind::InvalidAudience => BuildTokenError::WrongAudience,
                ErrorKind::InvalidIssuer => BuildTokenError::WrongIssuer,
                ErrorKind::InvalidSignature => BuildTokenError::BadSignature,
                _ => BuildTokenError::Malformed(e),
            })?
            .claims;
        if claims.sub != ANONYMOUS_SUB {
            return Err(BuildTokenError::WrongSubject);
        }
        if claims.context.token_type != expected.as_str() {
            return Err(BuildTokenError::WrongType {
                expected: expected.as_str(),
                actual: claims.context.token_type,
            });
        }
        Ok(claims.context)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn keys(dir: &tempfile::TempDir, name: &str) -> TokenKeys {
        TokenKeys::load_or_generate(&dir.path().join(name)).unwrap()
    }

    fn who(build: &str) -> JobIdentity {
        JobIdentity {
            build_id: build.into(),
            job_id: format!("p/building/{build}"),
            attempt_id: "claim-1".into(),
        }
    }

    fn payload(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn tokens_carry_quays_claims_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(&dir, "k.pem");
        let t = BuildTokens::new(&k, "buildman.local:50051");
        let tok = t
            .mint(
                TokenType::Registration,
                &who("b-1"),
                Duration::from_secs(60),
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&tok).unwrap();
        assert_eq!(header.kid.as_deref(), Some(k.kid()));
        assert_eq!(header.alg, Algorithm::RS256);
        let p = payload(&tok);
        assert_eq!(p["sub"], "(anonymous)");
        assert_eq!(p["aud"], "buildman.local:50051");
        assert_eq!(p["access"], serde_json::json!({}));
        assert_eq!(
            p["context"],
            serde_json::json!({"token_type": "build_job_registration", "build_id": "b-1",
                               "job_id": "p/building/b-1", "expiration": 60,
                               "attempt_id": "claim-1"})
        );
        assert_eq!(p["exp"].as_u64().unwrap() - p["iat"].as_u64().unwrap(), 60);
        let ctx = t.verify(&tok, TokenType::Registration).unwrap();
        assert_eq!(
            (
                ctx.build_id.as_str(),
                ctx.expiration,
                ctx.attempt_id.as_str()
            ),
            ("b-1", 60, "claim-1")
        );
    }

    #[test]
    fn wrong_type_audience_key_and_expiry_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys(&dir, "k.pem");
        let t = BuildTokens::new(&k, "bm:50051");
        let job = t
            .mint(TokenType::Job, &who("b"), Duration::from_secs(7200))
            .unwrap();
        assert!(matches!(
            t.verify(&job, TokenType::Registration),
            Err(BuildTokenError::WrongType { .. })
        ));
        t.verify(&job, TokenType::Job).unwrap();

        let other_aud = BuildTokens::new(&k, "elsewhere:50051");
        assert!(matches!(
            other_aud.verify(&job, TokenType::Job),
            Err(BuildTokenError::WrongAudience)
        ));

        let other_key = BuildTokens::new(&keys(&dir, "other.pem"), "bm:50051");
        assert!(matches!(
            other_key.verify(&job, TokenType::Job),
            Err(BuildTokenError::UnknownKey)
        ));

        // Expired 31 s ago: past the 30 s leeway. Expired 10 s ago: still inside it.
        let now = now_s();
        let old = t.mint_at(now - 91, TokenType::Job, &who("b"), 60).unwrap();
        let err = t.verify(&old, TokenType::Job).unwrap_err();
        assert_eq!(err.to_string(), "token has expired");
        let recent = t.mint_at(now - 70, TokenType::Job, &who("b"), 60).unwrap();
        t.verify(&recent, TokenType::Job).unwrap();

        let future = t.mint_at(now + 120, TokenType::Job, &who("b"), 60).unwrap();
        assert!(matches!(
            t.verify(&future, TokenType::Job),
            Err(BuildTokenError::NotYetValid)
        ));
        assert!(matches!(
            t.verify("garbage", TokenType::Job),
            Err(BuildTokenError::Malformed(_))
        ));
    }

    #[test]
    fn a_tampered_payload_fails_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let t = BuildTokens::new(&keys(&dir, "k.pem"), "bm");
        let tok = t
            .mint(TokenType::Job, &who("b"), Duration::from_secs(60))
            .unwrap();
        let mut p = payload(&tok);
        p["context"]["build_id"] = "other".into();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&p).unwrap());
        let parts: Vec<&str> = tok.split('.').collect();
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(matches!(
            t.verify(&tampered, TokenType::Job),
            Err(BuildTokenError::BadSignature)
        ));
    }
}
