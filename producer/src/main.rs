//! The `producer` binary: reads its configuration, ensures its topics, serves the public router on
//! `PORT` and the internal one on `INTERNAL_PORT` until SIGTERM or Ctrl-C, then flushes the
//! producer and exits 0.

use anyhow::Context;
use common::env::Env;
use producer::api::{TOPIC_ISSUED_TOKEN, TOPIC_NEW_USER, internal_router, public_router};
use producer::config::ProducerConfig;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    if config.operator_token.is_none() {
        tracing::warn!(
            "OPERATOR_TOKEN is not set: the operator routes (GET /producer-svc/metrics on INTERNAL_PORT) are open. Never run this in production."
        );
    }
    let state = producer::state(&config).context("cannot create the Kafka producer")?;
    let publisher = state.publisher.clone();
    tokio::spawn(ensure_topics(config.kafka.clone()));

    let public = listen(config.port, "PORT").await?;
    let internal = listen(config.internal_port, "INTERNAL_PORT").await?;
    tracing::info!(
        port = config.port,
        internal_port = config.internal_port,
        brokers = %config.kafka.brokers,
        "producer listening"
    );
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        common::shutdown::signal().await;
        let _ = stop.send(true);
    });
    let (public_app, internal_app) = (public_router(state.clone()), internal_router(state));
    tokio::try_join!(
        async {
            axum::serve(public, public_app)
                .with_graceful_shutdown(stopped(stopping.clone()))
                .await
                .context("the public server failed")
        },
        async {
            axum::serve(internal, internal_app)
                .with_graceful_shutdown(stopped(stopping.clone()))
                .await
                .context("the internal server failed")
        },
    )?;

    tracing::info!("flushing queued records");
    tokio::task::spawn_blocking(move || publisher.flush(FLUSH_TIMEOUT)).await?.context("flush at shutdown")?;
    tracing::info!("producer stopped");
    Ok(())
}

async fn listen(port: u16, variable: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port)).await.with_context(|| format!("cannot listen on {variable} {port}"))
}

/// Resolves once the shutdown signal came (or can no longer come).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
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
