//! A small HTTP client for the gateway's tests.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// A small HTTP client: every answer as (status, headers, JSON body or null).
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

impl Http {
    pub fn new(addr: &str) -> Self {
        Self { client: Client::builder(TokioExecutor::new()).build_http(), base: format!("http://{addr}") }
    }

    /// Like [`Http::new`], with connections made from `local` (another loopback address,
    /// such as 127.0.0.2, is another client to the gateway).
    pub fn from_address(addr: &str, local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        let mut request = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        let response = tokio::time::timeout(Duration::from_secs(40), self.client.request(request))
            .await
            .expect("answered")
            .expect("HTTP");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        let body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        Answer { status, headers, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::GET, path, token, &[], Vec::new()).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(Method::POST, path, token, &[], body.to_string().into_bytes()).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::DELETE, path, token, &[], Vec::new()).await
    }

    pub async fn login(&self, id: &str) -> String {
        let answer = self.post("/login", None, json!({"id": id, "password": format!("pw-{id}")})).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["token"].as_str().expect("token").to_owned()
    }

    pub async fn join(&self, token: &str) -> String {
        let answer = self.post("/matchmaking/join", Some(token), Value::Null).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["ticketId"].as_str().expect("ticketId").to_owned()
    }

    /// Long-polls the ticket until it is no longer `searching`, and expects `matched`.
    pub async fn wait_matched(&self, token: &str, ticket: &str) -> Value {
        for _ in 0..20 {
            let path = format!("/matchmaking/status?ticketId={ticket}&waitMs=10000");
            let answer = self.get(&path, Some(token)).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            match answer.body["status"].as_str() {
                Some("searching") => continue,
                Some("matched") => return answer.body,
                other => panic!("ticket {ticket} ended {other:?}: {}", answer.body),
            }
        }
        panic!("ticket {ticket} was not matched in time");
    }
}
