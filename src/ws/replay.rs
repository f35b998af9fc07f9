//! The replays of one connection: recorded events of a channel, re-sent with their original
//! spacing divided by `speed`, beside (never instead of) the live subscriptions.
//!
//! The session asks [`Replays::next_wake`] when a replay next has something to do and, at
//! that instant, calls [`Replays::step`], which reads at most one page of the log per replay
//! and returns the frames that are due. A replay holds one page in memory, never its range.
//!
//! Pacing: the event that comes `Δ` ms after the replay's first event (by their stored `ts`)
//! is due `Δ / speed` after the replay started. Every due time is computed from the start
//! instant, not from the previous send, so waits that overshoot (a loaded machine, a slow
//! socket) never accumulate into drift.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::time::Instant;

use crate::{
    event::{Channel, Event},
    filter::Filter,
    log::{EventLog, LogError, ReadRange},
    protocol::{self, ErrorCode, OutFrame, ReplayMessage, ServerMessage, Wire},
};

/// Replays one connection may run at once: each holds a page of events.
pub const MAX_REPLAYS: usize = 8;
/// Frames one step may produce, so that live events and client messages are served
/// between the steps of a replay at `speed: 0`.
const FRAMES_PER_STEP: usize = 512;
/// The fastest pace accepted; above it every gap rounds to nothing anyway.
const MAX_SPEED: f64 = 1_000_000.0;

/// A validated `replay` request.
#[derive(Debug)]
pub struct ReplayRequest {
    pub id: Option<Value>,
    pub channel: Channel,
    filter: Filter,
    /// Events with `after < seq <= until`...
    after: u64,
    until: u64,
    /// ...and `from_ts_ms <= ts_ms <= to_ts_ms`.
    from_ts_ms: u64,
    to_ts_ms: u64,
    /// 0 = as fast as the socket takes them.
    speed: f64,
}

/// A request the connection must refuse, with the protocol error to answer.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl ReplayRequest {
    /// Checks the request's values; `head` bounds a replay without `to`, so that it ends.
    /// Permission is the caller's to check (it knows the principal).
    pub fn parse(m: ReplayMessage, head: u64) -> Result<Self, Refusal> {
        let channel = Channel::parse(&m.channel)
            .map_err(|e| refuse(ErrorCode::InvalidChannel, e.to_string()))?;
        let filter = crate::filter::Filter::parse(m.filters.as_ref().unwrap_or(&Value::Null))
            .map_err(|e| refuse(ErrorCode::InvalidMessage, e.to_string()))?;
        let speed = m.speed.unwrap_or(1.0);
        if !(0.0..=MAX_SPEED).contains(&speed) {
            return Err(refuse(
                ErrorCode::InvalidMessage,
                format!(
                    "speed must be 0 (as fast as possible) or a positive number up to {MAX_SPEED}"
                ),
            ));
        }
        let after = m.from.map_or(0, |c| c.0);
        let until = m.to.map_or(head, |c| c.0);
        let from_ts_ms = parse_ts("from_ts", m.from_ts.as_deref())?.unwrap_or(0);
        let to_ts_ms = parse_ts("to_ts", m.to_ts.as_deref())?.unwrap_or(u64::MAX);
        Ok(Self {
            id: m.id,
            channel,
            filter,
            after,
            until,
            from_ts_ms,
            to_ts_ms,
            speed,
        })
    }
}

fn parse_ts(name: &str, text: Option<&str>) -> Result<Option<u64>, Refusal> {
    let Some(text) = text else { return Ok(None) };
    let time = humantime::parse_rfc3339(text).map_err(|e| {
        refuse(
            ErrorCode::InvalidMessage,
            format!("{name} `{text}` is not an RFC 3339 UTC time: {e}"),
        )
    })?;
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Some(ms))
}

struct Replay {
    request: ReplayRequest,
    /// The `replay` field of its event messages: the request id, or `true`.
    tag: Value,
    /// Every event with seq <= cursor was read (sent, queued in `page`, or filtered out).
    cursor: u64,
    page: VecDeque<Arc<Event>>,
    /// Nothing is left to read: when `page` is empty, the replay ends.
    exhausted: bool,
    started: Instant,
    /// `ts_ms` of the first event sent: the origin of the schedule.
    origin_ts_ms: Option<u64>,
    sent: u64,
}

