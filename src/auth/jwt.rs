//! JWT issue and verification (HS256 by default). Verification pins the algorithm, requires
//! exp/nbf/iss/aud, checks them with a small leeway, and picks the key by `kid`.
//!
//! One secret format everywhere (`auth.jwt_secret`, `auth.verification_keys[].secret`, the
//! environment, `<data_dir>/jwt_secret`, `org-gateway keys generate`): the HMAC key is the
//! UTF-8 bytes of the secret text exactly as written, at least [`MIN_SECRET_CHARS`] characters.
//! Generated secrets are 64 lowercase hex characters (256 random bits), used as that text, so
//! a generated secret can be copied into another instance's configuration unchanged.

use crate::config::Secret;
use crate::domain::{AdminId, OrgId};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of verified tokens remembered (token text plus claims); about 60,000 tokens.
const VERIFIED_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Weight of one cached token beyond its text and its claims' strings: the claims' fixed part,
/// their allocation and the cache's own bookkeeping.
const VERIFIED_ENTRY_OVERHEAD: u32 = 512;
/// Longest a verified token is remembered (ten years).
const MAX_CACHED_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Shortest signing secret accepted, in characters.
pub const MIN_SECRET_CHARS: usize = 32;

/// Checks a secret's text: at least [`MIN_SECRET_CHARS`] characters, no leading or trailing
/// whitespace (a copied newline would silently make a different key). `what` names the
/// setting in the error; the secret itself never appears in it.
pub fn check_secret(what: &str, secret: &str) -> Result<(), String> {
    let chars = secret.chars().count();
    if chars < MIN_SECRET_CHARS {
        return Err(format!(
            "{what} must be at least {MIN_SECRET_CHARS} characters, not {chars} \
             (`org-gateway keys generate` prints a suitable one)"
        ));
    }
    if secret.trim() != secret {
        return Err(format!(
            "{what} starts or ends with whitespace; the key is the text exactly as written"
        ));
    }
    Ok(())
}

/// A new secret: 256 random bits from the OS as 64 lowercase hex characters.
pub fn generate_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rngs::OsRng, &mut bytes);
    Secret::from(hex::encode(bytes).as_str())
}

/// The claims the gateway issues and requires.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Admin id.
    pub sub: AdminId,
    /// Organization id.
    pub org: OrgId,
    /// Issued at (seconds since epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Token id.
    pub jti: String,
    /// The admin's credential version when issued; a password change invalidates the token.
    pub cv: u32,
}

/// Why a token was refused; used as a metric label, never shown to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Absent or not a Bearer token.
    Missing,
    /// Not a well-formed JWT.
    Malformed,
    /// Unknown `kid` or wrong algorithm.
    UnknownKey,
    /// Signature does not verify.
    BadSignature,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// `iss` or `aud` mismatch.
    WrongIssuerOrAudience,
    /// Admin deleted, org deleted, or password changed since issue.
    Revoked,
}

impl VerifyError {
    /// A stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuerOrAudience => "wrong_issuer_or_audience",
            Self::Revoked => "revoked",
        }
    }
}

/// Signing and verification keys.
pub struct JwtKeys {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl_seconds: i64,
    leeway_seconds: i64,
    /// Tokens whose signature and claims were verified, by their exact text: a repeat
    /// presentation skips the base64, JSON and HMAC work and only re-checks the time claims.
    verified: moka::sync::Cache<Box<str>, Arc<Claims>>,
}

/// Where the signing secret came from, for the startup log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// `auth.jwt_secret` in config or env.
    Configured,
    /// Read from `<data_dir>/jwt_secret`.
    DataDir,
    /// Generated now and written to `<data_dir>/jwt_secret`.
    Generated,
}

/// Cache weight of a verified token (moka hands the key as stored).
#[allow(clippy::borrowed_box)]
fn weight(token: &Box<str>, claims: &Arc<Claims>) -> u32 {
    let text = token.len() + claims.iss.len() + claims.aud.len() + claims.jti.len();
    u32::try_from(text)
        .unwrap_or(u32::MAX)
        .saturating_add(VERIFIED_ENTRY_OVERHEAD)
}

