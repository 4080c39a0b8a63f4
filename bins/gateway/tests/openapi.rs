//! `GET /openapi.json`: the OpenAPI 3.1 document describes exactly the routes the router
//! serves (read from `routes()` in `src/api.rs`), each with its answers, and every schema
//! it refers to is in it; each documented route is really served (a request to it is not
//! the router's "no route" or "method not allowed").

mod support;

use std::collections::BTreeSet;

use hyper::Method;
use mm_testkit::{NatsServer, ServiceProcess, free_port};
use serde_json::Value;
use support::http::Http;

/// (METHOD, path) of every `.route("path", get(..).post(..))` in `routes()`.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api.rs");
    let start = source.find("fn routes(").expect("routes() in api.rs");
    let body = &source[start..start + source[start..].find("\n}\n").expect("end of routes()")];
    let mut routes = BTreeSet::new();
    for line in body.lines().filter(|line| line.contains(".route(\"")) {
        let after = &line[line.find(".route(\"").expect("found") + ".route(\"".len()..];
        let path = &after[..after.find('"').expect("closing quote")];
        let rest = &after[path.len()..];
        for method in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(at) = rest[from..].find(&call) {
                let at = from + at;
                let before = rest[..at].chars().next_back();
                if matches!(before, Some(' ' | '.' | '(')) {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                }
                from = at + call.len();
            }
        }
    }
    routes
}

fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    document.pointer(reference.strip_prefix('#')?)
}

fn references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => references(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route_the_router_serves() {
    let nats = NatsServer::start().expect("nats-server");
    let addr = format!("127.0.0.1:{}", free_port());
    let nats_url = nats.url();
    let mut gateway = ServiceProcess::start(
        "gateway",
        &[],
        &[("MM_NATS__URL", nats_url.as_str()), ("MM_GATEWAY__LISTEN", &addr)],
    )
    .expect("gateway starts");
    gateway.wait_healthy(&addr).expect("gateway healthy");
    let http = Http::new(&addr);

    let answer = http.get("/openapi.json", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let content_type = answer.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let document = answer.body;
    assert!(
        document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1: {}",
        document["openapi"]
    );

    // Exactly the router's routes.
    let served = routes_in_source();
    assert!(served.len() >= 14, "routes() read: {served:?}");
    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            documented.insert((method.to_uppercase(), path.clone()));
            let responses = operation["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            let success = responses.keys().any(|status| status.starts_with('2') || status == "101");
            assert!(success, "{method} {path}: no success answer: {responses:?}");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema.as_str(),
                        Some("#/components/schemas/ErrorBody"),
                        "{method} {path} {status}: errors are {{\"error\"}}"
                    );
                }
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(undocumented.is_empty(), "routes the router serves but the document lacks: {undocumented:?}");
    assert!(unserved.is_empty(), "documented routes the router does not serve: {unserved:?}");

    // Every reference resolves; the error shape is {"error": string}.
    let mut refs = Vec::new();
    references(&document, &mut refs);
    for reference in &refs {
        assert!(resolve(&document, reference).is_some(), "unresolved {reference}");
    }
    let error = &document["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["properties"]["error"]["type"], "string", "{error}");
    for schema in ["LoginRequest", "LoginReply", "TicketView", "JoinBody", "PurchaseReply", "PartyView"] {
        assert!(document["components"]["schemas"][schema].is_object(), "schema {schema}");
    }
    assert!(document["components"]["securitySchemes"]["bearer"].is_object(), "the bearer scheme");

    // Each documented route is served: no route-level 404 or 405.
    for (method, path) in &documented {
        let concrete = path.replace("{game_id}", "some-game");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let answer = http.send(method.clone(), &concrete, None, &[], Vec::new()).await;
        let message = answer.body["error"].as_str().unwrap_or("");
        assert!(
            answer.status != 405 && !message.starts_with("no route"),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
    }
}
