//! A checking subscriber of one channel, shared by the fan-out, catch-up and idle
//! scenarios: it opens `/ws/{channel}` in a frame mode, and counts what it receives — every
//! seq once and in order, or it says how often it was not — resuming with `since` when the
//! server closes it as lagging (4000).

use std::{net::IpAddr, time::Instant};

use futures_util::FutureExt;
use tokio::sync::watch;

use super::{
    frames::{self, Control, Decoder, Message, Mode},
    latency::{us_at, Latencies},
    net::{ConnectError, Incoming, Target, Ws},
};

/// Close codes the tool acts on (CONTRACT §5).
pub const TRY_AGAIN_LATER: u16 = 1013;
pub const LAGGING: u16 = 4000;

/// How long opening a subscription may take before the tool gives up on it.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the server refused the connection with 1013: {0}")]
    LimitReached(String),
    #[error("{0}")]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Other(String),
}

/// An open connection subscribed to one channel.
pub struct Opened {
    pub ws: Ws,
    pub decoder: Decoder,
    pub hello: Control,
}

/// Connects to `/ws/{channel}` (with `since`/`epoch` when resuming) and reads up to the
/// `subscribed` answer.
pub async fn open(
    target: &Target,
    channel: &str,
    mode: Mode,
    resume: Option<(u64, &str)>,
    source: Option<IpAddr>,
) -> Result<Opened, OpenError> {
    let mut extra = Vec::new();
    if let Some((since, epoch)) = resume {
        extra.push(("since", since.to_string()));
        extra.push(("epoch", epoch.to_string()));
    }
    let path = target.ws_path(&format!("/ws/{channel}"), mode, &extra);
    let opening = async {
        let mut ws = target.ws_connect(&path, source).await?;
        let mut decoder = Decoder::lean(mode);
        let mut hello = None;
        loop {
            let (payload, binary) = match ws.next_frame().await {
                Incoming::Data(payload, binary) => (payload, binary),
                Incoming::Closed(TRY_AGAIN_LATER, reason) => {
                    return Err(OpenError::LimitReached(reason))
                }
                Incoming::Closed(code, reason) => {
                    return Err(OpenError::Other(format!(
                        "closed with {code} before `subscribed`: {reason}"
                    )))
                }
            };
            let messages = decoder
                .decode(&payload, binary)
                .map_err(|e| OpenError::Other(e.to_string()))?;
            for message in messages {
                match message {
                    Message::Control(c) if c.kind == "connection_established" => hello = Some(c),
                    Message::Control(c) if c.kind == "subscribed" => {
                        let hello = hello.ok_or_else(|| {
                            OpenError::Other("`subscribed` before `connection_established`".into())
                        })?;
                        return Ok(Opened { ws, decoder, hello });
                    }
                    Message::Control(c) if c.kind == "error" => {
                        return Err(OpenError::Other(format!(
                            "{}: {}",
                            c.code.unwrap_or_default(),
                            c.message.unwrap_or_default()
                        )))
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, opening)
        .await
        .unwrap_or_else(|_| Err(OpenError::Other("no `subscribed` within 30 s".into())))
}

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Events of the channel received in strictly increasing seq order.
    pub received: u64,
    /// Events whose seq was not above the previous one: duplicates or out of order.
    pub disorder: u64,
    /// Sum of the seqs received in order, to compare with what was published.
    pub seq_sum: u64,
    pub resumes: u64,
    pub caught_up: bool,
    /// Append-to-receipt times, from the `sent_us` the publisher put in each event.
    pub latencies: Latencies,
    pub first_event_at: Option<Instant>,
    pub last_event_at: Option<Instant>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
    /// The last seq received in order.
    last_seq: Option<u64>,
}

impl Tally {
    /// Counts one event of the channel, received at `now`: in order, or as disorder.
    fn take(&mut self, seq: u64, sent_us: Option<u64>, now: (Instant, u64), latency: bool) {
        self.first_event_at.get_or_insert(now.0);
        self.last_event_at = Some(now.0);
        if self.last_seq.is_some_and(|last| seq <= last) {
            self.disorder += 1;
            return;
        }
        self.last_seq = Some(seq);
        self.received += 1;
        self.seq_sum = self.seq_sum.wrapping_add(seq);
        if let (true, Some(sent)) = (latency, sent_us) {
            self.latencies.record_us(now.1.saturating_sub(sent));
        }
    }
}

/// When a subscriber is done: `expected` events (unknown, `u64::MAX`, while publishing
/// goes on), plus `caught_up` when asked; or as soon as `stop` turns true.
pub struct Goal {
    pub expected: watch::Receiver<u64>,
    pub stop: watch::Receiver<bool>,
    pub needs_caught_up: bool,
    pub measure_latency: bool,
}

impl Goal {
    /// `expected` is the subscriber's copy of the shared count, refreshed when it changes:
    /// the goal is checked after every frame, and the shared one sits behind a lock.
    fn reached(&self, tally: &Tally, expected: u64) -> bool {
        tally.received >= expected && (!self.needs_caught_up || tally.caught_up)
    }
}

/// Counts the events of one data frame.
#[allow(clippy::too_many_arguments)]
fn take_frame(
    tally: &mut Tally,
    decoder: &mut Decoder,
    payload: &[u8],
    binary: bool,
    channel: &str,
    mode: Mode,
    goal: &Goal,
    now: (Instant, u64),
) -> Result<(), String> {
    if let Some(events) = (!binary && !mode.delta)
        .then(|| frames::scan_json_events(payload, channel))
        .flatten()
    {
        for (seq, sent_us) in events {
            tally.take(seq, sent_us, now, goal.measure_latency);
        }
        return Ok(());
    }
    let messages = decoder
        .decode(payload, binary)
        .map_err(|e| format!("undecodable frame: {e}"))?;
    for message in messages {
        match message {
            Message::Event(event) if event.channel == channel => {
                tally.take(event.seq, event.sent_us, now, goal.measure_latency);
            }
            Message::Control(c) if c.kind == "caught_up" => tally.caught_up = true,
            _ => {}
        }
    }
    Ok(())
}

/// Reads the channel until the goal is reached, resuming after a 4000 close.
pub async fn follow(
    target: &Target,
    channel: &str,
    mode: Mode,
    opened: Opened,
    mut goal: Goal,
) -> Tally {
    let mut tally = Tally::default();
    let Opened {
        mut ws,
        mut decoder,
        hello,
    } = opened;
    let epoch = hello.epoch.unwrap_or_default();
    // Everything after the head at connect time is this subscriber's to receive.
    let head = hello.head.unwrap_or(0);
    let mut expected = *goal.expected.borrow_and_update();
    'reading: while !goal.reached(&tally, expected) && !*goal.stop.borrow() {
        let first = tokio::select! {
            frame = ws.next_frame() => frame,
            _ = goal.expected.changed() => {
                expected = *goal.expected.borrow_and_update();
                continue;
            }
            _ = goal.stop.changed() => continue,
        };
        // What else the socket already holds is read without another `select!`: at a
        // million deliveries a second on the server's machine, the tool's per-frame cost is
        // part of what it measures.
        let mut frame = Some(first);
        while let Some(incoming) = frame.take() {
            match incoming {
                Incoming::Data(payload, binary) => {
                    let at = ws.read_at();
                    let now = (at, us_at(at));
                    if let Err(e) = take_frame(
                        &mut tally,
                        &mut decoder,
                        &payload,
                        binary,
                        channel,
                        mode,
                        &goal,
                        now,
                    ) {
                        tally.error = Some(e);
                        break 'reading;
                    }
                }
                Incoming::Closed(LAGGING, _) => {
                    let cursor = tally.last_seq.unwrap_or(head);
                    match open(target, channel, mode, Some((cursor, &epoch)), None).await {
                        Ok(again) => {
                            tally.resumes += 1;
                            ws = again.ws;
                            decoder = again.decoder;
                        }
                        Err(e) => {
                            tally.error = Some(format!("resume after 4000 failed: {e}"));
                            break 'reading;
                        }
                    }
                    continue 'reading;
                }
                Incoming::Closed(code, reason) => {
                    tally.error = Some(format!("closed with {code}: {reason}"));
                    break 'reading;
                }
            }
            if goal.reached(&tally, expected) {
                break;
            }
            frame = ws.next_frame().now_or_never();
        }
    }
    tally
}
