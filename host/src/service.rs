//! The consumer service assembled: handlers loaded from `HANDLERS_DIR` and watched, the Kafka
//! pipeline, the retry/dead-letter topics ensured, and the HTTP API; one shutdown path for all.

use crate::config::HostConfig;
use crate::events::EventHub;
use crate::handlers::{Loader, Registry, dlq_topic, retry_topic};
use crate::http::{ApiState, router};
use crate::metrics::Metrics;
use crate::pipeline::deliver::MAX_COPY_BYTES;
use crate::pipeline::{Health, Pipeline, PipelineDeps};
use crate::producer_api::ProducerClient;
use crate::runtime::WasmEngine;
use anyhow::Context;
use common::topics::TopicSpec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running host.
#[derive(Debug)]
pub struct Running {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    /// The handler set (benchmarks install native handlers through it).
    pub registry: Arc<Registry>,
    stop: watch::Sender<bool>,
    pipeline: Pipeline,
    server: JoinHandle<std::io::Result<()>>,
    loader: JoinHandle<()>,
    topics: JoinHandle<()>,
}

/// Starts the host: loads handlers, starts consuming, serves HTTP.
pub async fn start(config: HostConfig) -> anyhow::Result<Running> {
    anyhow::ensure!(
        config.handlers_dir.is_dir(),
        "HANDLERS_DIR {} is not a directory (create it and put <topic>.wasm files in it)",
        config.handlers_dir.display()
    );
    if let Some(seed) = &config.handlers_seed_dir {
        seed_handlers(seed, &config.handlers_dir)?;
    }
    let engine = Arc::new(WasmEngine::new(config.engine.clone())?);
    let registry = Arc::new(Registry::default());
    let metrics = Arc::new(Metrics::default());
    let events = EventHub::default();
    let health = Arc::new(Health::default());
    let producer = ProducerClient::new(&config.producer_url)?;
    let (stop, stop_rx) = watch::channel(false);

    let mut loader = Loader::new(
        config.handlers_dir.clone(),
        engine,
        config.handler_defaults.clone(),
        registry.clone(),
        metrics.clone(),
    );
    loader.scan(false).await.with_context(|| format!("cannot read HANDLERS_DIR {}", config.handlers_dir.display()))?;
    tracing::info!(topics = ?registry.active_topics(), dir = %config.handlers_dir.display(), "handlers loaded");
    let loader = tokio::spawn(loader.run(config.reload_interval, stop_rx.clone()));
    let topics = tokio::spawn(ensure_topics(TopicPlan::from(&config), registry.watch_topics(), stop_rx.clone()));

    let pipeline = Pipeline::start(PipelineDeps {
        kafka: config.kafka.clone(),
        group_id: config.group_id.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        events: events.clone(),
        producer_client: producer.clone(),
        max_instances: config.max_instances as usize,
        health: health.clone(),
        drain_timeout: config.drain_timeout,
        events_topic: config.events_topic.clone(),
    })?;

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("cannot listen on port {}", config.port))?;
    let addr = listener.local_addr()?;
    if config.operator_token.is_none() {
        tracing::warn!(
            "OPERATOR_TOKEN is not set: /metrics, /handlers and /events are open to anyone (development only)"
        );
    }
    let app = router(ApiState {
        registry: registry.clone(),
        metrics,
        events,
        producer,
        health,
        shutdown: stop_rx.clone(),
        operator_token: config.operator_token.clone(),
    });
    let mut server_stop = stop_rx;
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(%addr, group = config.group_id, brokers = config.kafka.brokers, "host started");
    Ok(Running { addr, registry, stop, pipeline, server, loader, topics })
}

impl Running {
    /// Stops fetching, finishes or abandons records in hand (bounded by `DRAIN_TIMEOUT_MS`),
    /// commits, leaves the group, and stops serving.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.pipeline.shutdown().await;
        for task in [self.loader, self.topics] {
            let _ = task.await;
        }
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("HTTP server error: {e}"),
            Err(e) => tracing::error!("HTTP server task failed: {e}"),
        }
        tracing::info!("host stopped");
    }
}

