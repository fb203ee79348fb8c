//! `host check` and `host invoke`, run as a handler author would: the real binary, its exit codes
//! and its JSON line.

mod support;

use std::process::Output;
use support::{StubProducer, fixture, handler};
use tokio::process::Command;

async fn host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host")).args(args).output().await.expect("run host")
}

fn json_line(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test]
async fn check_accepts_a_handler_and_rejects_other_components_with_exit_2() {
    let ok = host(&["check", handler("issued-token").to_str().expect("utf8")]).await;
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("sha256:"));

    let bad = host(&["check", fixture("no-handle").to_str().expect("utf8")]).await;
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("no export `handle`"), "{stderr}");

    let missing = host(&["check", "/nonexistent.wasm"]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[tokio::test]
async fn invoke_prints_the_outcome_calls_and_events_as_one_json_line() {
    let stub = StubProducer::start().await;
    let user = r#"{"id":"0194f3a2-7b1c-7d3e-9f00-123456789abc","name":"Ada","email":"ada@example.com","created_at":"2026-11-26T13:00:00Z"}"#;
    let out = host(&[
        "invoke",
        "--handler",
        handler("new-user-created").to_str().expect("utf8"),
        "--topic",
        "new-user-created",
        "--key",
        "k",
        "--value",
        user,
        "--header",
        "source=test",
        "--producer-url",
        &stub.url,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json_line(&out);
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["reason"], serde_json::Value::Null);
    assert_eq!(v["calls"], serde_json::json!([{"method": "POST", "path": "/producer-svc/tokens", "status": 201}]));
    assert_eq!(v["events"][0]["kind"], "user-created");
    assert_eq!(v["events"][0]["payload"]["email"], "ada@example.com");
    assert!(v["duration_us"].as_u64().is_some());
}

#[tokio::test]
async fn invoke_without_a_producer_reports_retry_and_still_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let value = dir.path().join("user.json");
    std::fs::write(&value, r#"{"id":"0194f3a2-7b1c-7d3e-9f00-123456789abc","name":"Ada","email":"a@b.c","created_at":"2026-11-26T13:00:00Z"}"#)
        .expect("write");
    let out = host(&[
        "invoke",
        "--handler",
        handler("new-user-created").to_str().expect("utf8"),
        "--topic",
        "new-user-created",
        "--value-file",
        value.to_str().expect("utf8"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    let v = json_line(&out);
    assert_eq!(v["outcome"], "retry");
    assert!(v["reason"].as_str().expect("reason").contains("unreachable"));
}

#[tokio::test]
async fn invoke_applies_a_limits_file_and_reports_sandbox_outcomes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = dir.path().join("t.toml");
    std::fs::write(&limits, "[limits]\ncall_timeout_ms = 100\nmax_memory_bytes = 4194304\n").expect("write");
    let hostile = fixture("hostile");
    for (key, outcome) in
        [("loop", "timeout"), ("grow", "memory"), ("panic", "trap"), ("reject", "reject"), ("retry", "retry")]
    {
        let out = host(&[
            "invoke",
            "--handler",
            hostile.to_str().expect("utf8"),
            "--topic",
            "t",
            "--key",
            key,
            "--value",
            "because",
            "--limits",
            limits.to_str().expect("utf8"),
        ])
        .await;
        assert_eq!(out.status.code(), Some(0), "{key}: {out:?}");
        assert_eq!(json_line(&out)["outcome"], outcome, "{key}");
    }
    std::fs::write(&limits, "[limits]\ncall_timeout = 100\n").expect("write");
    let out = host(&[
        "invoke",
        "--handler",
        hostile.to_str().expect("utf8"),
        "--topic",
        "t",
        "--limits",
        limits.to_str().expect("utf8"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `call_timeout`"));
}

#[tokio::test]
async fn invoke_with_bad_usage_exits_2() {
    let h = handler("issued-token");
    let h = h.to_str().expect("utf8");
    for args in [
        vec!["invoke", "--handler", h],
        vec!["invoke", "--handler", h, "--topic", "t", "--value", "a", "--value-file", "b"],
        vec!["invoke", "--handler", h, "--topic", "t", "--header", "novalue"],
        vec!["invoke", "--handler", h, "--topic", "t", "--attempt", "0"],
        vec!["invoke", "--handler", h, "--topic", "t", "--producer-url", "ftp://x"],
        vec!["invoke", "--handler", "/nonexistent.wasm", "--topic", "t"],
    ] {
        let out = host(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn invoke_of_a_guest_that_blocks_forever_ends_at_its_time_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = dir.path().join("t.toml");
    std::fs::write(&limits, "[limits]\ncall_timeout_ms = 300\n").expect("write");
    let started = std::time::Instant::now();
    let out = host(&[
        "invoke",
        "--handler",
        fixture("hostile").to_str().expect("utf8"),
        "--topic",
        "t",
        "--key",
        "block",
        "--value",
        "forever",
        "--limits",
        limits.to_str().expect("utf8"),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_line(&out)["outcome"], "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn check_and_invoke_refuse_a_device_or_an_oversized_file_without_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("zero.wasm");
    std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
    let huge = dir.path().join("huge.wasm");
    std::fs::File::create(&huge).expect("create").set_len(1 << 30).expect("a sparse 1 GiB file");
    let fifo = dir.path().join("fifo.wasm");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    for (path, expected) in
        [(&link, "is not a regular file"), (&huge, "over the limit"), (&fifo, "is not a regular file")]
    {
        let path = path.to_str().expect("utf8");
        let check = host(&["check", path]).await;
        assert_eq!(check.status.code(), Some(2), "{check:?}");
        assert!(String::from_utf8_lossy(&check.stderr).contains(expected), "{check:?}");
        let invoke = host(&["invoke", "--handler", path, "--topic", "t"]).await;
        assert_eq!(invoke.status.code(), Some(2), "{invoke:?}");
        assert!(String::from_utf8_lossy(&invoke.stderr).contains(expected), "{invoke:?}");
        let limits = host(&[
            "invoke",
            "--handler",
            fixture("hostile").to_str().expect("utf8"),
            "--topic",
            "t",
            "--limits",
            path,
        ])
        .await;
        assert_eq!(limits.status.code(), Some(2), "a settings file too: {limits:?}");
    }
}

#[tokio::test]
async fn a_second_check_of_a_component_loads_it_from_the_compilation_cache_even_one_named_relative() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let component = std::fs::canonicalize(handler("issued-token")).expect("the handler");
    let check = || async {
        Command::new(env!("CARGO_BIN_EXE_host"))
            .args(["check", component.to_str().expect("utf8")])
            .env("CACHE_DIR", "compiled")
            .current_dir(cwd.path())
            .output()
            .await
            .expect("run host")
    };
    let first = check().await;
    assert!(String::from_utf8_lossy(&first.stdout).contains("; compiled in"), "{first:?}");
    assert!(cwd.path().join("compiled/manifest").is_file(), "the cache is under the working directory");
    let second = check().await;
    assert!(String::from_utf8_lossy(&second.stdout).contains("loaded from the compilation cache"), "{second:?}");
}

#[tokio::test]
async fn invoke_shows_what_the_handler_wrote_to_its_standard_error() {
    let out = host(&[
        "invoke",
        "--handler",
        fixture("hostile").to_str().expect("utf8"),
        "--topic",
        "t",
        "--key",
        "stderr",
        "--value",
        "0",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = json_line(&out);
    assert_eq!(v["outcome"], "trap");
    let stderr = v["stderr"].as_str().expect("the handler's stderr in the report");
    assert!(stderr.contains("Traceback") && stderr.contains("after writing to stderr"), "{stderr}");
}
