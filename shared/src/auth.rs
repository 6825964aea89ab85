//! Caller identity: JWT verification shared by REST and the socket handshake, and minting of
//! development tokens (`community-chat token`).

use std::{path::Path, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde_json::{Map, Value};

use crate::{
    config::{Config, JwtAlgorithm},
    error::DomainError,
    ids::{Email, OrgId},
};

/// Who is calling: an e-mail inside one org. Every domain operation takes one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    pub org: OrgId,
    pub email: Email,
}

/// Where the verification key comes from; `Generated` is the standalone development secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    Configured,
    Generated(std::path::PathBuf),
}

/// Verifies tokens with the configured key and claim names.
pub struct Authenticator {
    /// Key for the signature check.
    decoding: DecodingKey,
    /// The HS256 secret again, for minting; `None` with public keys (we never hold the private one).
    encoding: Option<EncodingKey>,
    /// Algorithm, required claims, `exp` and `nbf` with their leeway, issuer and audience.
    validation: Validation,
    /// Name of the claim that carries the e-mail (falls back to `sub`).
    email_claim: String,
    /// Name of the claim that carries the org.
    org_claim: String,
    pub key_source: KeySource,
}

impl Authenticator {
    /// Clock skew tolerated on `exp` and `nbf`: a token is accepted up to this many seconds
    /// after it expires and before it becomes valid.
    pub const CLOCK_LEEWAY_SECONDS: u64 = 30;

    /// Builds the verifier from config. With no key at all and `generate_dev_secret`, a random
    /// secret is created (once) in `DATA_DIR/jwt-secret` and reused on the next start.
    pub fn from_config(config: &Config, generate_dev_secret: bool) -> anyhow::Result<Self> {
        let (decoding, encoding, algorithm, key_source) = if let Some(path) = &config.jwt_public_key_file {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("JWT_PUBLIC_KEY_FILE {}: {e}", path.display()))?;
            let algorithm = config.jwt_algorithm.unwrap_or(JwtAlgorithm::Rs256);
            let key = match algorithm {
                JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| {
                anyhow::anyhow!(
                    "JWT_PUBLIC_KEY_FILE {} is not a {algorithm:?} public key: {e}",
                    path.display()
                )
            })?;
            (key, None, algorithm, KeySource::Configured)
        } else {
            let (secret, source) = match &config.jwt_secret {
                Some(secret) => (secret.clone(), KeySource::Configured),
                None => {
                    let path = config.data_dir.join("jwt-secret");
                    let secret = read_or_create_dev_secret(&path, generate_dev_secret)?;
                    (secret, KeySource::Generated(path))
                }
            };
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Some(EncodingKey::from_secret(secret.as_bytes())),
                JwtAlgorithm::Hs256,
                source,
            )
        };
        let mut validation = Validation::new(match algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        });
        validation.set_required_spec_claims(&["exp"]);
        // `nbf` is optional, but honoured when present: a token minted for later is refused
        // until then. Both checks allow the same leeway for clock skew between the issuer and us.
        validation.validate_nbf = true;
        validation.leeway = Self::CLOCK_LEEWAY_SECONDS;
        match &config.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self {
            decoding,
            encoding,
            validation,
            email_claim: config.jwt_email_claim.clone(),
            org_claim: config.jwt_org_claim.clone(),
            key_source,
        })
    }

    /// Verifies `token` and checks that its org equals `org` (the `orgid` header or handshake
    /// `orgId`). 401 for a missing or bad token, 403 for a token of another org.
    pub fn verify(&self, token: &str, org: &OrgId) -> Result<Caller, DomainError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(DomainError::Unauthenticated("missing token".into()));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)
            .map_err(|e| DomainError::Unauthenticated(describe_jwt_error(e.kind())))?;
        let claims = data.claims;
        let token_org = claims
            .get(&self.org_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| DomainError::Unauthenticated(format!("token has no '{}' claim", self.org_claim)))?;
        if token_org != org.as_str() {
            return Err(DomainError::forbidden("token org does not match the orgid given"));
        }
        let email = claims
            .get(&self.email_claim)
            .or_else(|| claims.get("sub"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                DomainError::Unauthenticated(format!("token has no '{}' or 'sub' claim", self.email_claim))
            })?;
        let email = Email::parse(email)
            .map_err(|_| DomainError::Unauthenticated("token e-mail claim is not an e-mail address".into()))?;
        Ok(Caller {
            org: org.clone(),
            email,
        })
    }

    /// Mints an HS256 token for development and tests. Fails with a public key configured.
    pub fn mint(&self, org: &OrgId, email: &Email, ttl: Duration) -> anyhow::Result<String> {
        let key = self.encoding.as_ref().ok_or_else(|| {
            anyhow::anyhow!("minting needs JWT_SECRET (HS256); with a public key, mint with your identity provider")
        })?;
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = Map::new();
        claims.insert(self.email_claim.clone(), Value::from(email.as_str()));
        claims.insert("sub".into(), Value::from(email.as_str()));
        claims.insert(self.org_claim.clone(), Value::from(org.as_str()));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
        if let Some(iss) = self.validation.iss.as_ref().and_then(|s| s.iter().next()) {
            claims.insert("iss".into(), Value::from(iss.as_str()));
        }
        if let Some(aud) = self.validation.aud.as_ref().and_then(|s| s.iter().next()) {
            claims.insert("aud".into(), Value::from(aud.as_str()));
        }
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)?)
    }
}

fn describe_jwt_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::InvalidSignature => "token signature is invalid".into(),
        ErrorKind::InvalidIssuer => "token issuer is not accepted".into(),
        ErrorKind::InvalidAudience => "token audience is not accepted".into(),
        ErrorKind::ImmatureSignature => "token is not valid yet".into(),
        ErrorKind::InvalidAlgorithm => "token algorithm is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no '{claim}' claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("token claim '{claim}' is malformed"),
        _ => "token is malformed".into(),
    }
}

fn read_or_create_dev_secret(path: &Path, create: bool) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(secret) if secret.trim().len() >= 16 => return Ok(secret.trim().to_owned()),
        Ok(_) => anyhow::bail!("{} holds a secret shorter than 16 bytes", path.display()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("cannot read {}: {e}", path.display())
        }
        Err(_) if !create => anyhow::bail!(
            "no JWT key configured: set JWT_SECRET or JWT_PUBLIC_KEY_FILE (or start `serve` once to generate {})",
            path.display()
        ),
        Err(_) => {}
    }
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("DATA_DIR {}: {e}", dir.display()))?;
    }
    write_private_file(path, &secret)?;
    Ok(secret)
}

#[cfg(unix)]
fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))
}
