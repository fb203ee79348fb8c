//! The end-to-end suite on a real broker: Tansu (an Apache Kafka-compatible broker) with its
//! sqlite storage engine, the producer and the host as processes. Scenarios: the full chain for
//! many users (topics created by the services themselves), a malformed record dead-lettered with
//! its reason, a handler swapped while records flow, `kill -9` of the host mid-stream, and the
//! broker killed and restarted under the running services.

use crate::demo::{self, System};
use anyhow::{Context, bail, ensure};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The Tansu release the suite is measured against.
pub const TANSU_VERSION: &str = "0.6.0";

/// Where installed tools are cached, outside the clone: `XTASK_CACHE_DIR` or `~/.cache/kafka-wasm`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("XTASK_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/kafka-wasm"),
    }
}

/// The tansu binary, installed into the cache with `cargo install` when missing (about 15
/// minutes on a 2-core machine, once).
pub fn ensure_tansu() -> anyhow::Result<PathBuf> {
    let root = cache_dir().join("tools");
    let bin = root.join("bin/tansu");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("xtask: installing tansu {TANSU_VERSION} into {} (once; about 15 minutes)", root.display());
    crate::run(
        crate::cargo()
            .args(["install", "--locked", "tansu", "--version", TANSU_VERSION, "--features", "libsql", "--root"])
            .arg(&root),
    )?;
    Ok(bin)
}

