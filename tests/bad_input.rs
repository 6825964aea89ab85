//! Bad input, as a table: each request is made by the group's admin (so only input checks can
//! stop it), must answer its 4xx with the `{ statusCode, message, error }` shape, and must leave
//! the data exactly as it was: the group, its members, its history, another group, and the
//! group lists are read before and after every case. All cases run; failures are listed at the
//! end. Then the limits: inclusive at their default, and configurable.

mod common;

use common::{Backend, TestServer, User, check_error_shape};
use reqwest::Method;
use serde_json::{Value, json};

const ORG: &str = "org-a";
const ADMIN: &str = "ann@example.com";
const MEMBER: &str = "bob@example.com";
const GROUPS: &str = "/client/community/groups";

/// What a case sends as its body.
enum Body {
    None,
    /// Serialised JSON, `Content-Type: application/json`.
    Json(Value),
    /// These bytes, with this `Content-Type` (none when `None`).
    Raw(Option<&'static str>, Vec<u8>),
}

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Body,
    expect: u16,
}

fn case(name: &'static str, method: Method, path: &str, body: Body, expect: u16) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        body,
        expect,
    }
}

fn json(v: Value) -> Body {
    Body::Json(v)
}

fn raw_json(text: &str) -> Body {
    Body::Raw(Some("application/json"), text.as_bytes().to_vec())
}

fn text(n: usize) -> String {
    "x".repeat(n)
}

fn attachments(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "url": format!("https://files.test/{i}.png") }))
            .collect(),
    )
}

/// The fixture every case runs against.
struct World {
    server: TestServer,
    admin: User,
    /// The group the cases aim at (public, admin + one member, three messages).
    group: String,
    /// Another group of the same admin, with one message.
    other_group: String,
    other_message: String,
    first_message: String,
}

async fn world(backend: Backend, flags: &[&str]) -> World {
    let server = TestServer::start_with(backend, flags).await;
    let admin = server.user(ORG, ADMIN);
    let group = admin
        .create_group(json!({
            // Short enough for the small limits of `limits_are_configurable`.
            "name": "Target",
            "description": "the target",
            "type": "public",
            "members": [{ "email": MEMBER, "role": "member" }],
        }))
        .await;
    let first = admin.post_message(&group, "one").await;
    admin.post_message(&group, "two").await;
    admin.post_message(&group, "three").await;
    let other_group = admin.create_group(json!({ "name": "Other", "type": "private" })).await;
    let other = admin.post_message(&other_group, "elsewhere").await;
    World {
        server,
        admin,
        group,
        other_group,
        other_message: other["id"].as_str().expect("id").to_owned(),
        first_message: first["id"].as_str().expect("id").to_owned(),
    }
}

/// Everything a rejected request must leave alone.
async fn snapshot(w: &World) -> Vec<(String, u16, Value)> {
    let member = w.server.user(ORG, MEMBER);
    let reads = [
        (&w.admin, format!("{GROUPS}/{}", w.group)),
        (&w.admin, format!("{GROUPS}/{}/messages?limit=200", w.group)),
        (&w.admin, format!("{GROUPS}/{}", w.other_group)),
        (&w.admin, format!("{GROUPS}/{}/messages?limit=200", w.other_group)),
        (&w.admin, format!("{GROUPS}?limit=100")),
        (&w.admin, format!("{GROUPS}?visibility=public&limit=100")),
        (&member, format!("{GROUPS}?limit=100")),
    ];
    let mut out = Vec::new();
    for (user, path) in reads {
        let reply = user.get(&path).await;
        out.push((format!("GET {path}"), reply.status.as_u16(), reply.body));
    }
    out
}