impl Replay {
    /// When the next thing this replay does is due.
    fn wake(&self) -> Instant {
        match self.page.front() {
            Some(event) => self.due(event),
            // A page to read, or the end to announce.
            None => self.started,
        }
    }

    fn due(&self, event: &Event) -> Instant {
        match self.origin_ts_ms {
            Some(origin) if self.request.speed > 0.0 => {
                let gap_ms = event.ts_ms.saturating_sub(origin) as f64 / self.request.speed;
                self.started + Duration::from_secs_f64(gap_ms / 1000.0)
            }
            _ => self.started,
        }
    }

    async fn read_page(&mut self, log: &dyn EventLog, page_size: usize) -> Result<(), LogError> {
        let channels = [self.request.channel.clone()];
        let range = ReadRange {
            channels: &channels,
            after: self.cursor,
            until: self.request.until,
            limit: page_size,
        };
        let events = log.read(range).await?;
        self.exhausted = events.len() < page_size;
        for event in events {
            self.cursor = event.seq;
            if event.ts_ms > self.request.to_ts_ms {
                // `ts` never decreases with seq: nothing after this is in the window.
                self.exhausted = true;
                break;
            }
            if event.ts_ms >= self.request.from_ts_ms && self.request.filter.matches(&event) {
                self.page.push_back(event);
            }
        }
        Ok(())
    }

    fn end_frame(&self, wire: Wire, stopped: bool) -> OutFrame {
        protocol::control_frame(
            &ServerMessage::ReplayEnd {
                id: self.request.id.as_ref(),
                channel: self.request.channel.as_str(),
                count: self.sent,
                stopped,
            },
            wire,
        )
    }
}

#[derive(Default)]
pub struct Replays {
    active: Vec<Replay>,
}

impl Replays {
    /// Starts a replay now; refused when the connection runs too many, or one with the
    /// same id (the id is how `replay_stop` names it).
    pub fn start(&mut self, request: ReplayRequest, now: Instant) -> Result<(), Refusal> {
        if self.active.len() >= MAX_REPLAYS {
            return Err(refuse(
                ErrorCode::SubscriptionLimit,
                format!("a connection runs at most {MAX_REPLAYS} replays at once"),
            ));
        }
        if request.id.is_some() && self.active.iter().any(|r| r.request.id == request.id) {
            return Err(refuse(
                ErrorCode::InvalidMessage,
                "a replay with this id is already running",
            ));
        }
        let tag = request.id.clone().unwrap_or(Value::Bool(true));
        let exhausted = request.after >= request.until;
        self.active.push(Replay {
            cursor: request.after,
            request,
            tag,
            page: VecDeque::new(),
            exhausted,
            started: now,
            origin_ts_ms: None,
            sent: 0,
        });
        Ok(())
    }

    /// The earliest instant at which a replay has something to do; `None` when none runs.
    pub fn next_wake(&self) -> Option<Instant> {
        self.active.iter().map(Replay::wake).min()
    }

    /// Stops the replay with this id: its `replay_end` (`stopped: true`), if it was running.
    pub fn stop(&mut self, id: &Value, wire: Wire) -> Option<OutFrame> {
        let index = self
            .active
            .iter()
            .position(|r| r.request.id.as_ref() == Some(id))?;
        Some(self.active.remove(index).end_frame(wire, true))
    }

    /// Stops every replay of `channel` (the client unsubscribed from it).
    pub fn stop_channel(&mut self, channel: &str, wire: Wire) -> Vec<OutFrame> {
        let mut ended = Vec::new();
        self.active.retain(|r| {
            let keep = r.request.channel.as_str() != channel;
            if !keep {
                ended.push(r.end_frame(wire, true));
            }
            keep
        });
        ended
    }

