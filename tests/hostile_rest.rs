//! Hostile and broken clients over REST: whatever they send, they get an answer in the error
//! shape, the process keeps its memory bounded, and nobody reads what is not theirs.
//!
//! - `/metrics` does not grow with invented methods or paths.
//! - Numbers out of range are 400, never a dropped connection; a panicking handler is 500.
//! - A token is refused before its `nbf` (past the clock leeway).
//! - E-mails fold ASCII letters only: the Kelvin sign is not `k`.
//! - Org ids are `A-Z a-z 0-9 . _ -`, so invisible and bidirectional characters are refused.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Backend, TestServer, User, assert_error_shape};
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, header::HeaderValue};
use serde_json::{Value, json};

const ORG: &str = "org-a";
const GROUPS: &str = "/client/community/groups";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// An HS256 token with the server's secret and these claims on top of a valid hour-long one.
fn forge(org: &str, email: &str, extra: Value) -> String {
    let now = now_secs();
    let mut claims = json!({ "email": email, "sub": email, "orgId": org, "iat": now, "exp": now + 3600 });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .expect("encode token")
}

fn user_with_token(server: &TestServer, org: &str, token: String) -> User {
    User {
        base: server.base.clone(),
        http: server.http.clone(),
        org: Some(org.to_owned()),
        token: Some(token),
    }
}

/// `/metrics` as text.
async fn scrape(server: &TestServer) -> String {
    let response = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .expect("scrape /metrics");
    assert_eq!(response.status(), 200);
    response.text().await.expect("metrics text")
}

/// The `http_requests_total` series of a scrape.
fn request_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_and_paths_add_no_metric_series() {
    let server = TestServer::start(Backend::Sqlite).await;
    let user = server.user(ORG, "ann@example.com");
    user.get(GROUPS).await.expect(200);
    let before = scrape(&server).await;

    // Half at paths no route matches, half at a real route with a method it does not serve.
    let statuses: Vec<u16> = futures::stream::iter(0..2_000)
        .map(|i| {
            let http = server.http.clone();
            let method = Method::from_bytes(format!("M{i:05}XXX").as_bytes()).expect("extension method");
            let url = if i % 2 == 0 {
                format!("{}/nope/{i}", server.base)
            } else {
                format!("{}{GROUPS}", server.base)
            };
            async move {
                http.request(method, url)
                    .send()
                    .await
                    .expect("request")
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 404).count(), 1_000, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 405).count(), 1_000, "{statuses:?}");

    let after = scrape(&server).await;
    let (series_before, series_after) = (request_series(&before), request_series(&after));
    // At most: `other` at the unmatched route, `other` at the groups route, and the first scrape.
    assert!(
        series_after.len() <= series_before.len() + 3,
        "2,000 invented requests added {} series:\n{}",
        series_after.len() - series_before.len(),
        series_after.join("\n")
    );
    assert!(
        after.len() <= before.len() + 16 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        after.contains("http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"} 1000\n"),
        "{after}"
    );
    assert!(
        after.contains(&format!(
            "http_requests_total{{method=\"other\",route=\"{GROUPS}\",status=\"405\"}} 1000\n"
        )),
        "{after}"
    );
    assert!(!after.contains("M00001XXX") && !after.contains("/nope"), "{after}");
}

