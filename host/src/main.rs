//! The `host` binary: the consumer service and the handler-author tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::env::Env;
use host::cli::{EXIT_USAGE, check, invoke, read_limits};
use host::config::HostConfig;
use host::producer_api::ProducerClient;
use host::record::{Header, Record};
use host::runtime::HandlerLimits;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "host", version, about = "Kafka consumer that runs a WebAssembly component per topic")]
struct Cli {
    /// What to do; without one, `run`.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the consumer service (configured by environment variables; see docs/operating.md).
    Run,
    /// Exit 0 when the local host's /healthz answers (for container health checks).
    Healthcheck {
        /// The port to ask (defaults to PORT, else 9000).
        #[arg(long, env = "PORT", default_value_t = 9000)]
        port: u16,
    },
    /// Run one record through a handler and print a JSON line with the outcome.
    Invoke(InvokeArgs),
    /// Check that a component implements the handler contract (and say which world).
    Check {
        /// The component file.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct InvokeArgs {
    /// The handler component.
    #[arg(long)]
    handler: PathBuf,
    /// The record's topic.
    #[arg(long)]
    topic: String,
    /// The record's key.
    #[arg(long)]
    key: Option<String>,
    /// The record's value.
    #[arg(long, conflicts_with = "value_file")]
    value: Option<String>,
    /// A file holding the record's value.
    #[arg(long)]
    value_file: Option<PathBuf>,
    /// A header, as NAME=VALUE; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Which delivery this is (1 = first).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: u32,
    /// The record's partition.
    #[arg(long, default_value_t = 0)]
    partition: i32,
    /// The record's offset.
    #[arg(long, default_value_t = 0)]
    offset: i64,
    /// Base URL of the producer service; without it producer calls fail as unreachable.
    #[arg(long)]
    producer_url: Option<String>,
    /// A `<topic>.toml` file with limits to apply instead of the defaults.
    #[arg(long)]
    limits: Option<PathBuf>,
}

/// Largest `--value-file` read (a Kafka record is far smaller).
const MAX_VALUE_FILE_BYTES: u64 = 64 << 20;

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err("a header needs a name".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => return run_service(),
        Command::Healthcheck { port } => healthcheck(port),
        Command::Invoke(args) => {
            cli_logging();
            run_invoke(args)
        }
        Command::Check { file } => {
            cli_logging();
            run_check(&file)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Handler-author tools log warnings only, to stderr, so stdout stays one JSON line.
fn cli_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A handler's log lines reach this log: none may end its line and forge another.
        .fmt_fields(common::telemetry::EscapedFields)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
}

fn run_service() -> ExitCode {
    let config = match HostConfig::from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    common::telemetry::init(config.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(host::service::run(config, common::shutdown::signal())));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(port: u16) -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = std::time::Duration::from_secs(2);
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.starts_with("HTTP/1.1 200") {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("unhealthy: {}", response.lines().next().unwrap_or("no answer"));
        Ok(ExitCode::FAILURE)
    }
}

fn run_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let engine = check::cli_engine()?;
    let started = std::time::Instant::now();
    let module = check::load(&engine, file, HandlerLimits::default())
        .with_context(|| format!("{} is not a valid handler", file.display()))?;
    let how = if engine.cache_hits() > 0 { "loaded from the compilation cache" } else { "compiled" };
    println!(
        "ok: {} implements kafka-wasm:{} ({}, {} bytes; {how} in {} ms)",
        file.display(),
        module.world(),
        module.digest(),
        module.size(),
        started.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_invoke(args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let limits = match &args.limits {
        Some(path) => read_limits(path)?,
        None => HandlerLimits::default(),
    };
    let value = match (&args.value, &args.value_file) {
        (Some(v), _) => Some(v.clone().into_bytes()),
        (None, Some(path)) => Some(host::runtime::read_file(path, MAX_VALUE_FILE_BYTES)?),
        (None, None) => None,
    };
    let producer = match &args.producer_url {
        Some(url) => ProducerClient::new(url)?,
        None => ProducerClient::unconfigured(),
    };
    let engine = check::cli_engine()?;
    let module = check::load(&engine, &args.handler, limits)
        .with_context(|| format!("{} is not a valid handler", args.handler.display()))?;
    let record = Record {
        topic: args.topic,
        partition: args.partition,
        offset: args.offset,
        timestamp_ms: None,
        key: args.key.map(String::into_bytes),
        value,
        headers: args.headers.into_iter().map(|(key, value)| Header { key, value: value.into_bytes() }).collect(),
        attempt: args.attempt,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let invocation = runtime.block_on(invoke::invoke(module, producer, &record));
    println!("{}", serde_json::to_string(&invoke::InvokeReport::new(&invocation))?);
    Ok(ExitCode::SUCCESS)
}
