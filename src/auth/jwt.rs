//! JWT issue and verification (HS256 by default). Verification pins the algorithm, requires
//! exp/nbf/iss/aud, checks them with a small leeway, and picks the key by `kid`.

use crate::domain::{AdminId, OrgId};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Shortest signing secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

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

impl JwtKeys {
    /// Builds keys from a secret of at least [`MIN_SECRET_BYTES`].
    pub fn new(
        secret: &[u8],
        kid: &str,
        issuer: &str,
        audience: &str,
        ttl_seconds: u64,
        leeway_seconds: u64,
    ) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "JWT secret is {} bytes; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            ));
        }
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
        })
    }

    /// Uses the configured secret, else the one in the data dir, else generates a 256-bit
    /// secret there with mode 0600.
    pub fn load_secret(
        configured: &str,
        data_dir: &Path,
    ) -> Result<(Vec<u8>, SecretSource), String> {
        if !configured.is_empty() {
            return Ok((configured.as_bytes().to_vec(), SecretSource::Configured));
        }
        let path = data_dir.join("jwt_secret");
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let secret =
                hex::decode(text.trim()).map_err(|_| format!("{} is not hex", path.display()))?;
            return Ok((secret, SecretSource::DataDir));
        }
        let mut secret = vec![0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, secret.as_mut_slice());
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        write_private(&path, hex::encode(&secret).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok((secret, SecretSource::Generated))
    }

    /// Also accepts tokens signed with `secret` under `kid` (a key being rotated out). New
    /// tokens are always signed with the current key.
    pub fn with_verification_key(mut self, kid: &str, secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "verification key {kid:?} is {} bytes; at least {MIN_SECRET_BYTES} are required",
                secret.len()
            ));
        }
        if kid == self.kid {
            return Err(format!(
                "verification key id {kid:?} is the signing key's id"
            ));
        }
        self.decoding
            .insert(kid.to_owned(), DecodingKey::from_secret(secret));
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
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
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

    fn keys(ttl: u64) -> JwtKeys {
        JwtKeys::new(&[7u8; 32], "k1", "iss", "aud", ttl, 0).unwrap()
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
        let other = JwtKeys::new(&[8u8; 32], "k1", "iss", "aud", 60, 0).unwrap();
        assert_eq!(other.verify(&t).unwrap_err(), VerifyError::BadSignature);
        let wrong_aud = JwtKeys::new(&[7u8; 32], "k1", "iss", "other", 60, 0).unwrap();
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
        let old = JwtKeys::new(&[1u8; 32], "k1", "iss", "aud", 60, 0).unwrap();
        let token = old.issue(AdminId::generate(), OrgId::generate(), 0);
        let rotated = JwtKeys::new(&[2u8; 32], "k2", "iss", "aud", 60, 0)
            .unwrap()
            .with_verification_key("k1", &[1u8; 32])
            .unwrap();
        assert!(rotated.verify(&token).is_ok());
        let fresh = rotated.issue(AdminId::generate(), OrgId::generate(), 0);
        assert!(rotated.verify(&fresh).is_ok());
        assert_eq!(old.verify(&fresh).unwrap_err(), VerifyError::UnknownKey);
        let dropped = JwtKeys::new(&[2u8; 32], "k2", "iss", "aud", 60, 0).unwrap();
        assert_eq!(dropped.verify(&token).unwrap_err(), VerifyError::UnknownKey);
        assert!(JwtKeys::new(&[2u8; 32], "k2", "iss", "aud", 60, 0)
            .unwrap()
            .with_verification_key("k2", &[3u8; 32])
            .is_err());
    }

    #[test]
    fn short_secret_refused() {
        assert!(JwtKeys::new(&[1u8; 31], "k", "i", "a", 60, 0).is_err());
    }

    #[test]
    fn generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (s1, src1) = JwtKeys::load_secret("", dir.path()).unwrap();
        let (s2, src2) = JwtKeys::load_secret("", dir.path()).unwrap();
        assert_eq!(
            (s1.len(), src1, src2),
            (32, SecretSource::Generated, SecretSource::DataDir)
        );
        assert_eq!(s1, s2);
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
