//! Throughput of the whole consumer pipeline against librdkafka's mock cluster (in this
//! process), side by side in one run: the host with the trivial wasm handler, the host with the
//! same logic compiled natively (through the same pipeline), and a bare rdkafka consumer loop
//! that only stores offsets. Each configuration consumes the same records with a fresh group;
//! the clock runs in the steady state, from the record that makes 10% of all handled to the one
//! that makes 90%, so group joins, the first fetches and the tail are excluded.
//! Prints records/s per run, the spread, the medians and the best of the rounds, the ratios
//! (the median of each round's ratio: the figures reported), and `bench-result` lines that
//! `cargo xtask bench` reads into docs/BENCHMARKS.md.

use common::env::Env;
use host::config::{HandlerSettings, HostConfig};
use host::handlers::{ActiveHandler, HandlerCode, NativeHandler};
use host::record::{Outcome, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TOPIC: &str = "bench";
// 10,000 records per partition stay within what the mock cluster keeps per partition (~5 MiB).
const PARTITIONS: i32 = 16;
const RECORDS: u64 = 160_000;
/// The steady state that is timed: from the record that makes this share of all handled to the
/// one that makes `TO` (the ramp-up of the first fetches and the tail, when the last partitions
/// finish on fewer cores than there are, are left out).
const FROM: f64 = 0.1;
const TO: f64 = 0.9;
const VALUE_BYTES: usize = 256;
/// The orders the three configurations (0 wasm, 1 native, 2 bare loop) run in, one per round
/// in turn: all six, so each goes first, second and last, and follows each other one, equally
/// often.
const ORDERS: [[usize; 3]; 6] = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]];
// A multiple of the six orders.
const ROUNDS: usize = 12;

/// The trivial fixture's logic, natively. Keep identical to `test-fixtures/trivial`.
fn trivial(record: &Record) -> Outcome {
    let sum =
        record.key.iter().chain(record.value.iter()).flatten().fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)));
    if record.value.as_ref().is_none_or(Vec::is_empty) {
        return Outcome::Reject(format!("empty value (checksum {sum})"));
    }
    Outcome::Ok
}