/// Every out-of-range number in a query is a 400 in the error shape, and the server still
/// answers afterwards; the largest accepted values answer 200.
async fn out_of_range_numbers_are_400(backend: Backend) {
    let server = TestServer::start(backend).await;
    let ann = server.user(ORG, "ann@example.com");
    let group = ann.create_group(json!({ "name": "numbers", "type": "public" })).await;
    ann.post_message(&group, "one").await;
    let messages = format!("{GROUPS}/{group}/messages");

    // Each with the parameter its message names.
    let refused = [
        (format!("{GROUPS}?pageNum=18446744073709551615&limit=100"), "pageNum"),
        (format!("{GROUPS}?pageNum=999999999999999999"), "pageNum"),
        (format!("{GROUPS}?pageNum=9223372036854775807"), "pageNum"),
        (format!("{GROUPS}?pageNum=18446744073709551616"), "pageNum"),
        (format!("{GROUPS}?pageNum=1000001"), "pageNum"),
        (format!("{GROUPS}?pageNum=0"), "pageNum"),
        (format!("{GROUPS}?pageNum=1e3"), "pageNum"),
        (
            format!("{GROUPS}?visibility=public&pageNum=18446744073709551615&limit=100"),
            "pageNum",
        ),
        (format!("{GROUPS}?limit=18446744073709551615"), "limit"),
        (format!("{GROUPS}?limit=99999999999999999999999"), "limit"),
        (format!("{messages}?limit=18446744073709551615"), "limit"),
        (format!("{messages}?afterSeq=9223372036854775808"), "afterSeq"),
        (format!("{messages}?afterSeq=18446744073709551615"), "afterSeq"),
        (format!("{messages}?afterSeq=-9223372036854775808"), "afterSeq"),
        (format!("{messages}?afterSeq=-1"), "afterSeq"),
    ];
    for (path, parameter) in &refused {
        let reply = ann.get(path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert_error_shape(&reply.body, 400);
        let message = reply.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(parameter),
            "{path}: the message names {parameter}: {message}"
        );
    }

    let last_page = ann
        .get(&format!("{GROUPS}?pageNum=1000000&limit=100"))
        .await
        .expect(200);
    assert_eq!(last_page["data"], json!([]), "{last_page}");
    assert_eq!(last_page["total"], 1, "{last_page}");
    let public_last_page = ann
        .get(&format!("{GROUPS}?visibility=public&pageNum=1000000&limit=100"))
        .await
        .expect(200);
    assert_eq!(public_last_page["data"], json!([]), "{public_last_page}");
    let beyond = ann
        .get(&format!("{messages}?afterSeq=9223372036854775807&limit=200"))
        .await
        .expect(200);
    assert_eq!(beyond, json!({ "data": [], "hasMore": false }));

    // A number inside a body that no column is sized for is kept as it was sent.
    let huge = ann
        .post(
            &messages,
            json!({ "content": "big file", "attachments": [{ "url": "https://files.test/a", "size": u64::MAX }] }),
        )
        .await
        .expect(201);
    assert_eq!(huge["attachments"][0]["size"], u64::MAX, "{huge}");
    let history = ann.get(&messages).await.expect(200);
    assert_eq!(history["data"][0]["attachments"][0]["size"], u64::MAX, "{history}");

    let list = ann.get(GROUPS).await.expect(200);
    assert_eq!(list["total"], 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_number_bound_is_documented() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc: Value = server
        .http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("openapi json");
    let params = doc["paths"][GROUPS]["get"]["parameters"]
        .as_array()
        .expect("list parameters");
    let page_num = params
        .iter()
        .find(|p| p["name"] == "pageNum")
        .expect("pageNum is documented");
    assert_eq!(page_num["schema"]["minimum"], 1, "{page_num}");
    assert_eq!(
        page_num["schema"]["maximum"].as_f64(),
        Some(community_chat_api::routes::groups::MAX_PAGE_NUM as f64),
        "{page_num}"
    );
}

/// The layer every router answers panics with, around a handler that panics: 500 in the error
/// shape, the panic's text kept from the client, and the server goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_500_in_the_error_shape() {
    async fn buggy() -> &'static str {
        panic!("a bug with a secret in its message")
    }
    async fn fine() -> &'static str {
        "fine"
    }
    let app = axum::Router::new()
        .route("/buggy", axum::routing::get(buggy))
        .route("/fine", axum::routing::get(fine))
        .layer(community_chat_api::panics::catch_panics());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let http = reqwest::Client::new();

    for _ in 0..3 {
        let response = http
            .get(format!("{base}/buggy"))
            .send()
            .await
            .expect("an answer, not a reset");
        assert_eq!(response.status(), 500);
        let text = response.text().await.expect("body");
        assert!(!text.contains("secret"), "{text}");
        let body: Value = serde_json::from_str(&text).expect("JSON body");
        assert_error_shape(&body, 500);
        let fine = http.get(format!("{base}/fine")).send().await.expect("fine");
        assert_eq!(fine.text().await.expect("body"), "fine");
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_before_its_nbf() {
    let server = TestServer::start(Backend::Sqlite).await;
    let email = "ann@example.com";
    let with_nbf = |nbf: Value| user_with_token(&server, ORG, forge(ORG, email, json!({ "nbf": nbf })));

    let later = with_nbf(json!(now_secs() + 3600)).get(GROUPS).await.expect(401);
    assert_eq!(later["message"], "token is not valid yet", "{later}");
    with_nbf(json!(now_secs() + 10)).get(GROUPS).await.expect(200);
    with_nbf(json!(now_secs() - 60)).get(GROUPS).await.expect(200);
    with_nbf(json!("soon")).get(GROUPS).await.expect(401);
    // Without `nbf` a token is valid from the start.
    user_with_token(&server, ORG, forge(ORG, email, json!({})))
        .get(GROUPS)
        .await
        .expect(200);
}

/// `\u{212A}` (the Kelvin sign) lower-cases to `k` under Unicode rules; it must stay a
/// different user from `kate@a.com`.
async fn the_kelvin_sign_is_not_k(backend: Backend) {
    let server = TestServer::start(backend).await;
    let kate = server.user(ORG, "kate@a.com");
    let group = kate
        .create_group(json!({ "name": "kate only", "type": "private" }))
        .await;
    kate.post_message(&group, "private").await;
    let path = format!("{GROUPS}/{group}");

    for kelvin in [
        server.user(ORG, "\u{212A}ate@a.com"),
        user_with_token(&server, ORG, forge(ORG, "\u{212A}ATE@A.COM", json!({}))),
    ] {
        kelvin.get(&path).await.expect(404);
        kelvin.get(&format!("{path}/messages")).await.expect(404);
        kelvin
            .post(&format!("{path}/messages"), json!({ "content": "hi" }))
            .await
            .expect(404);
        let list = kelvin.get(GROUPS).await.expect(200);
        assert_eq!(list["total"], 0, "{list}");
    }

    // ASCII letters still fold: KATE@A.COM is kate.
    let upper = user_with_token(&server, ORG, forge(ORG, "KATE@A.COM", json!({})));
    let read = upper.get(&path).await.expect(200);
    assert_eq!(read["myRole"], "admin", "{read}");

    // The Kelvin user is a user of its own, under its own name.
    let kelvin = server.user(ORG, "\u{212A}ate@a.com");
    let own = kelvin.create_group(json!({ "name": "kelvin's" })).await;
    let own = kelvin.get(&format!("{GROUPS}/{own}")).await.expect(200);
    assert_eq!(own["createdBy"], "\u{212A}ate@a.com", "{own}");
    kate.get(&format!("{GROUPS}/{}", own["id"].as_str().expect("id")))
        .await
        .expect(404);
}

/// A GET of the group list with raw `orgid` bytes and a token whose org claim is the same text.
async fn list_as_org(server: &TestServer, org: &str) -> (u16, Value) {
    let token = forge(org, "ann@example.com", json!({}));
    let response = server
        .http
        .get(format!("{}{GROUPS}", server.base))
        .header("orgid", HeaderValue::from_bytes(org.as_bytes()).expect("header bytes"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_ids_outside_their_character_set_are_400() {
    let server = TestServer::start(Backend::Sqlite).await;
    let too_long = "x".repeat(129);
    for org in [
        "\u{202E}Agro",
        "Agro\u{200B}",
        "\u{2066}org\u{2069}",
        "org\u{FEFF}",
        "\u{212A}org",
        "caf\u{E9}",
        "acme@corp",
        "a/b",
        "a+b",
        "a:b",
        too_long.as_str(),
    ] {
        let (status, body) = list_as_org(&server, org).await;
        assert_eq!(status, 400, "{org:?}: {body}");
        assert_error_shape(&body, 400);
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("orgid")),
            "{org:?}: {body}"
        );
    }
    for org in ["Org_1.eu-west", "0", &"x".repeat(128)] {
        let (status, body) = list_as_org(&server, org).await;
        assert_eq!(status, 200, "{org:?}: {body}");
    }
}

on_both_backends!(out_of_range_numbers_are_400, the_kelvin_sign_is_not_k);
