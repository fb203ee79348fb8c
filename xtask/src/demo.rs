//! `cargo xtask demo`: the whole system on one machine. Builds the handlers and services, starts
//! an embedded Kafka-protocol broker (librdkafka's mock cluster, in a process of its own) unless
//! `KAFKA_BROKERS` is set, then the producer and the host as separate processes, and shows what
//! flows through them. `--users N --exit` drives N users through the full chain and exits.

use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `demo` was asked to do.
#[derive(Debug)]
pub struct Options {
    /// Create this many users through the producer.
    pub users: Option<usize>,
    /// Exit once every created user's chain completed (or the timeout passed).
    pub exit: bool,
    /// How long `--exit` waits.
    pub timeout: Duration,
    /// The language of the handlers the host runs (`None`: Rust).
    pub language: Option<crate::languages::Language>,
}

impl Options {
    /// Parses `demo`'s arguments.
    pub fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut options = Self { users: None, exit: false, timeout: Duration::from_secs(120), language: None };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--users" => {
                    options.users =
                        Some(args.next().context("--users needs a number")?.parse().context("--users needs a number")?)
                }
                "--exit" => options.exit = true,
                "--timeout" => {
                    options.timeout = Duration::from_secs(
                        args.next().context("--timeout needs seconds")?.parse().context("--timeout needs seconds")?,
                    )
                }
                "--language" => {
                    let name = args.next().context("--language needs rust, python, js or go")?;
                    options.language = match name.as_str() {
                        "rust" => None,
                        other => Some(
                            crate::languages::Language::from_name(other)
                                .with_context(|| format!("--language {other}: expected rust, python, js or go"))?,
                        ),
                    };
                }
                other => bail!(
                    "unknown demo argument {other:?} (expected --users N, --exit, --timeout SECS, --language rust|python|js|go)"
                ),
            }
        }
        if options.exit && options.users.is_none() {
            bail!("--exit needs --users N: it exits once those users' chains complete");
        }
        Ok(options)
    }
}

/// Child processes, stopped when dropped: newest first, each sent SIGTERM and waited for (SIGKILL
/// after a grace period) before the next, so the hosts drain and commit while the producer and
/// the broker still run.
#[derive(Debug)]
struct Children(Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        while let Some((name, mut child)) = self.0.pop() {
            match terminate(&mut child, Duration::from_secs(20)) {
                Ok(status) => eprintln!("demo: {name} stopped ({status})"),
                Err(e) => eprintln!("demo: {name}: {e:#}; killed"),
            }
        }
    }
}

