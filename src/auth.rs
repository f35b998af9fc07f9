//! Who is asking and what they may do. Every entry point (WebSocket upgrade, HTTP route)
//! turns its credentials into a `Principal` here and asks it before acting.
//!
//! Mode `none` (the demo default) grants everything to an anonymous principal. Mode `jwt`
//! verifies a signed token (HS256 with a shared secret, RS256 or ES256 with a PEM public
//! key): `sub` names the user, `exp` bounds its life, `permissions` lists
//! `subscribe:<pattern>`, `publish:<pattern>` and `admin`.
//!
//! Architecture invariant: this is the only module that touches jsonwebtoken.

use std::{collections::HashMap, sync::Arc};

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::{
    config::{AuthConfig, AuthMode},
    error::ApiError,
    event::{Channel, ChannelPattern},
};

/// Tokens longer than this are refused before any decoding: no honest token is that big,
/// and verifying costs more than reading.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Permissions read from one token; the rest are ignored, so that checking a channel stays
/// cheap whatever a token carries.
const MAX_PERMISSIONS: usize = 256;

#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    grants: Grants,
    /// When the credentials stop being valid, in ms since the Unix epoch (the token's `exp`
    /// plus the leeway); `None` for credentials that never expire.
    expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone)]
enum Grants {
    Everything,
    Token(Arc<Permissions>),
}

/// What a token's `permissions` claim grants.
#[derive(Debug, Default)]
struct Permissions {
    admin: bool,
    /// `metrics`: may scrape `/metrics` when it is not public.
    metrics: bool,
    subscribe: Vec<ChannelPattern>,
    publish: Vec<ChannelPattern>,
}

impl Permissions {
    /// Unknown entries and patterns that are not globs grant nothing; they do not make the
    /// token invalid, so that issuers can add permissions for newer servers.
    fn parse(list: &[String]) -> Self {
        let mut permissions = Self::default();
        for entry in list.iter().take(MAX_PERMISSIONS) {
            if entry == "admin" {
                permissions.admin = true;
                continue;
            }
            if entry == "metrics" {
                permissions.metrics = true;
                continue;
            }
            let (target, pattern) = match entry.split_once(':') {
                Some(("subscribe", p)) => (&mut permissions.subscribe, p),
                Some(("publish", p)) => (&mut permissions.publish, p),
                _ => continue,
            };
            if let Ok(pattern) = ChannelPattern::new(pattern) {
                target.push(pattern);
            }
        }
        permissions
    }
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            user: "anonymous".into(),
            grants: Grants::Everything,
            expires_at_ms: None,
        }
    }

    /// True in mode `none`: nobody is identified, so per-user limits cannot tell clients
    /// apart.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.grants, Grants::Everything)
    }

    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }

    pub fn can_subscribe(&self, channel: &Channel) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(p) => p.admin || p.subscribe.iter().any(|g| g.matches(channel.as_str())),
        }
    }

    pub fn can_publish(&self, channel: &Channel) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(p) => p.admin || p.publish.iter().any(|g| g.matches(channel.as_str())),
        }
    }

    /// May scrape `/metrics` (when `auth.metrics_public` is off).
    pub fn can_read_metrics(&self) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(p) => p.admin || p.metrics,
        }
    }

    pub fn is_admin(&self) -> bool {
        match &self.grants {
            Grants::Everything => true,
            Grants::Token(p) => p.admin,
        }
    }
}

/// Why the auth configuration cannot be used; each names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("config key `auth.rs256_public_key_pem`: cannot read {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("config key `auth.rs256_public_key_pem`: not an RSA or EC public key in PEM form")]
    BadKey,
}

/// The claims streamlog reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    permissions: Vec<String>,
}

pub struct Authenticator {
    /// `None` in mode `none`.
    jwt: Option<JwtVerifier>,
}

struct JwtVerifier {
    /// The key and the validation rules of each accepted algorithm. A token names its
    /// algorithm, but only the algorithms of the configured keys are ever tried, so a token
    /// cannot choose to be checked against a public key used as an HMAC secret.
    keys: HashMap<Algorithm, (DecodingKey, Validation)>,
    leeway_secs: u64,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        if config.mode == AuthMode::None {
            return Ok(Self { jwt: None });
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = config.leeway_secs;
            v.set_required_spec_claims(&["exp", "sub"]);
            v.validate_nbf = true;
            match &config.audience {
                Some(audience) => {
                    v.set_audience(&[audience]);
                    v.required_spec_claims.insert("aud".into());
                }
                // Without a configured audience there is nothing to compare `aud` with.
                None => v.validate_aud = false,
            }
            if let Some(issuer) = &config.issuer {
                v.set_issuer(&[issuer]);
                v.required_spec_claims.insert("iss".into());
            }
            v
        };
        let mut keys = HashMap::new();
        if !config.hs256_secret.is_empty() {
            let key = DecodingKey::from_secret(config.hs256_secret.as_bytes());
            keys.insert(Algorithm::HS256, (key, validation(Algorithm::HS256)));
        }
        if let Some(source) = &config.rs256_public_key_pem {
            let pem = read_pem(source)?;
            let (alg, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, key)
            } else {
                return Err(AuthSetupError::BadKey);
            };
            keys.insert(alg, (key, validation(alg)));
        }
        Ok(Self {
            jwt: Some(JwtVerifier {
                keys,
                leeway_secs: config.leeway_secs,
            }),
        })
    }

    /// Resolves the credentials of a request (a bearer token, when one was sent).
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, ApiError> {
        let Some(jwt) = &self.jwt else {
            return Ok(Principal::anonymous());
        };
        let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::unauthorized(
                "a token is required: `?token=`, `Authorization: Bearer`, or the \
                 `bearer.<token>` WebSocket subprotocol",
            )
        })?;
        jwt.verify(token)
    }
}

