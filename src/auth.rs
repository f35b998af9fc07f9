//! Who is asking and what they may do. Every entry point (WebSocket upgrade, HTTP route)
//! turns its credentials into a `Principal` here and asks it before acting.
//!
//! Mode `none` (the demo default) grants everything to an anonymous principal.

use crate::{config::AuthConfig, config::AuthMode, error::ApiError, event::Channel};

#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    grants: Grants,
}

#[derive(Debug, Clone)]
enum Grants {
    Everything,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self {
            user: "anonymous".into(),
            grants: Grants::Everything,
        }
    }

    pub fn can_subscribe(&self, _channel: &Channel) -> bool {
        match self.grants {
            Grants::Everything => true,
        }
    }

    pub fn can_publish(&self, _channel: &Channel) -> bool {
        match self.grants {
            Grants::Everything => true,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self.grants {
            Grants::Everything => true,
        }
    }
}

pub struct Authenticator {
    mode: AuthMode,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        match config.mode {
            AuthMode::None => Ok(Self {
                mode: AuthMode::None,
            }),
            AuthMode::Jwt => Err(
                "auth.mode = \"jwt\" is not available in this version of streamlog; use \"none\""
                    .into(),
            ),
        }
    }

    /// Resolves the credentials of a request (a bearer token, when one was sent).
    pub fn authenticate(&self, _token: Option<&str>) -> Result<Principal, ApiError> {
        match self.mode {
            AuthMode::None => Ok(Principal::anonymous()),
            AuthMode::Jwt => Err(ApiError::unauthorized(
                "token authentication is not configured",
            )),
        }
    }
}
