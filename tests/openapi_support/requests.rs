//! Requests the tests send: raw probes with ids that exist nowhere (and recognising the router's
//! own fallback answers), and calls as a user of org `o1` whose whole answer is kept.

use reqwest::Method;
use serde_json::Value;

use crate::common::TestServer;

/// Fills a path template with ids that exist nowhere.
pub(crate) fn fill(path: &str) -> String {
    path.replace("{groupId}", &uuid::Uuid::now_v7().to_string())
        .replace("{email}", "nobody@example.com")
}

/// Whether a response is the router's own fallback (no route, or no such method on it).
pub(crate) fn is_fallback(status: u16, body: &Value) -> bool {
    (status == 404 && body["message"] == "no such route")
        || (status == 405 && body["message"] == "method not allowed on this route")
}

pub(crate) async fn raw(server: &TestServer, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.http.request(method, format!("{}{path}", server.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) text: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A request as `token` (if any) in org `o1`.
pub(crate) async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = server
        .http
        .request(method, format!("{}{path}", server.base))
        .header("orgid", "o1");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    Answer {
        status,
        content_type,
        text,
    }
}