fn fill(mock: &MockCluster<'static, DefaultProducerContext>) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let value = vec![b'x'; VALUE_BYTES];
    for i in 0..RECORDS {
        let key = format!("user-{i}");
        producer.send(BaseRecord::to(TOPIC).key(&key).payload(&value)).expect("send");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn config(mock: &MockCluster<'static, DefaultProducerContext>, dir: &std::path::Path, group: &str) -> HostConfig {
    HostConfig::from_env(&Env::from_pairs([
        ("KAFKA_BROKERS", mock.bootstrap_servers()),
        ("KAFKA_GROUP_ID", group.to_string()),
        ("HANDLERS_DIR", dir.display().to_string()),
        ("PORT", "0".to_string()),
        // The mock cluster holds a fetch for the whole wait when no record arrives: keep it
        // short, as for the bare loop below, so a drained queue refills at once.
        ("KAFKA_OPT_FETCH_WAIT_MAX_MS", "20".to_string()),
    ]))
    .expect("config")
}

/// One configuration's run, in the steady state.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// Records/s.
    rate: f64,
    /// CPU time of the whole process (every thread: the host's, librdkafka's, the mock
    /// cluster's) per record, in µs.
    cpu_us: f64,
    /// Mean records per batch call (0 when none).
    batch: f64,
}

/// Runs the host until every record is handled.
async fn run_host(
    mock: &MockCluster<'static, DefaultProducerContext>,
    wasm: Option<&std::path::Path>,
    group: &str,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(wasm) = wasm {
        std::fs::copy(wasm, dir.path().join(format!("{TOPIC}.wasm"))).expect("copy");
    }
    let host = host::service::start(config(mock, dir.path(), group)).await.expect("start");
    if wasm.is_none() {
        host.registry.install(
            TOPIC,
            ActiveHandler {
                code: HandlerCode::Native(NativeHandler::new("trivial", trivial)),
                settings: HandlerSettings::default(),
                file: "native".into(),
                loaded_at: String::new(),
            },
        );
    }
    // Timed on a plain thread, so the measurement does not compete with the host's tasks.
    let counters = host.registry.counters(TOPIC);
    let run = tokio::task::spawn_blocking(move || steady_state(|| counters.outcomes[0].load(Ordering::Relaxed)))
        .await
        .expect("monitor");
    let batch = mean_batch(host.addr).await;
    host.shutdown().await;
    Run { batch, ..run }
}

/// Records per batch (wasm: per `handle-packed` call; native: per batch the pipeline gathered),
/// from the host's `/metrics` (0 when there was none).
async fn mean_batch(addr: std::net::SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("metrics").text().await.expect("body");
    let sum = |prefix: &str| -> f64 {
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let batches = sum("host_batches_total{") - sum("host_batches_total{topic=\"bench\",kind=\"failed\"}");
    if batches == 0.0 { 0.0 } else { sum("host_batched_records_total{") / batches }
}

/// Records/s and CPU per record in the steady state (`FROM` to `TO` of all records handled),
/// `handled` read every millisecond; returns once all are handled.
fn steady_state(handled: impl Fn() -> u64) -> Run {
    let mark = |share: f64| {
        let target = (RECORDS as f64 * share) as u64;
        loop {
            let n = handled();
            if n >= target {
                return (n, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let (from, started) = mark(FROM);
    let cpu = cpu_time::ProcessTime::now();
    perf_control("enable");
    let (to, ended) = mark(TO);
    perf_control("disable");
    let cpu = cpu.elapsed();
    mark(1.0);
    let records = (to - from) as f64;
    Run { rate: records / (ended - started).as_secs_f64(), cpu_us: cpu.as_secs_f64() * 1e6 / records, batch: 0.0 }
}

/// With `PERF_CTL=<control fifo>,<ack fifo>` (a `perf record -D -1 --control
/// fifo:<control>,<ack>` around the benchmark), turns perf's sampling on or off, so a profile
/// covers the timed steady states only.
fn perf_control(command: &str) {
    use std::io::{Read, Write};
    let Ok(fifos) = std::env::var("PERF_CTL") else { return };
    let Some((control, ack)) = fifos.split_once(',') else { return };
    let sent = std::fs::OpenOptions::new().write(true).open(control).and_then(|mut f| writeln!(f, "{command}"));
    let mut reply = [0u8; 5];
    if sent.is_err() || std::fs::File::open(ack).and_then(|mut f| f.read_exact(&mut reply)).is_err() {
        eprintln!("PERF_CTL: cannot {command} perf through {fifos}");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) { (v[mid - 1] + v[mid]) / 2.0 } else { v[mid] }
}

#[tokio::main]
async fn main() {
    let fixtures = xtask::build_test_fixtures().expect("fixtures");
    let wasm = fixtures.join("trivial.wasm");
    let mock = MockCluster::new(1).expect("mock");
    for t in [TOPIC.to_string(), format!("{TOPIC}.retry"), format!("{TOPIC}.dlq")] {
        mock.create_topic(&t, PARTITIONS, 1).expect("topic");
    }
    fill(&mock);
    println!("{RECORDS} records of {VALUE_BYTES} bytes on {PARTITIONS} partitions; {ROUNDS} rounds, fresh group each");
    // `PIPELINE_ONLY=wasm|native|bare` runs one configuration (to profile it); the others
    // then read 1 record/s and their ratios mean nothing.
    let only = std::env::var("PIPELINE_ONLY").ok();
    let runs = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let skipped = Run { rate: 1.0, cpu_us: 1.0, batch: 0.0 };
    let (mut wasm_runs, mut native_runs, mut bare_runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Every order in turn, so that no configuration always follows the same one (or always
        // runs while that one is still tearing down).
        let (mut w, mut n, mut b) = (skipped, skipped, skipped);
        for config in ORDERS[round % ORDERS.len()] {
            tokio::time::sleep(Duration::from_millis(300)).await;
            match config {
                0 if runs("wasm") => w = run_host(&mock, Some(&wasm), &format!("wasm-{round}")).await,
                1 if runs("native") => n = run_host(&mock, None, &format!("native-{round}")).await,
                2 if runs("bare") => {
                    let (m, group) = (mock.bootstrap_servers(), format!("bare-{round}"));
                    b = tokio::task::spawn_blocking(move || MockRef(m).run(&group)).await.expect("bare");
                }
                _ => {}
            }
        }
        println!(
            "round {round}: wasm {:>9.0}/s {:.2} µs CPU (batches of {:.1})   native {:>9.0}/s {:.2} µs CPU   bare loop {:>9.0}/s {:.2} µs CPU",
            w.rate, w.cpu_us, w.batch, n.rate, n.cpu_us, b.rate, b.cpu_us
        );
        wasm_runs.push(w);
        native_runs.push(n);
        bare_runs.push(b);
    }
    let rates = |runs: &[Run]| runs.iter().map(|r| r.rate).collect::<Vec<_>>();
    let (wasm_rates, native_rates, bare_rates) = (rates(&wasm_runs), rates(&native_runs), rates(&bare_runs));
    let cpu = |runs: &[Run]| median(runs.iter().map(|r| r.cpu_us).collect());
    let (cw, cn, cb) = (cpu(&wasm_runs), cpu(&native_runs), cpu(&bare_runs));
    println!("CPU per record (medians): wasm {cw:.3} µs   native {cn:.3} µs   bare loop {cb:.3} µs");
    println!("bench-result pipeline.wasm_cpu_us {cw:.3}");
    println!("bench-result pipeline.native_cpu_us {cn:.3}");
    println!("bench-result pipeline.bare_cpu_us {cb:.3}");
    let spread = |v: &[f64]| v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let show = |v: &[f64], digits: usize| {
        let (lo, hi) = spread(v);
        format!("{lo:.digits$}-{hi:.digits$}")
    };
    println!(
        "spread:  wasm {}   native {}   bare loop {}",
        show(&wasm_rates, 0),
        show(&native_rates, 0),
        show(&bare_rates, 0)
    );
    let (mw, mn, mb) = (median(wasm_rates.clone()), median(native_rates.clone()), median(bare_rates.clone()));
    println!("median:  wasm {mw:.0}/s   native {mn:.0}/s   bare loop {mb:.0}/s");
    let best = |v: &[f64]| v.iter().copied().fold(0.0f64, f64::max);
    let (w, n, b) = (best(&wasm_rates), best(&native_rates), best(&bare_rates));
    println!("best:    wasm {w:.0}/s   native {n:.0}/s   bare loop {b:.0}/s");
    // The ratios reported: per round, the three configurations ran one after the other on the
    // same machine state; the median of those paired ratios is the least sensitive to a round
    // that the machine slowed down (it often slows one run by a third or more).
    let paired = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<_>>();
    let (wn, wb, nb) =
        (paired(&wasm_rates, &native_rates), paired(&wasm_rates, &bare_rates), paired(&native_rates, &bare_rates));
    for (what, ratios, key) in [
        ("wasm / native through the same pipeline", &wn, "wasm_native"),
        ("wasm / bare rdkafka loop", &wb, "wasm_bare"),
        ("native / bare rdkafka loop", &nb, "native_bare"),
    ] {
        let (lo, hi) = spread(ratios);
        let m = median(ratios.clone());
        println!("{what}: {m:.2} (median of the rounds' ratios, which range {})", show(ratios, 2));
        println!("bench-result pipeline.{key} {m:.3}");
        println!("bench-result pipeline.{key}_min {lo:.3}");
        println!("bench-result pipeline.{key}_max {hi:.3}");
    }
    println!("bench-result pipeline.wasm {mw:.0}");
    println!("bench-result pipeline.native {mn:.0}");
    println!("bench-result pipeline.bare {mb:.0}");
    drop(mock);
}

/// A bare consumer loop (poll, store the offset, nothing else) against the cluster at this
/// bootstrap address; run on a blocking thread since the mock cluster handle is not `Send`.
struct MockRef(String);

impl MockRef {
    fn run(&self, group: &str) -> Run {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.0)
            .set("group.id", group)
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20")
            .create()
            .expect("consumer");
        consumer.subscribe(&[TOPIC]).expect("subscribe");
        // Timed like the host: a plain thread reads the count every millisecond.
        let seen = std::sync::Arc::new(AtomicU64::new(0));
        let monitor = std::thread::spawn({
            let seen = seen.clone();
            move || steady_state(|| seen.load(Ordering::Relaxed))
        });
        while seen.load(Ordering::Relaxed) < RECORDS {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                std::hint::black_box(m.payload());
                consumer.store_offset(m.topic(), m.partition(), m.offset()).expect("store");
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        monitor.join().expect("monitor")
    }
}