/// Copies the handler files of `seed` into `dir` when `dir` holds no handler yet (each file
/// written under a temporary name and renamed, so the loader never sees half a file).
fn seed_handlers(seed: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let is_handler = |p: &std::path::Path| p.extension().is_some_and(|e| e == "wasm");
    let has_handlers = std::fs::read_dir(dir)?.filter_map(Result::ok).any(|e| is_handler(&e.path()));
    if has_handlers {
        return Ok(());
    }
    for entry in std::fs::read_dir(seed).with_context(|| format!("cannot read HANDLERS_SEED_DIR {}", seed.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_name() else { continue };
        if is_handler(&path) || path.extension().is_some_and(|e| e == "toml") {
            let tmp = dir.join(format!(".{}.seed", name.to_string_lossy()));
            std::fs::copy(&path, &tmp).with_context(|| format!("cannot copy {}", path.display()))?;
            std::fs::rename(&tmp, dir.join(name))?;
            tracing::info!(file = %name.to_string_lossy(), "seeded handler from {}", seed.display());
        }
    }
    Ok(())
}

/// Runs until `signal` resolves, then shuts down gracefully.
pub async fn run(config: HostConfig, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    signal.await;
    running.shutdown().await;
    Ok(())
}

/// The topics the host creates when they are missing, and how.
#[derive(Debug, Clone)]
struct TopicPlan {
    kafka: common::kafka::KafkaSettings,
    events_topic: Option<String>,
    retry_retention: Duration,
    dlq_retention: Option<Duration>,
}

impl From<&HostConfig> for TopicPlan {
    fn from(config: &HostConfig) -> Self {
        Self {
            kafka: config.kafka.clone(),
            events_topic: config.events_topic.clone(),
            retry_retention: config.retry_topic_retention,
            dlq_retention: config.dlq_retention,
        }
    }
}

impl TopicPlan {
    /// A handler topic, its retry topic and its dead-letter topic (both with a retention that
    /// outlives their copies' waits, counted from when each copy was written, and room for a
    /// copy of a record near the source topic's limit), and the events topic.
    fn specs(&self, handler_topics: &[String]) -> Vec<TopicSpec> {
        let copies = |name: String, retention: Option<Duration>| {
            TopicSpec::new(name)
                .with("retention.ms", retention.map_or(-1, |r| r.as_millis() as i64))
                .with("max.message.bytes", MAX_COPY_BYTES)
        };
        handler_topics
            .iter()
            .flat_map(|t| {
                [
                    TopicSpec::new(t.clone()),
                    copies(retry_topic(t), Some(self.retry_retention)),
                    copies(dlq_topic(t), self.dlq_retention),
                ]
            })
            .chain(self.events_topic.clone().map(TopicSpec::new))
            .collect()
    }
}

/// Creates each handler topic's topic, retry topic and dead-letter topic, and the events topic,
/// when missing, whenever the handler set changes; retries until the broker answers.
async fn ensure_topics(plan: TopicPlan, mut topics: watch::Receiver<Vec<String>>, mut stop: watch::Receiver<bool>) {
    loop {
        let wanted = plan.specs(&topics.borrow_and_update());
        let mut delay = Duration::from_millis(500);
        while !wanted.is_empty() {
            match common::topics::ensure_topic_specs(&plan.kafka, &wanted, Duration::from_secs(10)).await {
                Ok(created) => {
                    if !created.is_empty() {
                        tracing::info!(?created, "created topics");
                    }
                    let existing: Vec<TopicSpec> =
                        wanted.iter().filter(|t| !created.contains(&t.name)).cloned().collect();
                    match common::topics::config_shortfalls(&plan.kafka, &existing, Duration::from_secs(10)).await {
                        Ok(shortfalls) => {
                            for shortfall in shortfalls {
                                tracing::warn!("{shortfall}: copies may be deleted before they are read, or not fit");
                            }
                        }
                        Err(e) => tracing::debug!("cannot read the topics' configs: {e}"),
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!("cannot ensure topics yet: {e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = topics.changed() => if changed.is_err() { return },
        }
    }
}
