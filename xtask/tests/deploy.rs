//! The Copilot application checked offline against the binaries' own configuration: every
//! manifest parses into typed structs with unknown keys rejected; ports, paths, health checks,
//! CPU/memory, variables and secrets agree with what `producer` and `host` read (a renamed
//! variable breaks this test); the load balancer reaches only the producer's public listener,
//! whose routes are the public ones, and Service Connect its internal one, which the host calls;
//! both services take the operator token from the secret store; the addons' IAM policies name the
//! topics and group the services use; the Dockerfile's targets, paths and users agree with the
//! manifests.

use common::env::Env;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    xtask::repo_root()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn parse<T: serde::de::DeserializeOwned>(path: &str) -> T {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Workspace {
    application: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentManifest {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    observability: Observability,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Observability {
    container_insights: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    image: Image,
    http: Http,
    cpu: u32,
    memory: u32,
    count: u32,
    exec: bool,
    network: Network,
    variables: BTreeMap<String, serde_yaml::Value>,
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    storage: Option<Storage>,
    taskdef_overrides: Vec<Override>,
    environments: BTreeMap<String, EnvironmentOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    build: Build,
    port: u16,
    #[serde(default)]
    healthcheck: Option<ContainerHealthcheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    dockerfile: String,
    context: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerHealthcheck {
    command: Vec<String>,
    interval: String,
    retries: u32,
    timeout: String,
    start_period: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Http {
    path: String,
    /// The container port the load balancer forwards to (Copilot: `image.port` when unset).
    #[serde(default)]
    target_port: Option<u16>,
    healthcheck: LbHealthcheck,
    deregistration_delay: String,
}

impl Http {
    /// The container port the load balancer's target group forwards to.
    fn target(&self, image: &Image) -> u16 {
        self.target_port.unwrap_or(image.port)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LbHealthcheck {
    path: String,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    interval: String,
    timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    connect: Connect,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Connect {
    Enabled(bool),
    Alias { alias: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Storage {
    volumes: BTreeMap<String, Volume>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Volume {
    path: String,
    read_only: bool,
    efs: Efs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Efs {
    uid: u32,
    gid: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Override {
    path: String,
    value: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentOverride {
    count: u32,
}

/// One operation of a service's `overrides/cfn.patches.yml` (RFC 6902, as Copilot applies it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    op: String,
    path: String,
    value: serde_yaml::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct PortMapping {
    container_port: u16,
    protocol: String,
    name: String,
}

/// What the producer's patches make of Service Connect: the container's port mappings, the one
/// Service Connect serves, and the port its client alias listens on.
#[derive(Debug)]
struct ServiceConnect {
    port_mappings: Vec<PortMapping>,
    port_name: String,
    alias_port: u16,
}

fn producer_service_connect() -> ServiceConnect {
    let patches: Vec<Patch> = parse("copilot/producer/overrides/cfn.patches.yml");
    let replaced = |path: &str| {
        let patch =
            patches.iter().find(|p| p.path == path).unwrap_or_else(|| panic!("cfn.patches.yml must replace {path}"));
        assert_eq!(patch.op, "replace", "{path}");
        patch.value.clone()
    };
    let service = "/Resources/Service/Properties/ServiceConnectConfiguration/Services/0";
    let sc = ServiceConnect {
        port_mappings: serde_yaml::from_value(replaced(
            "/Resources/TaskDefinition/Properties/ContainerDefinitions/0/PortMappings",
        ))
        .expect("port mappings"),
        port_name: serde_yaml::from_value(replaced(&format!("{service}/PortName"))).expect("a port name"),
        alias_port: serde_yaml::from_value(replaced(&format!("{service}/ClientAliases/0/Port"))).expect("a port"),
    };
    assert_eq!(patches.len(), 3, "nothing else is patched: {patches:?}");
    sc
}

/// The value of a variable as a string.
fn text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("variable value {other:?} is not a scalar"),
    }
}

/// The environment a task gets: the manifest's variables, and a stand-in for each secret.
fn task_env(service: &Service, secret_values: &[(&str, &str)]) -> Env {
    let mut pairs: Vec<(String, String)> = service.variables.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    // What the environment addon writes: MSK Serverless's IAM bootstrap address.
    let brokers = ("KAFKA_BROKERS", "boot-abcd1234.c2.kafka-serverless.eu-west-1.amazonaws.com:9098");
    for name in service.secrets.keys() {
        let value = secret_values.iter().chain([&brokers]).find(|(k, _)| k == name).map_or("stand-in", |(_, v)| v);
        pairs.push((name.clone(), value.to_string()));
    }
    pairs.push(("AWS_REGION".into(), "eu-west-1".into())); // set by ECS on Fargate
    Env::from_pairs(pairs)
}

fn stop_timeout(service: &Service) -> u64 {
    let o = service
        .taskdef_overrides
        .iter()
        .find(|o| o.path == "ContainerDefinitions[0].StopTimeout")
        .expect("a StopTimeout override");
    o.value.as_u64().expect("StopTimeout is a number")
}

/// A stand-in operator token (the real one is in the secret store).
const OPERATOR_TOKEN: &str = "operator-token-stand-in-of-at-least-32-bytes";

/// The producer's configuration as its task gets it; valid, or the test fails.
fn producer_config(service: &Service) -> producer::config::ProducerConfig {
    let token_secret = "x".repeat(32);
    let secrets = [("TOKEN_SECRET", token_secret.as_str()), ("OPERATOR_TOKEN", OPERATOR_TOKEN)];
    producer::config::ProducerConfig::from_env(&task_env(service, &secrets)).expect("the task's configuration is valid")
}

fn assert_known(service: &Service, own: &[&str]) {
    for name in service.variables.keys().chain(service.secrets.keys()) {
        assert!(
            own.contains(&name.as_str()) || common::kafka::KNOWN_VARIABLES.contains(&name.as_str()),
            "{}: {name} is not a variable the {} binary reads",
            service.name,
            service.name
        );
    }
}

fn secret_path(service: &Service, name: &str) -> String {
    service.secrets.get(name).unwrap_or_else(|| panic!("{}: {name} must come from a secret", service.name)).clone()
}

const SECRETS: &str = "/copilot/${COPILOT_APPLICATION_NAME}/${COPILOT_ENVIRONMENT_NAME}/secrets/";

#[test]
fn the_workspace_and_environments_parse() {
    let workspace: Workspace = parse("copilot/.workspace");
    assert_eq!(workspace.application, "kafka-wasm");
    for env in ["test", "prod"] {
        let m: EnvironmentManifest = parse(&format!("copilot/environments/{env}/manifest.yml"));
        assert_eq!((m.name.as_str(), m.kind.as_str()), (env, "Environment"));
        assert_eq!(m.observability.container_insights, env == "prod");
    }
}

#[test]
fn the_producer_manifest_matches_the_producer_binary() {
    let m: Service = parse("copilot/producer/manifest.yml");
    assert_eq!((m.name.as_str(), m.kind.as_str()), ("producer", "Load Balanced Web Service"));
    assert_eq!(
        (m.image.build.dockerfile.as_str(), m.image.build.context.as_str(), m.image.build.target.as_str()),
        ("Dockerfile", ".", "producer")
    );
    assert_eq!((m.cpu, m.memory), (256, 512), "the Go original's size");
    assert!(!m.exec && m.count >= 1 && m.environments["prod"].count >= 2);
    assert_known(&m, producer::config::VARIABLES);

    // The configuration the task gets is valid for the binary.
    let config = producer_config(&m);
    assert_eq!(config.app_env, producer::config::AppEnv::Production);
    assert!(config.operator_token.is_some(), "operator routes guarded");
    assert_eq!(config.kafka.msk_iam_region.as_deref(), Some("eu-west-1"), "MSK IAM authentication");

    // Ports: the load balancer forwards to the public listener only; the container's own port is
    // the internal listener (Service Connect's, below).
    assert_eq!(m.http.target(&m.image), config.port, "the ALB's target is the public listener (PORT)");
    assert_eq!(m.image.port, config.internal_port, "image.port is the internal listener (INTERNAL_PORT)");
    assert_ne!(config.port, config.internal_port);

    // Routes: the load balancer's path and health check are the public router's.
    let prefix = producer::api::PREFIX.trim_start_matches('/');
    assert_eq!(m.http.path, prefix);
    assert_eq!(m.http.healthcheck.path, producer::api::Route::Health.path());
    assert!(producer::api::Route::PUBLIC.contains(&producer::api::Route::Health), "checked on the public listener");
    assert!(m.http.healthcheck.healthy_threshold >= 2 && m.http.healthcheck.unhealthy_threshold >= 2);
    assert!(
        !m.http.healthcheck.interval.is_empty()
            && !m.http.healthcheck.timeout.is_empty()
            && !m.http.deregistration_delay.is_empty()
    );

    // Secrets never as plain variables.
    for secret in ["TOKEN_SECRET", "OPERATOR_TOKEN", "KAFKA_BROKERS"] {
        assert!(!m.variables.contains_key(secret), "{secret} must not be a plain variable");
        assert_eq!(secret_path(&m, secret), format!("{SECRETS}{secret}"));
    }
    assert!(matches!(&m.network.connect, Connect::Alias { alias } if alias == "producer"));
    assert!(stop_timeout(&m) >= 15, "time to flush at SIGTERM");
}

#[test]
fn the_host_manifest_matches_the_host_binary() {
    let m: Service = parse("copilot/host/manifest.yml");
    let producer: Service = parse("copilot/producer/manifest.yml");
    assert_eq!((m.name.as_str(), m.kind.as_str()), ("host", "Load Balanced Web Service"));
    assert_eq!((m.image.build.dockerfile.as_str(), m.image.build.target.as_str()), ("Dockerfile", "host"));
    assert_eq!((m.cpu, m.memory), (256, 512));
    assert_known(&m, host::config::VARIABLES);
    assert_eq!(m.variables.get("APP_ENV").map(text).as_deref(), Some("production"));
    let config = host::config::HostConfig::from_env(&task_env(&m, &[("OPERATOR_TOKEN", OPERATOR_TOKEN)]))
        .expect("the task's configuration is valid");
    assert_eq!(config.port, m.image.port);
    assert_eq!(m.http.path, "/");
    assert_eq!(m.http.healthcheck.path, "/healthz");
    let healthcheck = m.image.healthcheck.as_ref().expect("a container health check");
    assert_eq!(
        healthcheck.command,
        ["/usr/local/bin/host", "healthcheck"],
        "the binary's own health subcommand, exec form"
    );
    assert!(
        healthcheck.retries >= 1
            && !healthcheck.interval.is_empty()
            && !healthcheck.timeout.is_empty()
            && !healthcheck.start_period.is_empty()
    );

    // The producer is reached by Service Connect on its internal listener, never through the
    // public load balancer.
    let Connect::Alias { alias } = &producer.network.connect else {
        panic!("the producer needs a Service Connect alias")
    };
    assert!(matches!(m.network.connect, Connect::Enabled(true)));
    let sc = producer_service_connect();
    assert_eq!(config.producer_url, format!("http://{alias}:{}", sc.alias_port));
    assert_eq!(sc.alias_port, producer.image.port, "the internal listener's port");
    assert_ne!(sc.alias_port, producer.http.target(&producer.image), "not the load balancer's target");
    assert_eq!(secret_path(&m, "OPERATOR_TOKEN"), format!("{SECRETS}OPERATOR_TOKEN"));
    assert!(!m.variables.contains_key("OPERATOR_TOKEN"), "OPERATOR_TOKEN must not be a plain variable");

    // Handlers on a shared volume at HANDLERS_DIR, seeded from the image.
    let volume = &m.storage.as_ref().expect("storage").volumes["handlers"];
    assert_eq!(Path::new(&volume.path), config.handlers_dir);
    assert!(!volume.read_only);
    assert_eq!((volume.efs.uid, volume.efs.gid), (65532, 65532), "the image's non-root user owns the volume");
    assert_eq!(config.handlers_seed_dir.as_deref(), Some(Path::new("/opt/handlers")));
    assert_eq!(secret_path(&m, "KAFKA_BROKERS"), format!("{SECRETS}KAFKA_BROKERS"));
    assert!(
        stop_timeout(&m) * 1000 > config.drain_timeout.as_millis() as u64 + 5_000,
        "the stop timeout covers the drain"
    );
}

#[test]
fn service_connect_serves_the_producers_internal_listener_and_the_load_balancer_its_public_one() {
    let m: Service = parse("copilot/producer/manifest.yml");
    let config = producer_config(&m);
    let sc = producer_service_connect();

    // The container maps exactly the two ports Copilot maps (image.port and http.target_port),
    // each named, so the patch adds no port and drops none.
    let mut ports: Vec<u16> = sc.port_mappings.iter().map(|p| p.container_port).collect();
    ports.sort_unstable();
    let mut expected = [m.image.port, m.http.target(&m.image)];
    expected.sort_unstable();
    assert_eq!(ports, expected);
    assert!(sc.port_mappings.iter().all(|p| p.protocol == "tcp"));

    // Service Connect's port name is the internal listener's mapping, and its alias listens there.
    let served = sc.port_mappings.iter().find(|p| p.name == sc.port_name).expect("the port name is a mapping's");
    assert_eq!(served.container_port, config.internal_port, "Service Connect serves INTERNAL_PORT");
    assert_eq!(sc.alias_port, config.internal_port, "http://producer:{} as the host calls it", config.internal_port);
    // The load balancer's target group forwards to the public listener, whatever the names.
    assert_eq!(m.http.target(&m.image), config.port);
}

#[test]
fn the_public_listener_serves_exactly_the_public_routes() {
    use producer::api::Route;
    let public: Vec<(String, &str)> = Route::PUBLIC.iter().map(|r| (r.method().to_string(), r.path())).collect();
    assert_eq!(
        public,
        [
            ("GET".to_string(), "/producer-svc"),
            ("GET".to_string(), "/producer-svc/ping-what"),
            ("POST".to_string(), "/producer-svc/users"),
        ],
        "the load balancer reaches health, ping and user creation, nothing else"
    );
    for route in Route::ALL.into_iter().filter(|r| r.operator_only()) {
        assert!(!Route::PUBLIC.contains(&route), "{route:?} is an operator route");
    }
    for route in [Route::IssueToken, Route::VerifyToken, Route::Metrics] {
        assert!(!Route::PUBLIC.contains(&route), "{route:?} must stay off the public listener");
    }
}

#[test]
fn both_services_take_the_operator_token_from_the_secret_store() {
    for path in ["copilot/producer/manifest.yml", "copilot/host/manifest.yml"] {
        let m: Service = parse(path);
        assert_eq!(secret_path(&m, "OPERATOR_TOKEN"), format!("{SECRETS}OPERATOR_TOKEN"), "{path}");
        assert!(!m.variables.contains_key("OPERATOR_TOKEN"), "{path}: never a plain variable");
        assert_eq!(m.variables.get("APP_ENV").map(text).as_deref(), Some("production"), "{path}: required there");
    }
}

#[test]
fn the_iam_policies_name_exactly_the_topics_and_group_the_services_use() {
    let producer_policy = read("copilot/producer/addons/msk-access.yml");
    for topic in [producer::api::TOPIC_NEW_USER, producer::api::TOPIC_ISSUED_TOKEN] {
        assert!(producer_policy.contains(&format!("- '/{topic}'")), "producer policy misses topic {topic}");
    }
    assert_eq!(producer_policy.matches("':topic/'").count(), 2, "the producer may write its two topics, nothing more");
    assert!(!producer_policy.contains("ReadData") && !producer_policy.contains(":group/"));

    let host: Service = parse("copilot/host/manifest.yml");
    let group = text(&host.variables["KAFKA_GROUP_ID"]);
    let host_policy = read("copilot/host/addons/msk-access.yml");
    assert!(host_policy.contains(&format!("- '/{group}'")), "host policy misses its group {group}");
    for topic in [producer::api::TOPIC_NEW_USER, producer::api::TOPIC_ISSUED_TOKEN] {
        for name in [topic.to_string(), host::handlers::retry_topic(topic), host::handlers::dlq_topic(topic)] {
            assert!(host_policy.contains(&format!("- '/{name}'")), "host policy misses topic {name}");
        }
    }
    for template in xtask::deploy::addon_templates().expect("templates") {
        let text = std::fs::read_to_string(&template).expect("read");
        assert!(
            !text.contains("kafka-cluster:*") && !text.contains("Resource: '*'"),
            "{}: no wildcards",
            template.display()
        );
    }
}

#[test]
fn the_environment_addon_creates_msk_and_publishes_the_brokers_where_the_services_read_them() {
    let addon: serde_yaml::Value = serde_yaml::from_str(&read("copilot/environments/addons/msk.yml")).expect("yaml");
    let resources = addon["Resources"].as_mapping().expect("resources");
    let types: Vec<&str> = resources.values().filter_map(|r| r["Type"].as_str()).collect();
    assert!(types.contains(&"AWS::MSK::ServerlessCluster"));
    let text = read("copilot/environments/addons/msk.yml");
    assert!(text.contains("/copilot/${App}/${Env}/secrets/KAFKA_BROKERS"), "the parameter the manifests read");
    assert!(text.contains("Name: !Sub '${App}-${Env}-MskClusterArn'"), "the export the workload addons import");
    assert!(
        text.contains("FromPort: 9098") && text.contains("SourceSecurityGroupId: !Ref EnvironmentSecurityGroup"),
        "only the services reach MSK"
    );
}

#[test]
fn the_dockerfile_builds_both_targets_as_the_manifests_expect() {
    let dockerfile = read("Dockerfile");
    for stage in ["AS producer", "AS host"] {
        assert!(dockerfile.contains(stage), "Dockerfile lacks the stage {stage}");
    }
    let froms: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        froms.iter().any(|l| l.contains("bookworm")) && froms.iter().any(|l| l.contains("debian12")),
        "same Debian release in build and runtime"
    );
    assert!(
        dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/producer\"]")
            && dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/host\"]")
    );
    assert!(
        dockerfile.contains("COPY --from=builder /src/target/handlers/ /opt/handlers/"),
        "the image carries the default handlers"
    );
    assert_eq!(dockerfile.matches("USER 65532:65532").count(), 2, "both images run as the non-root user");
    assert!(!dockerfile.contains("TOKEN_SECRET"), "no secret in the image");
}

#[test]
fn no_secret_is_committed_in_the_deployment() {
    for path in [
        "copilot/producer/manifest.yml",
        "copilot/producer/overrides/cfn.patches.yml",
        "copilot/host/manifest.yml",
        "Dockerfile",
    ] {
        let text = read(path).to_ascii_lowercase();
        for needle in ["password:", "aws_secret_access_key", "token_secret:", "operator_token:"] {
            let hit = text.lines().any(|l| l.trim_start().starts_with(needle) && !l.contains("/copilot/"));
            assert!(!hit, "{path} holds what looks like a secret ({needle})");
        }
    }
}
