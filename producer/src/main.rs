//! The `producer` binary: reads its configuration, ensures its topics, serves the API until
//! SIGTERM or Ctrl-C, then flushes the producer and exits 0.

use anyhow::Context;
use common::env::Env;
use producer::api::{TOPIC_ISSUED_TOKEN, TOPIC_NEW_USER, router};
use producer::config::ProducerConfig;
use std::time::Duration;

/// How long queued records may take to reach the broker at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ProducerConfig::from_env(&Env::from_process())?;
    common::telemetry::init(config.log_format);
    if config.token_secret_is_default {
        tracing::warn!(
            "TOKEN_SECRET is not set: using the DEVELOPMENT default secret. Tokens are forgeable. Never run this in production."
        );
    }
    let state = producer::state(&config).context("cannot create the Kafka producer")?;
    let publisher = state.publisher.clone();
    tokio::spawn(ensure_topics(config.kafka.clone()));

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("cannot listen on port {}", config.port))?;
    tracing::info!(port = config.port, brokers = %config.kafka.brokers, "producer listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(common::shutdown::signal())
        .await
        .context("server failed")?;

    tracing::info!("flushing queued records");
    tokio::task::spawn_blocking(move || publisher.flush(FLUSH_TIMEOUT)).await?.context("flush at shutdown")?;
    tracing::info!("producer stopped");
    Ok(())
}

/// Creates the two topics when missing, retrying until the broker answers.
async fn ensure_topics(kafka: common::kafka::KafkaSettings) {
    let mut delay = Duration::from_millis(500);
    loop {
        match common::topics::ensure_topics(&kafka, &[TOPIC_NEW_USER, TOPIC_ISSUED_TOKEN], Duration::from_secs(10))
            .await
        {
            Ok(created) => {
                if !created.is_empty() {
                    tracing::info!(?created, partitions = kafka.topic_partitions, "created topics");
                }
                return;
            }
            Err(e) => {
                tracing::warn!("cannot ensure topics yet: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