impl JwtKeys {
    /// Builds keys from a signing secret (see the module docs for its format).
    pub fn new(
        secret: &str,
        kid: &str,
        issuer: &str,
        audience: &str,
        ttl_seconds: u64,
        leeway_seconds: u64,
    ) -> Result<Self, String> {
        check_secret("the JWT signing secret", secret)?;
        let secret = secret.as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let mut decoding = HashMap::new();
        decoding.insert(kid.to_owned(), DecodingKey::from_secret(secret));
        Ok(Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(secret),
            decoding,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_seconds: ttl_seconds as i64,
            leeway_seconds: i64::try_from(leeway_seconds).unwrap_or(i64::MAX),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE_BYTES)
                .weigher(weight)
                // No token outlives this; expired ones are refused on lookup before then.
                // (Capped: moka refuses lifetimes beyond 1,000 years.)
                .time_to_live(Duration::from_secs(
                    ttl_seconds
                        .saturating_add(leeway_seconds)
                        .clamp(1, MAX_CACHED_SECONDS),
                ))
                .build(),
        })
    }

    /// Uses the configured secret, else the one in the data dir, else generates one there
    /// (mode 0600). The file holds the secret's text (no newline); surrounding whitespace, e.g.
    /// a newline added by an editor, is ignored.
    pub fn load_secret(
        configured: &str,
        data_dir: &Path,
    ) -> Result<(Secret, SecretSource), String> {
        if !configured.is_empty() {
            return Ok((Secret::from(configured), SecretSource::Configured));
        }
        let path = data_dir.join("jwt_secret");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let secret = text.trim();
            check_secret(&path.display().to_string(), secret)?;
            return Ok((Secret::from(secret), SecretSource::DataDir));
        }
        let secret = generate_secret();
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        write_private(&path, secret.expose().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok((secret, SecretSource::Generated))
    }

    /// Also accepts tokens signed with `secret` under `kid` (a key being rotated out). New
    /// tokens are always signed with the current key.
    pub fn with_verification_key(mut self, kid: &str, secret: &str) -> Result<Self, String> {
        check_secret(&format!("verification key {kid:?}"), secret)?;
        if kid == self.kid {
            return Err(format!(
                "verification key id {kid:?} is the signing key's id"
            ));
        }
        self.decoding
            .insert(kid.to_owned(), DecodingKey::from_secret(secret.as_bytes()));
        Ok(self)
    }

    /// Token lifetime in seconds.
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    /// Issues a token for an admin.
    pub fn issue(&self, admin: AdminId, org: OrgId, credential_version: u32) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: admin,
            org,
            iat: now,
            nbf: now,
            exp: now + self.ttl_seconds,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            cv: credential_version,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.encoding).expect("HS256 encoding cannot fail")
    }

    /// Verifies signature and registered claims; revocation is checked by the caller.
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, VerifyError> {
        if let Some(claims) = self.verified.get(token) {
            // Signature, issuer and audience cannot change; time moves on.
            let now = chrono::Utc::now().timestamp();
            if now > claims.exp.saturating_add(self.leeway_seconds) {
                return Err(VerifyError::Expired);
            }
            if now.saturating_add(self.leeway_seconds) < claims.nbf {
                return Err(VerifyError::NotYetValid);
            }
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_uncached(token)?);
        self.verified.insert(token.into(), Arc::clone(&claims));
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(VerifyError::UnknownKey);
        }
        let kid = header.kid.as_deref().unwrap_or(self.kid.as_str());
        let key = self.decoding.get(kid).ok_or(VerifyError::UnknownKey)?;
        decode::<Claims>(token, key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => VerifyError::Expired,
                    K::ImmatureSignature => VerifyError::NotYetValid,
                    K::InvalidIssuer | K::InvalidAudience => VerifyError::WrongIssuerOrAudience,
                    K::InvalidSignature => VerifyError::BadSignature,
                    K::InvalidAlgorithm => VerifyError::UnknownKey,
                    _ => VerifyError::Malformed,
                }
            })
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "secret-one-0123456789abcdef0123456789";
    const S2: &str = "secret-two-0123456789abcdef0123456789";
    const S3: &str = "secret-three-0123456789abcdef01234567";
    const S7: &str = "secret-seven-0123456789abcdef01234567";
    const S8: &str = "secret-eight-0123456789abcdef01234567";

    fn keys(ttl: u64) -> JwtKeys {
        JwtKeys::new(S7, "k1", "iss", "aud", ttl, 0).unwrap()
    }

    #[test]
    fn a_cached_token_is_still_refused_once_expired() {
        let k = keys(60);
        let token = k.issue(AdminId::generate(), OrgId::generate(), 1);
        let first = k.verify(&token).unwrap();
        // The second presentation is answered from the cache, with the same claims.
        assert!(Arc::ptr_eq(&first, &k.verify(&token).unwrap()));
        // Time passes: the cached claims' exp is checked on every use.
        let mut expired = (*first).clone();
        expired.exp = chrono::Utc::now().timestamp() - 10;
        k.verified.insert(token.as_str().into(), Arc::new(expired));
        assert_eq!(k.verify(&token).unwrap_err(), VerifyError::Expired);
        // A token never verified is never served from the cache, whatever its text.
        let mut forged = token.clone();
        forged.push('x');
        assert!(k.verify(&forged).is_err());
    }

    #[test]
    fn round_trip() {
        let k = keys(60);
        let (a, o) = (AdminId::generate(), OrgId::generate());
        let c = k.verify(&k.issue(a, o, 3)).unwrap();
        assert_eq!((c.sub, c.org, c.cv), (a, o, 3));
    }

    #[test]
    fn rejects_tampering_other_keys_and_alg_none() {
        let k = keys(60);
        let t = k.issue(AdminId::generate(), OrgId::generate(), 0);
        let other = JwtKeys::new(S8, "k1", "iss", "aud", 60, 0).unwrap();
        assert_eq!(other.verify(&t).unwrap_err(), VerifyError::BadSignature);
        let wrong_aud = JwtKeys::new(S7, "k1", "iss", "other", 60, 0).unwrap();
        assert_eq!(
            wrong_aud.verify(&t).unwrap_err(),
            VerifyError::WrongIssuerOrAudience
        );
        // alg "none" with the same claims
        let parts: Vec<&str> = t.split('.').collect();
        use base64::Engine;
        let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let forged = format!("{none}.{}.", parts[1]);
        assert!(k.verify(&forged).is_err());
        assert_eq!(k.verify("garbage").unwrap_err(), VerifyError::Malformed);
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_their_key_is_dropped() {
        let old = JwtKeys::new(S1, "k1", "iss", "aud", 60, 0).unwrap();
        let token = old.issue(AdminId::generate(), OrgId::generate(), 0);
        let rotated = JwtKeys::new(S2, "k2", "iss", "aud", 60, 0)
            .unwrap()
            .with_verification_key("k1", S1)
            .unwrap();
        assert!(rotated.verify(&token).is_ok());
        let fresh = rotated.issue(AdminId::generate(), OrgId::generate(), 0);
        assert!(rotated.verify(&fresh).is_ok());
        assert_eq!(old.verify(&fresh).unwrap_err(), VerifyError::UnknownKey);
        let dropped = JwtKeys::new(S2, "k2", "iss", "aud", 60, 0).unwrap();
        assert_eq!(dropped.verify(&token).unwrap_err(), VerifyError::UnknownKey);
        assert!(JwtKeys::new(S2, "k2", "iss", "aud", 60, 0)
            .unwrap()
            .with_verification_key("k2", S3)
            .is_err());
    }

    #[test]
    fn short_or_padded_secrets_refused() {
        let short = "x".repeat(MIN_SECRET_CHARS - 1);
        let err = JwtKeys::new(&short, "k", "i", "a", 60, 0).err().unwrap();
        assert!(err.contains("at least 32"), "{err}");
        assert!(
            !err.contains(&short),
            "the secret must not appear in errors"
        );
        assert!(JwtKeys::new(&format!("{S1}\n"), "k", "i", "a", 60, 0).is_err());
        assert!(JwtKeys::new(S1, "k1", "i", "a", 60, 0)
            .unwrap()
            .with_verification_key("k0", &short)
            .is_err());
    }

    #[test]
    fn key_is_the_secret_text_as_written() {
        // A hex-looking secret is not decoded: a configured copy of a generated secret signs
        // and verifies like the file it came from.
        let dir = tempfile::tempdir().unwrap();
        let (generated, _) = JwtKeys::load_secret("", dir.path()).unwrap();
        let from_file = JwtKeys::new(generated.expose(), "k1", "i", "a", 60, 0).unwrap();
        let token = from_file.issue(AdminId::generate(), OrgId::generate(), 0);
        let text = std::fs::read_to_string(dir.path().join("jwt_secret")).unwrap();
        let configured = JwtKeys::new(&text, "k1", "i", "a", 60, 0).unwrap();
        assert!(configured.verify(&token).is_ok());
        let raw = jsonwebtoken::EncodingKey::from_secret(text.as_bytes());
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let claims = configured.verify(&token).unwrap();
        let by_hand = encode(&header, &*claims, &raw).unwrap();
        assert!(from_file.verify(&by_hand).is_ok());
    }

    #[test]
    fn generated_secrets_are_64_lowercase_hex_and_distinct() {
        let (a, b) = (generate_secret(), generate_secret());
        for s in [&a, &b] {
            assert_eq!(s.expose().len(), 64);
            assert!(s
                .expose()
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            check_secret("generated", s.expose()).unwrap();
        }
        assert_ne!(a, b);
    }

    #[test]
    fn file_written_by_an_earlier_version_still_loads() {
        // Earlier versions wrote the same 64 hex characters (without a newline); an edited
        // file may have gained one.
        let dir = tempfile::tempdir().unwrap();
        let old = "ab".repeat(32);
        std::fs::write(dir.path().join("jwt_secret"), format!("{old}\n")).unwrap();
        let (s, src) = JwtKeys::load_secret("", dir.path()).unwrap();
        assert_eq!((s.expose(), src), (old.as_str(), SecretSource::DataDir));
        std::fs::write(dir.path().join("jwt_secret"), "short").unwrap();
        assert!(JwtKeys::load_secret("", dir.path()).is_err());
    }

    #[test]
    fn generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (s1, src1) = JwtKeys::load_secret("", dir.path()).unwrap();
        let (s2, src2) = JwtKeys::load_secret("", dir.path()).unwrap();
        assert_eq!(
            (s1.expose().len(), src1, src2),
            (64, SecretSource::Generated, SecretSource::DataDir)
        );
        assert_eq!(s1, s2);
        let text = std::fs::read_to_string(dir.path().join("jwt_secret")).unwrap();
        assert_eq!(
            text,
            s1.expose(),
            "the file holds exactly the secret's text"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt_secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
