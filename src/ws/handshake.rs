//! What the upgrade request is checked for before any WebSocket exists: where its token is
//! (query, `Authorization`, `Sec-WebSocket-Protocol`), which subprotocol to answer, whether
//! its browser `Origin` may connect, and whether its client is banned.
//!
//! Browsers cannot set headers on a WebSocket, so a page passes its token as a subprotocol:
//! `new WebSocket(url, ["streamlog", "bearer." + token])`. The server answers with
//! `streamlog` (or, when only the bearer entry was offered, with that entry), as browsers
//! require one of their offered protocols to be echoed.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use axum::{
    http::{header, HeaderMap, HeaderValue},
    response::Response,
};

use crate::{auth::Principal, error::ApiError, http::bearer_token};

/// The subprotocol a browser offers beside its token, and that the server echoes.
pub const SUBPROTOCOL: &str = "streamlog";
/// The prefix of a subprotocol entry that carries a token.
const BEARER_PREFIX: &str = "bearer.";

/// The credentials of an upgrade request and the subprotocol to answer with.
pub struct Credentials<'a> {
    pub token: Option<&'a str>,
    pub subprotocol: Option<HeaderValue>,
}

/// Finds the token: `?token=` first, then `Authorization: Bearer`, then a `bearer.<token>`
/// subprotocol.
pub fn credentials<'a>(
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
) -> Credentials<'a> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let bearer_entry = offered
        .iter()
        .find(|p| p.starts_with(BEARER_PREFIX))
        .copied();
    let subprotocol = if offered.contains(&SUBPROTOCOL) {
        Some(HeaderValue::from_static(SUBPROTOCOL))
    } else {
        bearer_entry.and_then(|entry| HeaderValue::from_str(entry).ok())
    };
    let token = query
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer_token(headers))
        .or_else(|| bearer_entry.map(|entry| &entry[BEARER_PREFIX.len()..]));
    Credentials { token, subprotocol }
}

/// Requests without an `Origin` (not from a browser) pass; an empty list allows every
/// origin.
pub fn check_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() {
        return Ok(());
    }
    let origin = origin.to_str().unwrap_or("");
    if allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    {
        return Ok(());
    }
    let shown: String = origin.chars().take(200).collect();
    Err(ApiError::forbidden(format!(
        "origin `{shown}` may not open WebSockets here (security.allowed_origins)"
    )))
}

/// Who a flood ban applies to: the user, or in mode `none` (where everybody is the same
/// anonymous user) the client's address.
pub fn abuse_key(principal: &Principal, peer: SocketAddr) -> String {
    if principal.is_anonymous() {
        format!("addr:{}", peer.ip())
    } else {
        format!("user:{}", principal.user)
    }
}

/// 429 with `Retry-After`, for a client still banned for `left`; `limit` is the message
/// rate it went over.
pub fn banned(left: Duration, limit: u32) -> Response {
    ApiError::rate_limited_response(
        "refused for flooding: too many messages over the rate limit",
        limit,
        left,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn token_sources_in_order_and_the_echoed_subprotocol() {
        let no_query = HashMap::new();
        let query = HashMap::from([("token".to_string(), "q".to_string())]);
        let browser = headers(&[("sec-websocket-protocol", "streamlog, bearer.a.b.c")]);
        let c = credentials(&no_query, &browser);
        assert_eq!(c.token, Some("a.b.c"));
        assert_eq!(c.subprotocol.unwrap(), "streamlog");
        let only_bearer = headers(&[("sec-websocket-protocol", "bearer.t")]);
        let c = credentials(&no_query, &only_bearer);
        assert_eq!(c.token, Some("t"));
        assert_eq!(c.subprotocol.unwrap(), "bearer.t");
        let split = headers(&[
            ("sec-websocket-protocol", "other"),
            ("sec-websocket-protocol", "bearer.t2"),
            ("authorization", "Bearer h"),
        ]);
        let c = credentials(&no_query, &split);
        assert_eq!(c.token, Some("h"), "the header wins over the subprotocol");
        assert_eq!(c.subprotocol.unwrap(), "bearer.t2");
        let c = credentials(&query, &split);
        assert_eq!(c.token, Some("q"), "the query wins");
        let chat = headers(&[("sec-websocket-protocol", "chat")]);
        let c = credentials(&no_query, &chat);
        assert!(c.token.is_none() && c.subprotocol.is_none());
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(check_origin(&allowed, &HeaderMap::new()).is_ok());
        assert!(check_origin(&[], &headers(&[("origin", "https://evil.example")])).is_ok());
        assert!(check_origin(&allowed, &headers(&[("origin", "https://APP.example.com")])).is_ok());
        let e =
            check_origin(&allowed, &headers(&[("origin", "https://evil.example")])).unwrap_err();
        assert_eq!(e.status.as_u16(), 403);
        assert!(check_origin(&allowed, &headers(&[("origin", "null")])).is_err());
        assert!(check_origin(&allowed, &headers(&[("origin", "http://app.example.com")])).is_err());
    }
}
