//! What the server does to a connection on its own: heartbeats, the end of its token, and
//! its answers to a client over its message rate.

use std::{sync::atomic::Ordering, time::Duration};

use tokio::io::AsyncWrite;

use super::{close, Flow, Session};
use crate::{event::now_ms, protocol::ErrorCode};

impl<W: AsyncWrite + Unpin + Send> Session<W> {
    /// The message is dropped unread: reading it is the cost the limit protects.
    pub(super) async fn on_rate_limited(&mut self, retry_after: Duration) -> Result<(), Flow> {
        let limit = self.rate.per_second();
        let retry_after_ms = retry_after.as_millis().max(1) as u64;
        let message = format!("at most {limit} messages per second; message dropped");
        let details = serde_json::json!({ "limit": limit, "retry_after_ms": retry_after_ms });
        self.send_error(None, ErrorCode::RateLimitExceeded, &message, Some(details))
            .await
    }

    pub(super) async fn on_flooding(&mut self) -> Result<(), Flow> {
        self.app.bans.ban(&self.abuse_key);
        tracing::info!(
            client_id = %self.conn.client_id,
            user = %self.conn.user,
            ban = %self.abuse_key,
            "closing a connection that kept flooding; its client is banned for a while"
        );
        Err(Flow::Close(
            close::POLICY,
            "rate limit exceeded repeatedly".into(),
        ))
    }

    pub(super) async fn on_token_expired(&mut self) -> Result<(), Flow> {
        self.send_error(
            None,
            ErrorCode::Unauthorized,
            "the token has expired; reconnect with a new one",
            None,
        )
        .await?;
        Err(Flow::Close(close::POLICY, "token expired".into()))
    }

    pub(super) async fn on_heartbeat(&mut self, timeout_ms: u64) -> Result<(), Flow> {
        let silent_for = now_ms().saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        if silent_for > timeout_ms {
            return Err(Flow::Close(close::NORMAL, "heartbeat timeout".into()));
        }
        let ping =
            fastwebsockets::Frame::new(true, fastwebsockets::OpCode::Ping, None, Vec::new().into());
        Ok(self.sink.write(ping).await?)
    }
}