    /// Advances every replay that is due at `now`: reads at most one page each, and
    /// returns the frames due (events, then `replay_end` for those that finished).
    pub async fn step(
        &mut self,
        log: &dyn EventLog,
        page_size: usize,
        wire: Wire,
        now: Instant,
    ) -> Result<Vec<OutFrame>, LogError> {
        let mut frames = Vec::new();
        let mut index = 0;
        while index < self.active.len() {
            let replay = &mut self.active[index];
            if replay.wake() > now {
                index += 1;
                continue;
            }
            if replay.page.is_empty() && !replay.exhausted {
                replay.read_page(log, page_size).await?;
            }
            while frames.len() < FRAMES_PER_STEP {
                let Some(event) = replay.page.front() else {
                    break;
                };
                if replay.due(event) > now {
                    break;
                }
                let event = replay.page.pop_front().expect("front exists");
                replay.origin_ts_ms.get_or_insert(event.ts_ms);
                let channel_index = event
                    .channel_index(replay.request.channel.as_str())
                    .expect("read from this channel");
                frames.push(protocol::replay_event_frame(
                    &event,
                    channel_index,
                    wire,
                    &replay.tag,
                ));
                replay.sent += 1;
            }
            if replay.page.is_empty() && replay.exhausted {
                frames.push(replay.end_frame(wire, false));
                self.active.remove(index);
            } else {
                index += 1;
            }
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, value::RawValue};

    use super::*;
    use crate::protocol::Cursor;

    fn event(seq: u64, ts_ms: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            seq.to_string(),
            vec![Channel::parse("arena/a").unwrap()],
            "t".into(),
            ts_ms,
            RawValue::from_string("{}".into()).unwrap(),
        ))
    }

    fn request(speed: f64) -> ReplayRequest {
        let m = ReplayMessage {
            id: Some(json!("r1")),
            channel: "arena/a".into(),
            from: Some(Cursor(0)),
            to: Some(Cursor(100)),
            from_ts: None,
            to_ts: None,
            speed: Some(speed),
            filters: None,
        };
        ReplayRequest::parse(m, 100).unwrap()
    }

    #[test]
    fn due_times_come_from_the_start_not_the_previous_send() {
        let started = Instant::now();
        let mut replays = Replays::default();
        replays.start(request(2.0), started).unwrap();
        let replay = &mut replays.active[0];
        replay.origin_ts_ms = Some(1_000);
        // 10 000 ms after the origin at speed 2: 5 s after the start, however late the
        // previous events went out.
        assert_eq!(
            replay.due(&event(2, 11_000)),
            started + Duration::from_secs(5)
        );
        replay.request.speed = 0.0;
        assert_eq!(replay.due(&event(2, 11_000)), started);
    }

    #[test]
    fn bad_requests_are_refused_with_the_right_code() {
        let base = || ReplayMessage {
            id: None,
            channel: "arena/a".into(),
            from: None,
            to: None,
            from_ts: None,
            to_ts: None,
            speed: None,
            filters: None,
        };
        let cases: [(ReplayMessage, ErrorCode); 4] = [
            (
                ReplayMessage {
                    channel: "nope".into(),
                    ..base()
                },
                ErrorCode::InvalidChannel,
            ),
            (
                ReplayMessage {
                    speed: Some(-1.0),
                    ..base()
                },
                ErrorCode::InvalidMessage,
            ),
            (
                ReplayMessage {
                    from_ts: Some("yesterday".into()),
                    ..base()
                },
                ErrorCode::InvalidMessage,
            ),
            (
                ReplayMessage {
                    filters: Some(json!(3)),
                    ..base()
                },
                ErrorCode::InvalidMessage,
            ),
        ];
        for (m, code) in cases {
            assert_eq!(ReplayRequest::parse(m, 10).unwrap_err().code, code);
        }
        let r = ReplayRequest::parse(
            ReplayMessage {
                from_ts: Some("2023-11-14T22:13:20.123Z".into()),
                ..base()
            },
            10,
        )
        .unwrap();
        assert_eq!(
            (r.from_ts_ms, r.until, r.speed),
            (1_700_000_000_123, 10, 1.0)
        );
    }

    #[test]
    fn duplicate_ids_and_too_many_replays_are_refused() {
        let now = Instant::now();
        let mut replays = Replays::default();
        replays.start(request(1.0), now).unwrap();
        assert_eq!(
            replays.start(request(1.0), now).unwrap_err().code,
            ErrorCode::InvalidMessage
        );
        for _ in 1..MAX_REPLAYS {
            let mut r = request(1.0);
            r.id = None;
            replays.start(r, now).unwrap();
        }
        let mut r = request(1.0);
        r.id = None;
        assert_eq!(
            replays.start(r, now).unwrap_err().code,
            ErrorCode::SubscriptionLimit
        );
        assert!(replays.stop(&json!("r1"), Wire::default()).is_some());
        assert!(replays.stop(&json!("r1"), Wire::default()).is_none());
        assert_eq!(
            replays.stop_channel("arena/a", Wire::default()).len(),
            MAX_REPLAYS - 1
        );
        assert!(replays.next_wake().is_none());
    }
}
