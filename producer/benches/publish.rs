//! `POST /producer-svc/users` over real HTTP (axum on loopback, reqwest client, 16 requests in
//! flight) next to publishing the same records in-process through the same `Publisher` (16 in
//! flight), both against librdkafka's mock cluster in this process. Prints requests/s and p50/p99
//! latency for each and their ratio; docs/BENCHMARKS.md records the figures.

use common::env::Env;
use futures::StreamExt;
use producer::config::ProducerConfig;
use rdkafka::mocking::MockCluster;
use std::time::{Duration, Instant};

const REQUESTS: usize = 4_000;
const IN_FLIGHT: usize = 16;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Prints the figures, and `bench-result` lines (under `key`) that `cargo xtask bench` reads.
fn report(name: &str, key: &str, elapsed: Duration, mut latencies: Vec<Duration>) -> f64 {
    latencies.sort();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    let p50 = percentile(&latencies, 0.50).as_secs_f64() * 1e3;
    let p99 = percentile(&latencies, 0.99).as_secs_f64() * 1e3;
    println!("{name:<28} {rate:>9.0} /s   p50 {p50:>8.2} ms   p99 {p99:>8.2} ms");
    println!("bench-result {key}.rate {rate:.0}");
    println!("bench-result {key}.p50_ms {p50:.3}");
    println!("bench-result {key}.p99_ms {p99:.3}");
    rate
}

#[tokio::main]
async fn main() {
    let mock = MockCluster::new(1).expect("mock cluster");
    for topic in ["new-user-created", "issued-token"] {
        mock.create_topic(topic, 8, 1).expect("topic");
    }
    let env = Env::from_pairs([("KAFKA_BROKERS", mock.bootstrap_servers()), ("APP_ENV", "development".into())]);
    let config = ProducerConfig::from_env(&env).expect("config");
    let state = producer::state(&config).expect("state");
    let publisher = state.publisher.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/producer-svc/users", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, producer::api::public_router(state)).await.expect("serve") });
    let client = reqwest::Client::new();

    // Warm up both paths (connections, metadata).
    for _ in 0..200 {
        let r = client
            .post(&url)
            .json(&serde_json::json!({"name": "Warm", "email": "warm@example.com"}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status(), 201);
    }

    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            async move {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .json(&serde_json::json!({"name": format!("User {i}"), "email": format!("user{i}@example.com")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 201);
                t.elapsed()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let http = report("POST /users over HTTP", "producer.http", started.elapsed(), latencies);

    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..REQUESTS)
        .map(|i| {
            let publisher = publisher.clone();
            async move {
                let id = uuid::Uuid::now_v7().to_string();
                let body = serde_json::json!({"id": id, "name": format!("User {i}"), "email": format!("user{i}@example.com"), "created_at": "2026-11-26T13:00:00.000Z"});
                let payload = serde_json::to_vec(&body).expect("json");
                let t = Instant::now();
                publisher
                    .publish("new-user-created", &id, &payload, &[("content-type", "application/json"), ("request-id", "bench")])
                    .await
                    .expect("publish");
                t.elapsed()
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let direct = report("publish in-process", "producer.direct", started.elapsed(), latencies);
    println!("ratio HTTP / in-process: {:.2}", http / direct);
}
