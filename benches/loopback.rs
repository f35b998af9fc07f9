//! The floor under fan-out: the same frames, at the same rate and in the same pulses, written
//! to the same number of loopback TCP sockets by tasks that do nothing else — no WebSocket,
//! no log, no routing. Whatever latency this shows on a machine, no server built on one
//! socket per subscriber can beat there; `benches/fanout.rs` and `streamlog bench --scenario
//! fanout` are read against it.
//!
//! Writers (one task per socket, each fed by its own bounded queue as in streamlog) and
//! readers run on two runtimes of two threads each, like a server and its clients on one
//! machine. A publisher thread makes one 200-byte frame per 1/rate seconds and hands the
//! frames out in pulses, at most one per `pulse` milliseconds.
//!
//! `cargo bench --bench loopback` — `STREAMLOG_BENCH_SECS` (5), `STREAMLOG_BENCH_RATE`
//! frames/s (1000), `STREAMLOG_BENCH_SUBSCRIBERS` (comma list, "100,1000"),
//! `STREAMLOG_BENCH_PULSE_MS` (2).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

const FRAME: usize = 200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Outcome {
    latencies_us: Vec<u64>,
    received: u64,
}

/// Reads frames until the writer closes, noting each one's latency once `measure_from` has
/// passed.
async fn reader(mut socket: TcpStream, origin: Instant, measure_from: Duration) -> Outcome {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut outcome = Outcome {
        latencies_us: Vec::new(),
        received: 0,
    };
    loop {
        let Ok(n @ 1..) = socket.read(&mut buffer[filled..]).await else {
            return outcome;
        };
        filled += n;
        let now = origin.elapsed();
        let whole = filled / FRAME * FRAME;
        for frame in buffer[..whole].chunks_exact(FRAME) {
            let sent = Duration::from_micros(u64::from_le_bytes(frame[..8].try_into().unwrap()));
            if sent >= measure_from {
                outcome.received += 1;
                outcome
                    .latencies_us
                    .push(now.saturating_sub(sent).as_micros() as u64);
            }
        }
        buffer.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

/// Writes every pulse it is handed, and whatever queued up behind it, in one write.
async fn writer(
    mut socket: TcpStream,
    mut pulses: mpsc::Receiver<Arc<Vec<u8>>>,
    writes: Arc<AtomicU64>,
) {
    let mut out = Vec::new();
    while let Some(pulse) = pulses.recv().await {
        out.extend_from_slice(&pulse);
        while let Ok(more) = pulses.try_recv() {
            out.extend_from_slice(&more);
        }
        if socket.write_all(&out).await.is_err() {
            return;
        }
        writes.fetch_add(1, Ordering::Relaxed);
        out.clear();
    }
}

fn run(subscribers: usize, rate: u64, secs: u64, pulse: Duration) {
    let writers = runtime("writer");
    let readers = runtime("reader");
    let listener = writers
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let address = listener.local_addr().unwrap();
    let origin = Instant::now();
    let warmup = Duration::from_secs(1);

    let writes = Arc::new(AtomicU64::new(0));
    let mut queues = Vec::with_capacity(subscribers);
    let mut outcomes = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let client = readers
            .block_on(TcpStream::connect(address))
            .expect("connect");
        let (server, _) = writers.block_on(listener.accept()).expect("accept");
        server.set_nodelay(true).unwrap();
        let (tx, rx) = mpsc::channel(1024);
        writers.spawn(writer(server, rx, writes.clone()));
        queues.push(tx);
        outcomes.push(readers.spawn(reader(client, origin, warmup)));
    }

    let cpu_before = cpu_time();
    let interval = Duration::from_secs(1) / rate as u32;
    let publish_until = warmup + Duration::from_secs(secs);
    let mut held = Vec::new();
    let mut last_pulse = Duration::ZERO;
    let mut next = origin.elapsed();
    while next < publish_until {
        std::thread::sleep(next.saturating_sub(origin.elapsed()));
        let mut frame = [0u8; FRAME];
        frame[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_le_bytes());
        held.extend_from_slice(&frame);
        let now = origin.elapsed();
        if now >= last_pulse + pulse {
            let bytes = Arc::new(std::mem::take(&mut held));
            for queue in &queues {
                let _ = queue.try_send(bytes.clone());
            }
            last_pulse = now;
        }
        next += interval;
    }
    let cpu = cpu_time() - cpu_before;
    let writes = writes.load(Ordering::Relaxed);
    // The writers finish what they hold and close; the readers end at the close.
    drop(queues);
    let mut latencies = Vec::new();
    let mut received = 0;
    for outcome in outcomes {
        let outcome = readers.block_on(outcome).expect("reader");
        received += outcome.received;
        latencies.extend(outcome.latencies_us);
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let expected = rate * secs * subscribers as u64;
    println!(
        "{subscribers} sockets, {rate} frames/s, pulses ≤ every {} ms: {} socket writes/s, \
         {received} of ~{expected} frames, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
         {:.0}% of a core (both sides)",
        pulse.as_millis(),
        writes / (secs + 1),
        at(0.5),
        at(0.99),
        at(1.0),
        cpu.as_secs_f64() * 100.0 / (secs + 1) as f64,
    );
    writers.shutdown_background();
    readers.shutdown_background();
}

fn main() {
    let secs = env_or("STREAMLOG_BENCH_SECS", 5);
    let rate = env_or("STREAMLOG_BENCH_RATE", 1000);
    let pulse = Duration::from_millis(env_or("STREAMLOG_BENCH_PULSE_MS", 2));
    let subscribers: String = env_or("STREAMLOG_BENCH_SUBSCRIBERS", "100,1000".to_string());
    for count in subscribers.split(',').filter_map(|s| s.trim().parse().ok()) {
        run(count, rate, secs, pulse);
    }
}