/// A Tansu broker process with sqlite storage in a directory of its own.
#[derive(Debug)]
pub struct Tansu {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts a broker on a free port, storing in `dir`.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        std::fs::create_dir_all(dir)?;
        let mut tansu = Self { bin: bin.to_path_buf(), dir: dir.to_path_buf(), port, child: None };
        tansu.restart()?;
        Ok(tansu)
    }

    /// The bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process (again), on the same port and storage.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log"))?;
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start tansu")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "tansu did not listen on {} within 30 s (see {})",
                self.port,
                self.dir.join("tansu.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Kills the broker with SIGKILL.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

fn chains(
    system: &System,
    events: &mpsc::Receiver<serde_json::Value>,
    ids: &BTreeSet<String>,
    stop: &AtomicBool,
    what: &str,
) -> anyhow::Result<demo::Summary> {
    let summary = demo::watch(system, events, ids, true, Instant::now() + Duration::from_secs(180), stop)?
        .context("interrupted")?;
    eprintln!("e2e: {what}: {} users, every chain complete", ids.len());
    Ok(summary)
}

/// Creates users, retrying while the producer answers 503 (the broker is coming back).
fn create_users_patiently(system: &System, n: usize) -> anyhow::Result<BTreeSet<String>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match system.create_users(n) {
            Ok(ids) => return Ok(ids),
            Err(e) if Instant::now() < deadline => {
                eprintln!("e2e: producer not accepting yet ({e:#}); retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs every scenario; fails naming the first guarantee that broke.
pub fn run(stop: &AtomicBool) -> anyhow::Result<()> {
    let bin = ensure_tansu()?;
    let dir = crate::target_dir().join("e2e-tansu");
    let _ = std::fs::remove_dir_all(&dir);
    let mut broker = Tansu::start(&bin, &dir)?;
    eprintln!("e2e: tansu {TANSU_VERSION} at {} (sqlite storage in {})", broker.address(), dir.display());
    let mut system = System::start(Some(broker.address()), stop)?;
    let events = demo::events(&system);

    // 1. The full chain for many users; the services created every topic themselves.
    let ids = system.create_users(100)?;
    chains(&system, &events, &ids, stop, "full chain")?;

    // 2. A malformed record produced straight to the topic ends in the dead-letter topic.
    let producer: ThreadedProducer<DefaultProducerContext> =
        ClientConfig::new().set("bootstrap.servers", broker.address()).create()?;
    producer.send(BaseRecord::to("new-user-created").key("malformed-1").payload("{not json")).map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(10))?;
    let reason = find_dead_letter(&broker.address(), "new-user-created.dlq", "malformed-1")?;
    ensure!(reason.contains("malformed value"), "dead-letter reason {reason:?} does not say the value is malformed");
    eprintln!("e2e: malformed record dead-lettered: {reason}");

    // 3. A handler swapped while records flow: a different component for the same topic.
    let handlers = system.dir.join("handlers");
    let original = std::fs::read(handlers.join("issued-token.wasm"))?;
    let mut swapped = original.clone();
    // A custom section (id 0) at the end: the same code, a different digest.
    swapped.extend_from_slice(&[0, 6, 5, b's', b'w', b'a', b'p', b'1']);
    let flowing = system.create_users(50)?;
    std::fs::write(handlers.join(".issued-token.wasm.tmp"), &swapped)?;
    std::fs::rename(handlers.join(".issued-token.wasm.tmp"), handlers.join("issued-token.wasm"))?;
    let more = system.create_users(50)?;
    chains(&system, &events, &flowing.union(&more).cloned().collect(), stop, "handler swapped while records flow")?;
    // The chains can finish before the reload scan picks the new file up: give it a few seconds.
    let expected = format!("sha256:{}", hex_digest(&swapped));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value = ureq::get(&format!("{}/handlers", system.host_url)).call()?.into_json()?;
        let digest = status
            .as_array()
            .and_then(|a| a.iter().find(|h| h["topic"] == "issued-token"))
            .map(|h| h["sha256"].clone());
        if digest == Some(serde_json::Value::String(expected.clone())) {
            break;
        }
        ensure!(Instant::now() < deadline, "issued-token still runs {digest:?} 10 s on, not the swapped-in {expected}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("e2e: /handlers shows the swapped-in issued-token handler ({expected})");

    // 4. kill -9 of the host mid-stream (after some of the users' chains completed), then a
    //    restart: every chain still completes; records handled again are counted.
    let ids = system.create_users(100)?;
    let before = verified_among(&events, &ids, 20, Duration::from_secs(60))?;
    system.kill_host()?;
    eprintln!("e2e: host killed with SIGKILL after {} of {} chains; restarting it", before.len(), ids.len());
    system.start_host()?;
    system.wait_host_ready(stop)?;
    let rest: BTreeSet<String> = ids.difference(&before).cloned().collect();
    let summary = chains(&system, &events, &rest, stop, "kill -9 of the host")?;
    eprintln!(
        "e2e: kill -9: all {} chains complete; {} repeats (token-verified again after the restart)",
        ids.len(),
        summary.verified_events - summary.verified + summary.other_verified_events
    );

    // 5. The broker killed and restarted under the running services.
    broker.kill9()?;
    eprintln!("e2e: broker killed with SIGKILL; restarting it in 3 s");
    std::thread::sleep(Duration::from_secs(3));
    broker.restart()?;
    let ids = create_users_patiently(&system, 50)?;
    chains(&system, &events, &ids, stop, "broker killed and restarted")?;
    drop(system);
    Ok(())
}

/// Reads events until `n` of `ids` have their token verified; returns those users.
fn verified_among(
    events: &mpsc::Receiver<serde_json::Value>,
    ids: &BTreeSet<String>,
    n: usize,
    within: Duration,
) -> anyhow::Result<BTreeSet<String>> {
    let deadline = Instant::now() + within;
    let mut verified = BTreeSet::new();
    while verified.len() < n {
        ensure!(Instant::now() < deadline, "only {} of {n} chains completed within {within:?}", verified.len());
        if let Ok(event) = events.recv_timeout(Duration::from_millis(200))
            && event["kind"] == "token-verified"
            && let Some(user) = event["payload"]["user_id"].as_str()
            && ids.contains(user)
        {
            verified.insert(user.to_string());
        }
    }
    Ok(verified)
}

/// The hex SHA-256 of `bytes`, as `/handlers` shows it after `sha256:`.
pub fn hex_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `topic` from the beginning until the record with `key`; returns its `x-dlq-reason`.
fn find_dead_letter(brokers: &str, topic: &str, key: &str) -> anyhow::Result<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200))
            && m.key() == Some(key.as_bytes())
        {
            let headers = m.headers().context("a dead letter without headers")?;
            for h in headers.iter() {
                if h.key == "x-dlq-reason" {
                    return Ok(String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                }
            }
            bail!("the dead letter has no x-dlq-reason header");
        }
    }
    bail!("no record with key {key:?} reached {topic} within 60 s")
}
