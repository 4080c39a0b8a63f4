//! Schemathesis (the `st` CLI, run as `schemathesis`; from PyPI, `just setup` installs
//! it) fuzzes a live gateway from its own `GET /openapi.json`: no answer may be a 5xx,
//! and every answer must match the document (its status, content type, headers and body
//! schema). Real matchmaker,
//! orchestrator (process driver), nats-server and redis-server behind it; only 127.0.0.1.

mod support;

use std::process::Command;

use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};

/// What must hold for every generated request.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

fn st(base: &str, token: &str, selection: &[&str]) -> (bool, String) {
    // `st` keeps its state in `.schemathesis/` of its working directory: not the tree's.
    let scratch = tempfile::tempdir().expect("temp dir");
    let output = Command::new("schemathesis")
        .current_dir(scratch.path())
        .args(["run", &format!("{base}/openapi.json"), "--url", base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", CHECKS, "--max-examples", "25", "--seed", "20261130", "--workers", "1"])
        .args(["--request-timeout", "15", "--no-color"])
        .args(selection)
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run `schemathesis` ({err}): install it (`just setup` does: pip install schemathesis)"
            )
        });
    let text =
        format!("{}\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_outside_the_document() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let nats_url = nats.url();
    let _matchmaker = support::start_matchmaker(&nats, &redis, &[]);
    let addr = format!("127.0.0.1:{}", free_port());
    // A node with the process driver: it creates the `servers` bucket the game proxy reads.
    let node_admin = format!("127.0.0.1:{}", free_port());
    let public = format!("ws://{addr}");
    let mut orchestrator = ServiceProcess::start(
        "orchestrator",
        &[],
        &[
            ("MM_NATS__URL", nats_url.as_str()),
            ("MM_ORCHESTRATOR__ADMIN_LISTEN", &node_admin),
            ("MM_ORCHESTRATOR__DRIVER", "process"),
            ("MM_ORCHESTRATOR__NODE", "fuzzed"),
            ("MM_ORCHESTRATOR__PUBLIC_URL", &public),
        ],
    )
    .expect("orchestrator starts");
    orchestrator.wait_healthy(&node_admin).expect("orchestrator healthy");
    let mut gateway = ServiceProcess::start(
        "gateway",
        &[],
        &[
            ("MM_NATS__URL", nats_url.as_str()),
            ("MM_GATEWAY__LISTEN", &addr),
            // Long-polls of any `waitMs` end within the client's timeout.
            ("MM_GATEWAY__LONG_POLL_MAX", "1s"),
        ],
    )
    .expect("gateway starts");
    gateway.wait_healthy(&addr).expect("gateway healthy");
    let token = support::http::Http::new(&addr).login("fuzzer").await;

    let base = format!("http://{addr}");
    // Everything but logout first (it would end the token the rest uses), then logout.
    let (ok, output) = st(&base, &token, &["--exclude-path", "/logout"]);
    assert!(ok, "schemathesis found failures:\n{output}\n{}", gateway.log());
    let (ok, output) = st(&base, &token, &["--include-path", "/logout"]);
    assert!(ok, "schemathesis found failures on /logout:\n{output}\n{}", gateway.log());
}