impl JwtVerifier {
    fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::unauthorized(format!(
                "tokens are limited to {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::unauthorized("the token is not a JWT"))?;
        let (key, validation) = self.keys.get(&header.alg).ok_or_else(|| {
            ApiError::unauthorized(format!(
                "tokens signed with {:?} are not accepted here",
                header.alg
            ))
        })?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| ApiError::unauthorized(refusal(e.kind())))?
            .claims;
        if claims.sub.is_empty() {
            return Err(ApiError::unauthorized("the token's `sub` is empty"));
        }
        let expires_at_ms = claims
            .exp
            .saturating_add(self.leeway_secs)
            .saturating_mul(1000);
        Ok(Principal {
            user: claims.sub,
            grants: Grants::Token(Arc::new(Permissions::parse(&claims.permissions))),
            expires_at_ms: Some(expires_at_ms),
        })
    }
}

/// What the client is told about a refused token: enough to fix it, nothing about keys.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match the key".into(),
        ErrorKind::InvalidClaimFormat(claim) => format!("the token's `{claim}` is malformed"),
        ErrorKind::Json(_) => "the token's claims are malformed (sub: string, exp: integer, \
                               permissions: list of strings)"
            .into(),
        _ => "the token is malformed".into(),
    }
}

/// The key is given inline (`-----BEGIN ...`) or as the path of a PEM file.
fn read_pem(source: &str) -> Result<Vec<u8>, AuthSetupError> {
    if source.trim_start().starts_with("-----BEGIN") {
        return Ok(source.as_bytes().to_vec());
    }
    std::fs::read(source).map_err(|source_error| AuthSetupError::ReadKey {
        path: source.to_string(),
        source: source_error,
    })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;

    fn config(secret: &str) -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret: secret.into(),
            leeway_secs: 0,
            ..AuthConfig::default()
        }
    }

    fn now() -> u64 {
        crate::event::now_ms() / 1000
    }

    fn mint(secret: &str, claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn channel(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    #[test]
    fn permissions_are_globs_over_channels() {
        let auth = Authenticator::new(&config("s")).unwrap();
        let token = mint(
            "s",
            json!({"sub": "u1", "exp": now() + 60, "permissions": [
                "subscribe:agent/*", "subscribe:university/univ_1", "publish:arena/a?",
                "subscribe:[", "read:everything", "admin:no"
            ]}),
        );
        let p = auth.authenticate(Some(&token)).unwrap();
        assert_eq!(p.user, "u1");
        assert!(!p.is_anonymous() && !p.is_admin());
        let cases = [
            ("agent/x", true, false),
            ("agent/a-1.b", true, false),
            ("university/univ_1", true, false),
            ("university/univ_10", false, false),
            ("arena/a1", false, true),
            ("arena/a10", false, false),
            ("system/broadcast", false, false),
        ];
        for (name, subscribe, publish) in cases {
            assert_eq!(p.can_subscribe(&channel(name)), subscribe, "{name}");
            assert_eq!(p.can_publish(&channel(name)), publish, "{name}");
        }
        let admin = mint(
            "s",
            json!({"sub": "root", "exp": now() + 60, "permissions": ["admin"]}),
        );
        let p = auth.authenticate(Some(&admin)).unwrap();
        assert!(p.is_admin() && p.can_publish(&channel("x/y")) && p.can_subscribe(&channel("x/y")));
        let star = mint(
            "s",
            json!({"sub": "r", "exp": now() + 60, "permissions": ["subscribe:*"]}),
        );
        let p = auth.authenticate(Some(&star)).unwrap();
        assert!(p.can_subscribe(&channel("a/b")) && !p.can_publish(&channel("a/b")));
        assert_eq!(p.expires_at_ms(), Some((now() + 60) * 1000));
    }

    #[test]
    fn refusals_say_why() {
        let auth = Authenticator::new(&config("s")).unwrap();
        let cases = [
            (None, "required"),
            (Some("".to_string()), "required"),
            (Some("abc".to_string()), "not a JWT"),
            (
                Some(mint("other", json!({"sub": "u", "exp": now() + 60}))),
                "signature",
            ),
            (
                Some(mint("s", json!({"sub": "u", "exp": now() - 5}))),
                "expired",
            ),
            (Some(mint("s", json!({"exp": now() + 60}))), "sub"),
            (Some(mint("s", json!({"sub": "u"}))), "exp"),
            (
                Some(mint("s", json!({"sub": "", "exp": now() + 60}))),
                "empty",
            ),
            (
                Some(mint(
                    "s",
                    json!({"sub": "u", "exp": now() + 60, "permissions": "admin"}),
                )),
                "malformed",
            ),
            (Some("x".repeat(MAX_TOKEN_BYTES + 1)), "limited"),
        ];
        for (token, words) in cases {
            let e = auth.authenticate(token.as_deref()).unwrap_err();
            assert_eq!(e.status.as_u16(), 401, "{token:?}");
            assert!(e.message.contains(words), "{token:?}: {}", e.message);
        }
    }

    #[test]
    fn audience_and_issuer_are_required_when_configured() {
        let mut c = config("s");
        c.audience = Some("streamlog".into());
        c.issuer = Some("https://id.example".into());
        let auth = Authenticator::new(&c).unwrap();
        let exp = now() + 60;
        let good = json!({"sub": "u", "exp": exp, "aud": "streamlog", "iss": "https://id.example"});
        auth.authenticate(Some(&mint("s", good))).unwrap();
        let cases = [
            (
                json!({"sub": "u", "exp": exp, "iss": "https://id.example"}),
                "aud",
            ),
            (
                json!({"sub": "u", "exp": exp, "aud": "other", "iss": "https://id.example"}),
                "audience",
            ),
            (json!({"sub": "u", "exp": exp, "aud": "streamlog"}), "iss"),
            (
                json!({"sub": "u", "exp": exp, "aud": "streamlog", "iss": "https://evil"}),
                "issuer",
            ),
        ];
        for (claims, words) in cases {
            let e = auth
                .authenticate(Some(&mint("s", claims.clone())))
                .unwrap_err();
            assert!(e.message.contains(words), "{claims}: {}", e.message);
        }
        // Without a configured audience, a token's `aud` is not held against it.
        let auth = Authenticator::new(&config("s")).unwrap();
        auth.authenticate(Some(&mint(
            "s",
            json!({"sub": "u", "exp": exp, "aud": "x"}),
        )))
        .unwrap();
    }

    #[test]
    fn leeway_accepts_a_recently_expired_token() {
        let mut c = config("s");
        c.leeway_secs = 30;
        let auth = Authenticator::new(&c).unwrap();
        let token = mint("s", json!({"sub": "u", "exp": now() - 5}));
        let p = auth.authenticate(Some(&token)).unwrap();
        assert_eq!(p.expires_at_ms(), Some((now() - 5 + 30) * 1000));
    }

    fn key_config(key: &rcgen::KeyPair) -> AuthConfig {
        AuthConfig {
            rs256_public_key_pem: Some(key.public_key_pem()),
            ..config("")
        }
    }

    #[test]
    fn rs256_and_es256_public_keys_verify() {
        for (alg, signing) in [
            (Algorithm::RS256, &rcgen::PKCS_RSA_SHA256),
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        ] {
            let pair = rcgen::KeyPair::generate_for(signing).unwrap();
            let auth = Authenticator::new(&key_config(&pair)).unwrap();
            let private = pair.serialize_pem();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
                _ => EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
            };
            let claims = json!({"sub": "u", "exp": now() + 60, "permissions": ["subscribe:*"]});
            let token = encode(&Header::new(alg), &claims, &key).unwrap();
            let p = auth.authenticate(Some(&token)).unwrap();
            assert!(p.can_subscribe(&channel("a/b")), "{alg:?}");
            // Signed by another key of the same kind: refused.
            let other = rcgen::KeyPair::generate_for(signing).unwrap();
            let auth = Authenticator::new(&key_config(&other)).unwrap();
            let e = auth.authenticate(Some(&token)).unwrap_err();
            assert!(e.message.contains("signature"), "{alg:?}: {}", e.message);
        }
    }

    #[test]
    fn an_hs256_token_is_not_checked_against_a_public_key() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let auth = Authenticator::new(&key_config(&pair)).unwrap();
        // The classic forgery: an HMAC keyed with the (public) key text.
        let forged = mint(
            &pair.public_key_pem(),
            json!({"sub": "u", "exp": now() + 60}),
        );
        let e = auth.authenticate(Some(&forged)).unwrap_err();
        assert!(e.message.contains("HS256"), "{}", e.message);
    }

    #[test]
    fn bad_keys_name_the_config_key() {
        let mut c = config("");
        c.rs256_public_key_pem =
            Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into());
        let e = Authenticator::new(&c).err().unwrap().to_string();
        assert!(e.contains("auth.rs256_public_key_pem"), "{e}");
        c.rs256_public_key_pem = Some("/nonexistent/key.pem".into());
        let e = Authenticator::new(&c).err().unwrap().to_string();
        assert!(
            e.contains("auth.rs256_public_key_pem") && e.contains("/nonexistent"),
            "{e}"
        );
    }

    #[test]
    fn mode_none_is_anonymous_and_allows_everything() {
        let auth = Authenticator::new(&AuthConfig::default()).unwrap();
        let p = auth.authenticate(None).unwrap();
        assert!(p.is_anonymous() && p.is_admin() && p.expires_at_ms().is_none());
    }
}
