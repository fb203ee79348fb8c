//! `mock-broker`: librdkafka's mock cluster (a Kafka-protocol broker kept in memory) as a process
//! of its own, so the demo and fault tests can point real producer and host processes at it.
//!
//! Usage: `mock-broker [--brokers N] [--topic NAME:PARTITIONS]...`. Prints
//! `bootstrap <host:port,...>` on stdout once the cluster and its topics exist, then reads
//! commands on stdin, one per line: `down <broker-id>` and `up <broker-id>` (fault injection),
//! `errors <request> <error> <count>` (the next `count` requests of that kind fail with that
//! error: requests `produce`, `fetch`, `offset-commit`, `offset-fetch`, `heartbeat`,
//! `join-group`, `sync-group`, `metadata`; errors `not-enough-replicas`, `not-leader`,
//! `timed-out`, `not-coordinator`, `rebalance-in-progress`, `disconnect`), `clear <request>`
//! (drop the errors still pending for that kind), `quit`. End of input also quits.

use anyhow::{Context, bail};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::io::{BufRead, Write};

fn main() -> anyhow::Result<()> {
    let mut brokers = 1;
    let mut topics: Vec<(String, i32)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--brokers" => {
                brokers =
                    args.next().context("--brokers needs a number")?.parse().context("--brokers needs a number")?
            }
            "--topic" => {
                let spec = args.next().context("--topic needs NAME:PARTITIONS")?;
                let (name, partitions) = spec.rsplit_once(':').context("--topic needs NAME:PARTITIONS")?;
                topics.push((name.to_string(), partitions.parse().context("partitions must be a number")?));
            }
            "-h" | "--help" => {
                println!("usage: mock-broker [--brokers N] [--topic NAME:PARTITIONS]...");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let cluster = MockCluster::new(brokers).context("cannot start the mock cluster")?;
    for (name, partitions) in &topics {
        cluster
            .create_topic(name, *partitions, brokers.min(3))
            .with_context(|| format!("cannot create topic {name}"))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "bootstrap {}", cluster.bootstrap_servers())?;
    out.flush()?;
    drop(out);
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let result = match (words.next(), words.next().map(str::parse::<i32>)) {
            (Some("down"), Some(Ok(id))) => cluster.broker_down(id).map(|()| format!("broker {id} down")),
            (Some("up"), Some(Ok(id))) => cluster.broker_up(id).map(|()| format!("broker {id} up")),
            (Some("clear"), _) => match line.split_whitespace().nth(1).and_then(api_key) {
                Some(api) => {
                    cluster.clear_request_errors(api);
                    Ok(format!("no more {api:?} errors pending"))
                }
                None => {
                    eprintln!("usage: clear <request> (see --help)");
                    continue;
                }
            },
            (Some("errors"), _) => {
                let mut words = line.split_whitespace().skip(1);
                match (words.next().and_then(api_key), words.next().and_then(error_code), words.next().map(str::parse))
                {
                    (Some(api), Some(error), Some(Ok(count))) => {
                        cluster.request_errors(api, &vec![error; count]);
                        Ok(format!("the next {count} {api:?} requests fail"))
                    }
                    _ => {
                        eprintln!("usage: errors <request> <error> <count> (see --help)");
                        continue;
                    }
                }
            }
            (Some("quit"), _) => break,
            (None, _) => continue,
            _ => {
                eprintln!("unknown command {line:?} (down N, up N, errors REQUEST ERROR COUNT, quit)");
                continue;
            }
        };
        // The acknowledgement is a courtesy: a reader that stopped listening must not stop the
        // broker, so a closed stdout is ignored.
        match result {
            Ok(done) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{done}").and_then(|()| out.flush());
            }
            Err(e) => eprintln!("{line}: {e}"),
        }
    }
    Ok(())
}

fn api_key(name: &str) -> Option<RDKafkaApiKey> {
    Some(match name {
        "produce" => RDKafkaApiKey::Produce,
        "fetch" => RDKafkaApiKey::Fetch,
        "offset-commit" => RDKafkaApiKey::OffsetCommit,
        "offset-fetch" => RDKafkaApiKey::OffsetFetch,
        "heartbeat" => RDKafkaApiKey::Heartbeat,
        "join-group" => RDKafkaApiKey::JoinGroup,
        "sync-group" => RDKafkaApiKey::SyncGroup,
        "metadata" => RDKafkaApiKey::Metadata,
        _ => return None,
    })
}

fn error_code(name: &str) -> Option<RDKafkaRespErr> {
    Some(match name {
        "not-enough-replicas" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        "not-leader" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        "timed-out" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        "not-coordinator" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        "rebalance-in-progress" => RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
        "disconnect" => RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT,
        _ => return None,
    })
}