/// A free local port: `preferred` when it is free, else one the system picks.
fn free_port(preferred: u16) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .context("no free local port")?;
    Ok(listener.local_addr()?.port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(format!("{name}.log"));
    std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

fn wait_ready(name: &str, url: &str, log: &Path, stop: &AtomicBool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if ureq::get(url).timeout(Duration::from_secs(2)).call().is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            bail!(
                "{name} not ready at {url} after 90 s; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Records handled per topic and outcome, from the host's metrics.
fn records(host: &str) -> BTreeMap<(String, String), f64> {
    let Some(text) = ureq::get(&format!("{host}/metrics")).call().ok().and_then(|r| r.into_string().ok()) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("host_records_total{topic=\"")?;
            let (topic, rest) = rest.split_once("\",outcome=\"")?;
            let (outcome, value) = rest.split_once("\"} ")?;
            Some(((topic.to_string(), outcome.to_string()), value.trim().parse().ok()?))
        })
        .collect()
}

fn records_line(counts: &BTreeMap<(String, String), f64>) -> String {
    let mut by_topic: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((topic, outcome), n) in counts {
        by_topic.entry(topic).or_default().push(format!("{outcome}={n}"));
    }
    if by_topic.is_empty() {
        return "no records handled yet".into();
    }
    by_topic.iter().map(|(t, o)| format!("{t}: {}", o.join(" "))).collect::<Vec<_>>().join(" | ")
}

/// Reads the host's `/events` stream on a thread, sending each event's JSON.
pub fn follow_events(host: String, tx: mpsc::Sender<serde_json::Value>) {
    std::thread::spawn(move || {
        loop {
            if let Ok(response) = ureq::get(&format!("{host}/events")).call() {
                for line in BufReader::new(response.into_reader()).lines() {
                    let Ok(line) = line else { break };
                    if let Some(data) = line.strip_prefix("data:")
                        && let Ok(event) = serde_json::from_str(data.trim())
                        && tx.send(event).is_err()
                    {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

/// The running system: broker (unless external), producer and host, as child processes.
#[derive(Debug)]
pub struct System {
    children: Children,
    /// The producer's public base URL (`PORT`: health, ping, creating users).
    pub producer_url: String,
    /// The producer's internal base URL (`INTERNAL_PORT`: the whole API), the hosts' `PRODUCER_URL`.
    pub producer_internal_url: String,
    /// The host's base URL.
    pub host_url: String,
    /// Where logs and handlers live.
    pub dir: PathBuf,
    bin: PathBuf,
    brokers: String,
    host_port: u16,
    host_starts: usize,
    producer_port: u16,
    producer_internal_port: u16,
    producer_starts: usize,
}

/// Creates one user through the producer at `producer_url` (10 s timeout); returns its id.
pub fn create_user(producer_url: &str, name: &str, email: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"name": name, "email": email});
    let response: serde_json::Value = ureq::post(&format!("{producer_url}/producer-svc/users"))
        .timeout(Duration::from_secs(10))
        .send_json(body)
        .with_context(|| format!("creating the user {name:?}"))?
        .into_json()?;
    Ok(response["id"].as_str().context("the producer answered without an id")?.to_string())
}

/// The command that starts the producer with its public listener on `port` and its internal one on
/// `internal_port`. In development, without OPERATOR_TOKEN, its operator routes are open.
fn producer_command(bin: &Path, port: u16, internal_port: u16, brokers: &str) -> Command {
    let mut command = Command::new(bin.join("producer"));
    command
        .env("APP_ENV", "development")
        .env("PORT", port.to_string())
        .env("INTERNAL_PORT", internal_port.to_string())
        .env("KAFKA_BROKERS", brokers)
        .stdout(Stdio::null());
    command
}

/// Sends SIGKILL and reaps the process (which may have exited already).
fn kill(child: &mut Child) -> anyhow::Result<()> {
    let _ = child.kill();
    child.wait().with_context(|| format!("waiting for process {} after SIGKILL", child.id()))?;
    Ok(())
}

/// Sends SIGTERM and waits up to `within` for the exit (then SIGKILL, and an error).
fn terminate(child: &mut Child, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().context("cannot run kill")?;
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} did not exit within {within:?} of SIGTERM", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The consumer group of the system's hosts.
pub const HOST_GROUP: &str = "wasm-host-demo";

/// The seed's two topics, each with its handler.
pub const HANDLER_TOPICS: [&str; 2] = ["new-user-created", "issued-token"];

/// The topic the system's hosts send every handler event to (`EVENTS_TOPIC`): the durable record
/// of what each handler did, which the fault suite reads.
pub const EVENTS_TOPIC: &str = "handler-events";

/// How to start a [`System`].
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// An external Kafka, or `None` for the embedded mock broker.
    pub brokers: Option<String>,
    /// Build and run the services in release (for measurements) rather than debug.
    pub release: bool,
    /// The directory under the target directory for logs and handlers.
    pub dir_name: &'static str,
    /// The language of the two handlers (`None`: Rust).
    pub language: Option<crate::languages::Language>,
    /// Also run the ordering probe's topic (`crate::probe`): the `hostile` fixture handles
    /// `sequence`.
    pub probe: bool,
}

impl System {
    /// Builds everything and starts the processes (debug builds, in `target/demo`); `brokers` is
    /// an external Kafka, or `None` for the embedded mock broker.
    pub fn start(brokers: Option<String>, stop: &AtomicBool) -> anyhow::Result<Self> {
        Self::launch(Launch { brokers, dir_name: "demo", ..Launch::default() }, stop)
    }

    /// Builds everything and starts the processes as `launch` says.
    pub fn launch(launch: Launch, stop: &AtomicBool) -> anyhow::Result<Self> {
        let Launch { brokers, release, dir_name, language, probe } = launch;
        let root = crate::repo_root();
        eprintln!("demo: building the handlers and services");
        let built = crate::build_handlers()?;
        let handlers = match language {
            Some(language) => language.output_dir(),
            None => built,
        };
        let mut build = crate::cargo();
        build.current_dir(&root).args(["build", "--quiet", "-p", "host", "-p", "producer", "-p", "mock-broker"]);
        if release {
            build.arg("--release");
        }
        crate::run(&mut build)?;
        let bin = crate::target_dir().join(if release { "release" } else { "debug" });
        let dir = crate::target_dir().join(dir_name);
        let handlers_dir = dir.join("handlers");
        std::fs::create_dir_all(&handlers_dir)?;
        let mut components: Vec<(&str, PathBuf)> =
            HANDLER_TOPICS.iter().map(|name| (*name, handlers.join(format!("{name}.wasm")))).collect();
        if probe {
            components.push((crate::probe::TOPIC, crate::build_test_fixtures()?.join("hostile.wasm")));
        }
        for (topic, component) in &components {
            let tmp = handlers_dir.join(format!(".{topic}.wasm.tmp"));
            std::fs::copy(component, &tmp).with_context(|| format!("cannot copy {}", component.display()))?;
            std::fs::rename(&tmp, handlers_dir.join(format!("{topic}.wasm")))?;
        }
        if let Some(language) = language {
            eprintln!("demo: the handlers are the {} builds ({})", language.dir_name(), handlers.display());
        }
        let mut children = Children(Vec::new());
        let brokers = match brokers {
            Some(brokers) => {
                eprintln!("demo: using the brokers at {brokers}");
                brokers
            }
            None => {
                let mut args = Vec::new();
                let handler_topics =
                    components.iter().flat_map(|(t, _)| [t.to_string(), format!("{t}.retry"), format!("{t}.dlq")]);
                for name in handler_topics.chain([EVENTS_TOPIC.to_string()]) {
                    args.push("--topic".to_string());
                    args.push(format!("{name}:8"));
                }
                let mut broker = Command::new(bin.join("mock-broker"))
                    .args(&args)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(log_file(&dir, "broker")?)
                    .spawn()
                    .context("cannot start mock-broker")?;
                let stdout = broker.stdout.take().context("mock-broker stdout")?;
                children.0.push(("broker", broker));
                let mut first = String::new();
                let mut reader = BufReader::new(stdout);
                reader.read_line(&mut first)?;
                // Keep reading its acknowledgements (`broker 1 down`), so its stdout stays open.
                std::thread::spawn(move || {
                    for line in reader.lines().map_while(Result::ok) {
                        eprintln!("demo: embedded broker: {line}");
                    }
                });
                let brokers = first
                    .trim()
                    .strip_prefix("bootstrap ")
                    .context("mock-broker did not print its address")?
                    .to_string();
                eprintln!("demo: embedded broker (librdkafka mock cluster) at {brokers}, topics at 8 partitions");
                brokers
            }
        };
        let producer_port = free_port(9001)?;
        let producer_internal_port = free_port(9002)?;
        let host_port = free_port(9000)?;
        let producer_url = format!("http://127.0.0.1:{producer_port}");
        let producer = producer_command(&bin, producer_port, producer_internal_port, &brokers)
            .stderr(log_file(&dir, "producer")?)
            .spawn()
            .context("cannot start the producer")?;
        children.0.push(("producer", producer));
        let mut system = Self {
            children,
            producer_url,
            producer_internal_url: format!("http://127.0.0.1:{producer_internal_port}"),
            host_url: format!("http://127.0.0.1:{host_port}"),
            dir,
            bin,
            brokers,
            host_port,
            host_starts: 0,
            producer_port,
            producer_internal_port,
            producer_starts: 0,
        };
        system.start_host()?;
        wait_ready(
            "producer",
            &format!("{}/producer-svc", system.producer_url),
            &system.dir.join("producer.log"),
            stop,
        )?;
        wait_ready("host", &format!("{}/readyz", system.host_url), &system.dir.join("host-1.log"), stop)?;
        Ok(system)
    }

    /// Starts (or restarts) the host process.
    pub fn start_host(&mut self) -> anyhow::Result<()> {
        self.host_starts += 1;
        let host = self
            .host_command(self.host_port)
            .stderr(log_file(&self.dir, &format!("host-{}", self.host_starts))?)
            .spawn()
            .context("cannot start the host")?;
        self.children.0.push(("host", host));
        Ok(())
    }

    /// The command that starts a host process on `port` in this system's consumer group. In
    /// development, without OPERATOR_TOKEN, its operator routes are open.
    fn host_command(&self, port: u16) -> Command {
        let mut command = Command::new(self.bin.join("host"));
        command
            .env("APP_ENV", "development")
            .env("PORT", port.to_string())
            .env("KAFKA_BROKERS", &self.brokers)
            .env("KAFKA_GROUP_ID", HOST_GROUP)
            .env("KAFKA_OPT_SESSION_TIMEOUT_MS", "6000")
            .env("KAFKA_OPT_MAX_POLL_INTERVAL_MS", "10000")
            // A drain must end well inside max.poll.interval.ms (the host refuses otherwise).
            .env("DRAIN_TIMEOUT_MS", "5000")
            .env("HANDLERS_DIR", self.dir.join("handlers"))
            .env("PRODUCER_URL", &self.producer_internal_url)
            .env("RETRY_TOPIC_DELAY_MS", "2000")
            .env("EVENTS_TOPIC", EVENTS_TOPIC)
            // Neither librdkafka's mock broker nor Tansu answers a fetch early when records
            // arrive: they hold it for the full wait (librdkafka's default is 500 ms), which
            // would dominate every hop's latency here. A real Kafka broker answers at once.
            .env("KAFKA_OPT_FETCH_WAIT_MAX_MS", "20")
            .stdout(Stdio::null());
        command
    }

    /// Starts one more host in the same group (a scale-out) and waits until it is ready (joined
    /// the group); returns its base URL.
    pub fn start_extra_host(&mut self, stop: &AtomicBool) -> anyhow::Result<String> {
        self.host_starts += 1;
        // A port known before it starts (PORT=0 would leave us without its address).
        let port = free_port(0)?;
        let log = format!("host-{}", self.host_starts);
        let host =
            self.host_command(port).stderr(log_file(&self.dir, &log)?).spawn().context("cannot start another host")?;
        self.children.0.push(("extra-host", host));
        let url = format!("http://127.0.0.1:{port}");
        wait_ready("extra host", &format!("{url}/readyz"), &self.dir.join(format!("{log}.log")), stop)?;
        Ok(url)
    }

    /// Stops the newest extra host: SIGTERM when `graceful`, else SIGKILL. False when none runs.
    pub fn stop_extra_host(&mut self, graceful: bool) -> anyhow::Result<bool> {
        let Some(index) = self.children.0.iter().rposition(|(name, _)| *name == "extra-host") else {
            return Ok(false);
        };
        let (_, mut host) = self.children.0.remove(index);
        if graceful {
            terminate(&mut host, Duration::from_secs(60))?;
        } else {
            kill(&mut host)?;
        }
        Ok(true)
    }

    /// Stops the host with SIGTERM; returns its exit status and how long it took to exit.
    pub fn stop_host(&mut self) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let index = self.children.0.iter().rposition(|(name, _)| *name == "host").context("no host running")?;
        let (_, mut host) = self.children.0.remove(index);
        let started = Instant::now();
        let status = terminate(&mut host, Duration::from_secs(120))?;
        Ok((status, started.elapsed()))
    }

    /// Kills the producer with SIGKILL.
    pub fn kill_producer(&mut self) -> anyhow::Result<()> {
        let index = self.children.0.iter().rposition(|(name, _)| *name == "producer").context("no producer running")?;
        let (_, mut producer) = self.children.0.remove(index);
        kill(&mut producer)
    }

    /// Starts the producer again (after [`System::kill_producer`]) and waits until it answers.
    pub fn start_producer(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        self.producer_starts += 1;
        let log = format!("producer-{}", self.producer_starts);
        let producer = producer_command(&self.bin, self.producer_port, self.producer_internal_port, &self.brokers)
            .stderr(log_file(&self.dir, &log)?)
            .spawn()
            .context("cannot start the producer")?;
        self.children.0.push(("producer", producer));
        wait_ready(
            "producer",
            &format!("{}/producer-svc", self.producer_url),
            &self.dir.join(format!("{log}.log")),
            stop,
        )
    }

    /// Sends a fault-injection command (`down 1`, `up 1`) to the embedded broker.
    pub fn broker_command(&mut self, command: &str) -> anyhow::Result<()> {
        let (_, broker) =
            self.children.0.iter_mut().find(|(name, _)| *name == "broker").context("no embedded broker")?;
        let stdin = broker.stdin.as_mut().context("the broker's stdin is closed")?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Kills the host with SIGKILL: no drain, no commit.
    pub fn kill_host(&mut self) -> anyhow::Result<()> {
        let index = self.children.0.iter().rposition(|(name, _)| *name == "host").context("no host running")?;
        let (_, mut host) = self.children.0.remove(index);
        kill(&mut host)
    }

    /// Waits for the host's `/readyz`.
    pub fn wait_host_ready(&self, stop: &AtomicBool) -> anyhow::Result<()> {
        wait_ready(
            "host",
            &format!("{}/readyz", self.host_url),
            &self.dir.join(format!("host-{}.log", self.host_starts)),
            stop,
        )
    }

    /// Creates `n` users through the producer; returns their ids.
    pub fn create_users(&self, n: usize) -> anyhow::Result<BTreeSet<String>> {
        (0..n)
            .map(|i| create_user(&self.producer_url, &format!("Demo User {i}"), &format!("demo{i}@example.com")))
            .collect()
    }

    /// The Kafka bootstrap address the services use.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The process id of the running host, if one runs.
    pub fn host_pid(&self) -> Option<u32> {
        self.children.0.iter().rev().find(|(name, _)| *name == "host").map(|(_, child)| child.id())
    }

    /// Records handled per topic and outcome.
    pub fn records(&self) -> BTreeMap<(String, String), f64> {
        records(&self.host_url)
    }
}

/// Runs the demo.
pub fn run(options: Options, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty());
    let launch = Launch { brokers, dir_name: "demo", language: options.language, ..Launch::default() };
    let system = System::launch(launch, &stop)?;
    let (producer_url, host_url) = (system.producer_url.clone(), system.host_url.clone());
    println!();
    println!(
        "  producer  {producer_url}/producer-svc   (internal: {}/producer-svc, metrics there)",
        system.producer_internal_url
    );
    println!("  host      {host_url}   (/readyz /metrics /handlers /events /ping)");
    println!("  handlers  {}   (move a new <topic>.wasm here to swap it live)", system.dir.join("handlers").display());
    println!("  logs      {}", system.dir.display());
    println!();
    println!("  curl -s -X POST {producer_url}/producer-svc/users -H 'content-type: application/json' \\");
    println!("       -d '{{\"name\":\"Ada Lovelace\",\"email\":\"ada@example.com\"}}'");
    println!("  curl -sN {host_url}/events");
    println!();

    let (tx, events) = mpsc::channel();
    follow_events(host_url.clone(), tx);
    // Let the event stream connect before users are created, so no event is missed.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let expected = match options.users {
        Some(n) => {
            eprintln!("demo: creating {n} users");
            system.create_users(n)?
        }
        None => BTreeSet::new(),
    };
    let summary = watch(&system, &events, &expected, options.exit, started + options.timeout, &stop)?;
    if let Some(summary) = summary {
        let elapsed = started.elapsed();
        let total: f64 = summary.records.values().sum();
        println!("users created:        {}", expected.len());
        println!("token-verified users: {}", summary.verified);
        println!("events received:      {}", summary.events);
        println!("records by outcome:   {}", records_line(&summary.records));
        println!("elapsed:              {:.2} s", elapsed.as_secs_f64());
        println!("records/s:            {:.0}", total / elapsed.as_secs_f64());
    }
    Ok(())
}

/// What `watch` saw by the time every expected chain completed.
#[derive(Debug)]
pub struct Summary {
    /// Distinct users whose token was verified.
    pub verified: usize,
    /// `token-verified` events for the expected users (more than their number when records
    /// were handled twice).
    pub verified_events: usize,
    /// `token-verified` events for other users (records handled again, or late ones).
    pub other_verified_events: usize,
    /// Events received.
    pub events: usize,
    /// Records by topic and outcome.
    pub records: BTreeMap<(String, String), f64>,
}

/// Shows events and a live records line; with `exit`, returns once every `expected` user's token
/// was verified (`None` on Ctrl-C), or fails at `deadline` naming what is missing.
pub fn watch(
    system: &System,
    events: &mpsc::Receiver<serde_json::Value>,
    expected: &BTreeSet<String>,
    exit: bool,
    deadline: Instant,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Summary>> {
    let mut verified: BTreeSet<String> = BTreeSet::new();
    let (mut event_count, mut verified_events, mut other_verified_events) = (0usize, 0usize, 0usize);
    let mut last_line = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            eprintln!("\ndemo: Ctrl-C: stopping everything");
            return Ok(None);
        }
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(event) => {
                event_count += 1;
                if event["kind"] == "token-verified"
                    && let Some(user) = event["payload"]["user_id"].as_str()
                {
                    if expected.contains(user) {
                        verified_events += 1;
                    } else {
                        other_verified_events += 1;
                    }
                    verified.insert(user.to_string());
                }
                if !exit {
                    let place = format!(
                        "{}:{}@{}",
                        event["topic"].as_str().unwrap_or("?"),
                        event["partition"],
                        event["offset"]
                    );
                    println!("event {} {} ({place})", event["kind"].as_str().unwrap_or("?"), event["payload"]);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the event stream ended"),
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let line = records_line(&system.records());
            if exit {
                eprintln!(
                    "demo: {}/{} chains complete | {line}",
                    expected.intersection(&verified).count(),
                    expected.len()
                );
            } else {
                eprint!("\r{line}   ");
                let _ = std::io::stderr().flush();
            }
        }
        if exit {
            let missing: Vec<&String> = expected.difference(&verified).collect();
            if missing.is_empty() {
                return Ok(Some(Summary {
                    verified: expected.intersection(&verified).count(),
                    verified_events,
                    other_verified_events,
                    events: event_count,
                    records: system.records(),
                }));
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {} users' chains did not complete in time (e.g. {:?}); records: {}; logs in {}",
                    missing.len(),
                    expected.len(),
                    missing.iter().take(3).collect::<Vec<_>>(),
                    records_line(&system.records()),
                    system.dir.display()
                );
            }
        }
    }
}

/// Connects to the host's `/events` stream on a thread of its own.
pub fn events(system: &System) -> mpsc::Receiver<serde_json::Value> {
    let (tx, rx) = mpsc::channel();
    follow_events(system.host_url.clone(), tx);
    std::thread::sleep(Duration::from_millis(500));
    rx
}
