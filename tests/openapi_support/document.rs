//! The document itself: fetching `/openapi.json` (served as JSON), the endpoints DESIGN.md
//! promises it lists, and walking it for its operations and `$ref`s.

use serde_json::Value;

use crate::common::TestServer;

/// The endpoints DESIGN.md promises (its REST table, and the operational ones).
pub(crate) const EXPECTED: &[(&str, &str)] = &[
    ("post", "/client/community/groups"),
    ("get", "/client/community/groups"),
    ("get", "/client/community/groups/{groupId}"),
    ("patch", "/client/community/groups/{groupId}"),
    ("delete", "/client/community/groups/{groupId}"),
    ("post", "/client/community/groups/{groupId}/messages"),
    ("get", "/client/community/groups/{groupId}/messages"),
    ("post", "/client/community/groups/{groupId}/members"),
    ("delete", "/client/community/groups/{groupId}/members/{email}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

pub(crate) async fn fetch_document(server: &TestServer) -> Value {
    let response = server
        .http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "served as JSON, not {content_type}"
    );
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).expect("/openapi.json parses as JSON")
}

/// Every (method, path) the document lists.
pub(crate) fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                ops.push(((*method).to_owned(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// Every `$ref` string anywhere under `value`.
pub(crate) fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}
