//! The `host` binary: the consumer service and the handler-author tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use host::cli::{EXIT_USAGE, check, invoke, read_limits};
use host::producer_api::ProducerClient;
use host::record::Record;
use host::runtime::HandlerLimits;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "host", version, about = "Kafka consumer that runs a WebAssembly component per topic")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one record through a handler and print a JSON line with the outcome.
    Invoke(InvokeArgs),
    /// Check that a component implements the handler contract.
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

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err("a header needs a name".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let result = match cli.command {
        Command::Invoke(args) => run_invoke(args),
        Command::Check { file } => run_check(&file),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run_check(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let engine = check::cli_engine()?;
    let module = check::load(&engine, file, HandlerLimits::default())
        .with_context(|| format!("{} is not a valid handler", file.display()))?;
    println!(
        "ok: {} implements kafka-wasm:handler@0.1.0 ({}, {} bytes)",
        file.display(),
        module.digest(),
        module.size()
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
        (None, Some(path)) => Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?),
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
        headers: args.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
        attempt: args.attempt,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let invocation = runtime.block_on(invoke::invoke(module, producer, &record));
    println!("{}", serde_json::to_string(&invoke::InvokeReport::new(&invocation))?);
    Ok(ExitCode::SUCCESS)
}