/// Sends `body` as `user` (raw bodies are sent as they are, with their own content type).
async fn send(user: &User, method: Method, path: &str, body: Body) -> (u16, Value) {
    let mut request = user
        .http
        .request(method, format!("{}{path}", user.base))
        .bearer_auth(user.token.as_deref().expect("token"))
        .header("orgid", user.org.as_deref().expect("org"));
    match body {
        Body::None => {}
        Body::Json(v) => request = request.json(&v),
        Body::Raw(content_type, bytes) => {
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            request = request.body(bytes);
        }
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Runs every case, returns the failures.
async fn run(w: &World, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let before = snapshot(w).await;
        let label = format!("{} ({} {})", c.name, c.method, short(&c.path));
        let (status, body) = send(&w.admin, c.method, &c.path, c.body).await;
        if status != c.expect {
            failures.push(format!("{label}: expected {}, got {status} {body}", c.expect));
        }
        if status >= 400
            && let Err(problem) = check_error_shape(&body, status)
        {
            failures.push(format!("{label}: {problem}"));
        }
        if let Some(change) = common::snapshot_difference(&before, &snapshot(w).await) {
            failures.push(format!("{label}: rejected, but {change}"));
        }
    }
    failures
}

fn short(path: &str) -> String {
    if path.len() > 120 {
        format!("{}...", &path[..120])
    } else {
        path.to_owned()
    }
}

/// One line per case: name, method, path, body, expected status.
#[rustfmt::skip]
fn bad_input_cases(w: &World) -> Vec<Case> {
    use Method as M;
    let g = format!("{GROUPS}/{}", w.group);
    let msgs = format!("{g}/messages");
    let members = format!("{g}/members");
    let unknown_uuid = uuid::Uuid::now_v7().to_string();
    let over_a_mib = || text(1_150_000);

    vec![
        // Create a group.
        case("malformed JSON", M::POST, GROUPS, raw_json(r#"{"name": "x","#), 400),
        case("JSON array instead of an object", M::POST, GROUPS, raw_json("[1, 2]"), 400),
        case("empty body", M::POST, GROUPS, raw_json(""), 400),
        case("name is a number", M::POST, GROUPS, json(json!({ "name": 5 })), 400),
        case("members is a string", M::POST, GROUPS, json(json!({ "name": "x", "members": "x" })), 400),
        case("unknown field", M::POST, GROUPS, json(json!({ "name": "x", "colour": "red" })), 400),
        case("unknown field in a member", M::POST, GROUPS,
            json(json!({ "name": "x", "members": [{ "email": MEMBER, "role": "member", "colour": "red" }] })), 400),
        case("missing name", M::POST, GROUPS, json(json!({ "description": "no name" })), 400),
        case("null name", M::POST, GROUPS, json(json!({ "name": null })), 400),
        case("empty name", M::POST, GROUPS, json(json!({ "name": "" })), 400),
        case("whitespace name", M::POST, GROUPS, json(json!({ "name": " \t  " })), 400),
        case("name with a control character", M::POST, GROUPS, json(json!({ "name": "a\u{7}b" })), 400),
        case("name of 101 characters", M::POST, GROUPS, json(json!({ "name": text(101) })), 400),
        case("description of 1001 characters", M::POST, GROUPS,
            json(json!({ "name": "x", "description": text(1001) })), 400),
        case("description with a NUL character", M::POST, GROUPS,
            json(json!({ "name": "x", "description": "a\u{0}b" })), 400),
        case("invalid e-mail in members", M::POST, GROUPS,
            json(json!({ "name": "x", "members": [{ "email": "not-an-email", "role": "member" }] })), 400),
        case("member without e-mail", M::POST, GROUPS, json(json!({ "name": "x", "members": [{ "role": "member" }] })), 400),
        case("unknown role in members", M::POST, GROUPS,
            json(json!({ "name": "x", "members": [{ "email": "dan@example.com", "role": "owner" }] })), 400),
        case("unknown type", M::POST, GROUPS, json(json!({ "name": "x", "type": "secret" })), 400),
        case("empty page", M::POST, GROUPS, json(json!({ "name": "x", "page": "  " })), 400),
        case("body over 1 MiB", M::POST, GROUPS, json(json!({ "name": "x", "description": over_a_mib() })), 413),
        case("text/plain content type", M::POST, GROUPS,
            Body::Raw(Some("text/plain"), br#"{"name": "x"}"#.to_vec()), 400),
        case("no content type", M::POST, GROUPS, Body::Raw(None, br#"{"name": "x"}"#.to_vec()), 400),

        // Update a group.
        case("malformed JSON", M::PATCH, &g, raw_json("{name: x}"), 400),
        case("name is a number", M::PATCH, &g, json(json!({ "name": 5 })), 400),
        case("unknown field", M::PATCH, &g, json(json!({ "colour": "red" })), 400),
        case("empty name", M::PATCH, &g, json(json!({ "name": "" })), 400),
        case("whitespace name", M::PATCH, &g, json(json!({ "name": "   " })), 400),
        case("name of 101 characters", M::PATCH, &g, json(json!({ "name": text(101) })), 400),
        case("description of 1001 characters", M::PATCH, &g, json(json!({ "description": text(1001) })), 400),
        case("unknown type", M::PATCH, &g, json(json!({ "type": "secret" })), 400),
        case("empty page", M::PATCH, &g, json(json!({ "page": "" })), 400),
        case("a valid change with an invalid one", M::PATCH, &g,
            json(json!({ "name": "fine", "description": text(1001) })), 400),
        case("text/plain content type", M::PATCH, &g,
            Body::Raw(Some("text/plain"), br#"{"name": "x"}"#.to_vec()), 400),

        // Post a message.
        case("malformed JSON", M::POST, &msgs, raw_json(r#"{"content": "#), 400),
        case("content is a number", M::POST, &msgs, json(json!({ "content": 5 })), 400),
        case("unknown field", M::POST, &msgs, json(json!({ "content": "hi", "colour": "red" })), 400),
        case("missing content", M::POST, &msgs, json(json!({ "contentType": "text" })), 400),
        case("empty content", M::POST, &msgs, json(json!({ "content": "" })), 400),
        case("whitespace content", M::POST, &msgs, json(json!({ "content": " \n " })), 400),
        case("content with a NUL character", M::POST, &msgs, json(json!({ "content": "a\u{0}b" })), 400),
        case("content of 10,001 characters", M::POST, &msgs, json(json!({ "content": text(10_001) })), 400),
        case("unknown contentType", M::POST, &msgs, json(json!({ "content": "hi", "contentType": "video" })), 400),
        case("11 attachments", M::POST, &msgs, json(json!({ "content": "hi", "attachments": attachments(11) })), 400),
        case("attachments is a string", M::POST, &msgs, json(json!({ "content": "hi", "attachments": "x" })), 400),
        case("attachment without url", M::POST, &msgs,
            json(json!({ "content": "hi", "attachments": [{ "name": "a.png" }] })), 400),
        case("attachment with an empty url", M::POST, &msgs,
            json(json!({ "content": "hi", "attachments": [{ "url": " " }] })), 400),
        case("attachment with an unknown field", M::POST, &msgs,
            json(json!({ "content": "hi", "attachments": [{ "url": "https://x.test/a", "colour": "red" }] })), 400),
        case("attachment with a negative size", M::POST, &msgs,
            json(json!({ "content": "hi", "attachments": [{ "url": "https://x.test/a", "size": -1 }] })), 400),
        case("replyTo a message of another group", M::POST, &msgs,
            json(json!({ "content": "hi", "replyTo": w.other_message })), 400),
        case("replyTo not a uuid", M::POST, &msgs, json(json!({ "content": "hi", "replyTo": "not-a-uuid" })), 400),
        case("replyTo an unknown message", M::POST, &msgs, json(json!({ "content": "hi", "replyTo": unknown_uuid })), 400),
        case("clientMessageId of 129 characters", M::POST, &msgs,
            json(json!({ "content": "hi", "clientMessageId": text(129) })), 400),
        case("empty clientMessageId", M::POST, &msgs, json(json!({ "content": "hi", "clientMessageId": "" })), 400),
        case("body over 1 MiB", M::POST, &msgs, json(json!({ "content": over_a_mib() })), 413),
        case("text/plain content type", M::POST, &msgs,
            Body::Raw(Some("text/plain"), br#"{"content": "hi"}"#.to_vec()), 400),

        // Add a member.
        case("invalid e-mail", M::POST, &members, json(json!({ "email": "not-an-email" })), 400),
        case("e-mail is a number", M::POST, &members, json(json!({ "email": 5 })), 400),
        case("missing e-mail", M::POST, &members, json(json!({ "role": "member" })), 400),
        case("unknown role", M::POST, &members, json(json!({ "email": "dan@example.com", "role": "owner" })), 400),
        case("unknown field", M::POST, &members, json(json!({ "email": "dan@example.com", "colour": "red" })), 400),
        case("malformed JSON", M::POST, &members, raw_json(r#"{"email""#), 400),
        case("text/plain content type", M::POST, &members,
            Body::Raw(Some("text/plain"), br#"{"email": "dan@example.com"}"#.to_vec()), 400),

        // Remove a member.
        case("invalid e-mail in the path", M::DELETE, &format!("{members}/not-an-email"), Body::None, 400),

        // History.
        case("limit=0", M::GET, &format!("{msgs}?limit=0"), Body::None, 400),
        case("limit=201", M::GET, &format!("{msgs}?limit=201"), Body::None, 400),
        case("limit=abc", M::GET, &format!("{msgs}?limit=abc"), Body::None, 400),
        case("limit=-1", M::GET, &format!("{msgs}?limit=-1"), Body::None, 400),
        case("before not a uuid", M::GET, &format!("{msgs}?before=not-a-uuid"), Body::None, 400),
        case("before of no message", M::GET, &format!("{msgs}?before={unknown_uuid}"), Body::None, 400),
        case("after of no message", M::GET, &format!("{msgs}?after={unknown_uuid}"), Body::None, 400),
        case("before a message of another group", M::GET,
            &format!("{msgs}?before={}", w.other_message), Body::None, 400),
        case("after a message of another group", M::GET,
            &format!("{msgs}?after={}", w.other_message), Body::None, 400),
        case("before and after together", M::GET,
            &format!("{msgs}?before={0}&after={0}", w.first_message), Body::None, 400),
        case("after and afterSeq together", M::GET,
            &format!("{msgs}?after={}&afterSeq=0", w.first_message), Body::None, 400),
        case("afterSeq=-1", M::GET, &format!("{msgs}?afterSeq=-1"), Body::None, 400),
        case("afterSeq=abc", M::GET, &format!("{msgs}?afterSeq=abc"), Body::None, 400),

        // List.
        case("limit=101", M::GET, &format!("{GROUPS}?limit=101"), Body::None, 400),
        case("limit=0", M::GET, &format!("{GROUPS}?limit=0"), Body::None, 400),
        case("limit=abc", M::GET, &format!("{GROUPS}?limit=abc"), Body::None, 400),
        case("pageNum=0", M::GET, &format!("{GROUPS}?pageNum=0"), Body::None, 400),
        case("pageNum=-1", M::GET, &format!("{GROUPS}?pageNum=-1"), Body::None, 400),
        case("visibility=bogus", M::GET, &format!("{GROUPS}?visibility=bogus"), Body::None, 400),

        // A group id that is not a uuid.
        case("group id not a uuid", M::GET, &format!("{GROUPS}/not-a-uuid"), Body::None, 400),
        case("group id not a uuid", M::PATCH, &format!("{GROUPS}/not-a-uuid"), json(json!({ "name": "x" })), 400),
        case("group id not a uuid", M::DELETE, &format!("{GROUPS}/not-a-uuid"), Body::None, 400),
        case("group id not a uuid", M::POST, &format!("{GROUPS}/not-a-uuid/messages"), json(json!({ "content": "hi" })), 400),
        case("group id not a uuid", M::GET, &format!("{GROUPS}/not-a-uuid/messages"), Body::None, 400),
        case("group id not a uuid", M::POST, &format!("{GROUPS}/not-a-uuid/members"),
            json(json!({ "email": "dan@example.com" })), 400),
        case("group id not a uuid", M::DELETE, &format!("{GROUPS}/not-a-uuid/members/{MEMBER}"), Body::None, 400),
    ]
}

/// The configured-limit cases of `limits_are_configurable` (limits: content 20, name 8,
/// description 12, 2 attachments, types `text,poll`, body 4096 bytes).
#[rustfmt::skip]
fn configured_limit_cases(w: &World) -> Vec<Case> {
    let g = format!("{GROUPS}/{}", w.group);
    let msgs = format!("{g}/messages");
    vec![
        case("content of 21 characters", Method::POST, &msgs, json(json!({ "content": text(21) })), 400),
        case("name of 9 characters", Method::POST, GROUPS, json(json!({ "name": text(9) })), 400),
        case("name of 9 characters", Method::PATCH, &g, json(json!({ "name": text(9) })), 400),
        case("description of 13 characters", Method::POST, GROUPS,
            json(json!({ "name": "x", "description": text(13) })), 400),
        case("3 attachments", Method::POST, &msgs, json(json!({ "content": "hi", "attachments": attachments(3) })), 400),
        case("a default content type no longer allowed", Method::POST, &msgs,
            json(json!({ "content": "hi", "contentType": "markdown" })), 400),
        case("body over 4096 bytes", Method::POST, &msgs, json(json!({ "content": text(5000) })), 413),
    ]
}

/// Every bad input answers its 4xx with the error shape and changes nothing.
async fn bad_inputs_are_rejected_and_change_nothing(backend: Backend) {
    let w = world(backend, &[]).await;
    let cases = bad_input_cases(&w);
    let count = cases.len();
    let failures = run(&w, cases).await;
    assert!(
        failures.is_empty(),
        "{} bad-input failures in {count} cases:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The default limits are inclusive: exactly at the limit is accepted (so the rejections above
/// are about the limit, not something else in the request).
async fn default_limits_are_inclusive(backend: Backend) {
    let w = world(backend, &[]).await;
    let g = format!("{GROUPS}/{}", w.group);
    let admin = &w.admin;
    admin
        .post(GROUPS, json!({ "name": text(100), "description": text(1000) }))
        .await
        .expect(201);
    admin
        .patch(&g, json!({ "name": text(100), "description": text(1000) }))
        .await
        .expect(200);
    let sent = admin
        .post(
            &format!("{g}/messages"),
            json!({
                "content": "é".repeat(10_000),
                "attachments": attachments(10),
                "clientMessageId": text(128),
                "replyTo": w.first_message,
            }),
        )
        .await
        .expect(201);
    assert_eq!(sent["content"].as_str().map(|c| c.chars().count()), Some(10_000));
    assert_eq!(sent["attachments"].as_array().map(Vec::len), Some(10));
    admin.get(&format!("{g}/messages?limit=200")).await.expect(200);
    admin.get(&format!("{g}/messages?limit=1")).await.expect(200);
    admin.get(&format!("{g}/messages?afterSeq=0")).await.expect(200);
    admin.get(&format!("{GROUPS}?limit=100")).await.expect(200);
    admin.get(&format!("{GROUPS}?limit=1&pageNum=1")).await.expect(200);
    admin.get(&format!("{GROUPS}?visibility=mine")).await.expect(200);
    // A body just under 1 MiB is read (and then refused for its content length, not its size).
    admin
        .post(&format!("{g}/messages"), json!({ "content": text(1_000_000) }))
        .await
        .expect(400);
}

/// Every limit follows its setting: at the configured limit accepted, one over it rejected
/// (and nothing stored).
async fn limits_are_configurable(backend: Backend) {
    let w = world(
        backend,
        &[
            "--max-content-chars",
            "20",
            "--max-name-chars",
            "8",
            "--max-description-chars",
            "12",
            "--max-attachments",
            "2",
            "--content-types",
            "text,poll",
            "--max-body-bytes",
            "4096",
        ],
    )
    .await;
    let admin = &w.admin;
    let g = format!("{GROUPS}/{}", w.group);
    let msgs = format!("{g}/messages");

    let rejected = configured_limit_cases(&w);
    let count = rejected.len();
    let failures = run(&w, rejected).await;
    assert!(
        failures.is_empty(),
        "{} failures in {count} configured-limit cases:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    let at_limit = admin.post(&msgs, json!({ "content": text(20) })).await.expect(201);
    assert_eq!(at_limit["content"], text(20));
    admin
        .post(&msgs, json!({ "content": "ü".repeat(20) }))
        .await
        .expect(201);
    admin
        .post(
            &msgs,
            json!({ "content": "hi", "contentType": "poll", "attachments": attachments(2) }),
        )
        .await
        .expect(201);
    admin
        .post(GROUPS, json!({ "name": text(8), "description": text(12) }))
        .await
        .expect(201);
    admin.patch(&g, json!({ "name": text(8) })).await.expect(200);
}

on_both_backends!(
    bad_inputs_are_rejected_and_change_nothing,
    default_limits_are_inclusive,
    limits_are_configurable
);
