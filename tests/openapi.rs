//! The OpenAPI document served at `/openapi.json`: a well-formed OpenAPI 3.1 document that lists
//! every endpoint of DESIGN.md, whose every operation is routed, and whose schemas describe
//! what the server really answers. One backend is enough: the document does not depend on it.
//!
//! The helpers are in `openapi_support/`: `document` (fetching and walking the document),
//! `requests` (probes and calls) and `schemas` (checking answers against the document).

mod common;
#[path = "openapi_support/document.rs"]
mod document;
#[path = "openapi_support/requests.rs"]
mod requests;
#[path = "openapi_support/schemas.rs"]
mod schemas;

use std::collections::BTreeSet;

use common::{Backend, TestServer};
use document::{EXPECTED, fetch_document, operations, refs};
use requests::{Answer, call, fill, is_fallback, raw};
use reqwest::Method;
use schemas::Schemas;
use serde_json::{Value, json};

const GROUPS: &str = "/client/community/groups";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_is_openapi_3_1_and_lists_every_endpoint() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_document(&server).await;

    let version = doc["openapi"].as_str().expect("openapi version string");
    assert!(version.starts_with("3.1."), "OpenAPI 3.1.x, got {version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let listed: BTreeSet<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
    for (method, path) in EXPECTED {
        assert!(
            listed.contains(&((*method).to_owned(), (*path).to_owned())),
            "{} {path} is in the document; it lists {listed:#?}",
            method.to_uppercase()
        );
    }

    // Internal consistency, as OpenAPI 3.1 requires it.
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty(), "the document uses component schemas");
    for r in &all_refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("$ref {r} stays inside the document"));
        assert!(
            doc.pointer(pointer).is_some(),
            "$ref {r} points at something the document defines"
        );
    }
    let mut operation_ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let name = format!("{} {path}", method.to_uppercase());
        if let Some(id) = op["operationId"].as_str() {
            assert!(
                operation_ids.insert(id.to_owned()),
                "{name}: operationId {id} is unique"
            );
        }
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has responses"));
        assert!(!responses.is_empty(), "{name} documents a response");
        for (status, response) in responses {
            assert!(
                status == "default"
                    || status.len() == 3 && (status.chars().all(|c| c.is_ascii_digit()) || status.ends_with("XX")),
                "{name}: response key {status} is a status, a range or default"
            );
            // `description` is REQUIRED on a Response Object in OpenAPI 3.1.
            assert!(
                response.get("$ref").is_some() || response["description"].is_string(),
                "{name}: response {status} has a description (required by OpenAPI 3.1): {response}"
            );
        }
        // Each `{param}` of the path template is a required path parameter, and no more.
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let in_path: BTreeSet<String> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{name}: path parameters are required");
                p["name"].as_str().expect("parameter name").to_owned()
            })
            .collect();
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        assert_eq!(in_path, templated, "{name}: path parameters match the template");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc = fetch_document(&server).await;

    // The fallbacks are recognisable, so the check below can fail.
    let (status, body) = raw(&server, Method::GET, "/client/community/nope", None).await;
    assert!(is_fallback(status, &body), "unknown path: {status} {body}");
    let (status, body) = raw(&server, Method::PUT, GROUPS, Some(json!({}))).await;
    assert!(is_fallback(status, &body), "unknown method: {status} {body}");
    let (status, body) = raw(&server, Method::GET, &format!("{GROUPS}/x/members"), None).await;
    assert!(is_fallback(status, &body), "undocumented GET: {status} {body}");

    let ops = operations(&doc);
    assert!(ops.len() >= EXPECTED.len());
    for (method, path, _) in ops {
        let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let body = matches!(method.as_str(), "post" | "patch" | "put").then(|| json!({}));
        let (status, answer) = raw(&server, http_method, &fill(&path), body).await;
        assert!(
            !is_fallback(status, &answer),
            "{} {path} is documented but not routed: {status} {answer}",
            method.to_uppercase()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_match_their_schemas() {
    let server = TestServer::start(Backend::Sqlite).await;
    let schemas = Schemas {
        doc: fetch_document(&server).await,
    };
    let ann = server.token("o1", "ann@example.com");
    let bob = server.token("o1", "bob@example.com");
    let ann = Some(ann.as_str());
    let bob = Some(bob.as_str());
    let group_path = "/client/community/groups/{groupId}";
    let messages_path = "/client/community/groups/{groupId}/messages";
    let members_path = "/client/community/groups/{groupId}/members";
    let member_path = "/client/community/groups/{groupId}/members/{email}";

    // Groups.
    let created = call(
        &server,
        ann,
        Method::POST,
        GROUPS,
        Some(json!({
            "name": "Logo project",
            "description": "Q2",
            "type": "private",
            "members": [{ "email": "bob@example.com", "role": "member" }],
            "page": "page-1"
        })),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    schemas.check("post", GROUPS, &created);
    let group = created.json();
    let id = group["id"].as_str().expect("group id").to_owned();
    let public = call(
        &server,
        ann,
        Method::POST,
        GROUPS,
        Some(json!({ "name": "Square", "type": "public" })),
    )
    .await;
    assert_eq!(public.status, 201);
    schemas.check("post", GROUPS, &public);

    let list = call(&server, bob, Method::GET, GROUPS, None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()["total"], 1);
    schemas.check("get", GROUPS, &list);
    let listed_public = call(
        &server,
        bob,
        Method::GET,
        &format!("{GROUPS}?visibility=public&limit=10&pageNum=1"),
        None,
    )
    .await;
    assert_eq!(listed_public.status, 200);
    assert_eq!(listed_public.json()["data"][0]["myRole"], Value::Null);
    schemas.check("get", GROUPS, &listed_public);

    let read = call(&server, bob, Method::GET, &format!("{GROUPS}/{id}"), None).await;
    assert_eq!(read.status, 200);
    assert!(read.json()["members"].is_array());
    schemas.check("get", group_path, &read);

    let patched = call(
        &server,
        ann,
        Method::PATCH,
        &format!("{GROUPS}/{id}"),
        Some(json!({ "name": "Logo v2", "page": null })),
    )
    .await;
    assert_eq!(patched.status, 200);
    schemas.check("patch", group_path, &patched);

    // Messages: a plain one, a full one, an idempotent replay, history both ways.
    let first = call(
        &server,
        ann,
        Method::POST,
        &format!("{GROUPS}/{id}/messages"),
        Some(json!({ "content": "hello" })),
    )
    .await;
    assert_eq!(first.status, 201);
    schemas.check("post", messages_path, &first);
    let first_id = first.json()["id"].as_str().expect("message id").to_owned();
    let full_body = json!({
        "content": "**yes**",
        "contentType": "markdown",
        "attachments": [{ "url": "https://x.test/a.png", "name": "a.png", "mimeType": "image/png", "size": 10 }],
        "replyTo": first_id,
        "clientMessageId": "c-1"
    });
    let full = call(
        &server,
        bob,
        Method::POST,
        &format!("{GROUPS}/{id}/messages"),
        Some(full_body.clone()),
    )
    .await;
    assert_eq!(full.status, 201);
    schemas.check("post", messages_path, &full);
    let replay = call(
        &server,
        bob,
        Method::POST,
        &format!("{GROUPS}/{id}/messages"),
        Some(full_body),
    )
    .await;
    assert_eq!(replay.status, 200);
    schemas.check("post", messages_path, &replay);

    let history = call(
        &server,
        ann,
        Method::GET,
        &format!("{GROUPS}/{id}/messages?limit=1"),
        None,
    )
    .await;
    assert_eq!(history.status, 200);
    assert_eq!(history.json()["hasMore"], true);
    schemas.check("get", messages_path, &history);
    let catch_up = call(
        &server,
        ann,
        Method::GET,
        &format!("{GROUPS}/{id}/messages?after={first_id}"),
        None,
    )
    .await;
    assert_eq!(catch_up.status, 200);
    schemas.check("get", messages_path, &catch_up);

    // Members: add (201), set a role (200), remove (204).
    let added = call(
        &server,
        ann,
        Method::POST,
        &format!("{GROUPS}/{id}/members"),
        Some(json!({ "email": "carol@example.com" })),
    )
    .await;
    assert_eq!(added.status, 201);
    schemas.check("post", members_path, &added);
    let promoted = call(
        &server,
        ann,
        Method::POST,
        &format!("{GROUPS}/{id}/members"),
        Some(json!({ "email": "carol@example.com", "role": "admin" })),
    )
    .await;
    assert_eq!(promoted.status, 200);
    schemas.check("post", members_path, &promoted);
    let removed = call(
        &server,
        ann,
        Method::DELETE,
        &format!("{GROUPS}/{id}/members/carol@example.com"),
        None,
    )
    .await;
    assert_eq!(removed.status, 204);
    schemas.check("delete", member_path, &removed);

    // Errors: 400, 401, 403, 404, 409, each as the document says.
    let errors = [
        (
            "post",
            GROUPS,
            call(&server, ann, Method::POST, GROUPS, Some(json!({ "name": 5 }))).await,
            400,
        ),
        ("get", GROUPS, call(&server, None, Method::GET, GROUPS, None).await, 401),
        (
            "patch",
            group_path,
            call(
                &server,
                bob,
                Method::PATCH,
                &format!("{GROUPS}/{id}"),
                Some(json!({ "name": "mine now" })),
            )
            .await,
            403,
        ),
        (
            "get",
            group_path,
            call(
                &server,
                ann,
                Method::GET,
                &format!("{GROUPS}/{}", uuid::Uuid::now_v7()),
                None,
            )
            .await,
            404,
        ),
        (
            "get",
            messages_path,
            call(
                &server,
                ann,
                Method::GET,
                &format!("{GROUPS}/{id}/messages?before={}", uuid::Uuid::now_v7()),
                None,
            )
            .await,
            400,
        ),
        (
            "delete",
            member_path,
            call(
                &server,
                ann,
                Method::DELETE,
                &format!("{GROUPS}/{id}/members/ann@example.com"),
                None,
            )
            .await,
            409,
        ),
    ];
    for (method, path, answer, status) in &errors {
        assert_eq!(answer.status, *status, "{method} {path}: {answer:?}");
        schemas.check(method, path, answer);
    }

    let deleted = call(&server, ann, Method::DELETE, &format!("{GROUPS}/{id}"), None).await;
    assert_eq!(deleted.status, 204);
    schemas.check("delete", group_path, &deleted);

    // Operations.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let answer = call(&server, None, Method::GET, path, None).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        schemas.check("get", path, &answer);
    }
}

/// The validator used above rejects bodies that break the schemas, so a passing check means
/// something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_validation_can_fail() {
    let server = TestServer::start(Backend::Sqlite).await;
    let schemas = Schemas {
        doc: fetch_document(&server).await,
    };
    let ann = server.user("o1", "ann@example.com");
    let group = ann
        .post(
            GROUPS,
            json!({ "name": "g", "members": [{ "email": "bob@example.com", "role": "member" }] }),
        )
        .await
        .expect(201);
    let id = group["id"].as_str().expect("id").to_owned();
    let read = ann.get(&format!("{GROUPS}/{id}")).await.expect(200);
    let message = ann.post_message(&id, "hi").await;
    let page = ann.get(&format!("{GROUPS}/{id}/messages")).await.expect(200);
    let error = ann.get(&format!("{GROUPS}/not-a-uuid")).await.expect(400);

    let group_schema = schemas.component("Group");
    let message_schema = schemas.component("Message");
    let page_schema = schemas.component("MessagePage");
    let error_schema = schemas.component("ErrorBody");
    assert!(group_schema.is_valid(&group) && group_schema.is_valid(&read));
    assert!(message_schema.is_valid(&message));
    assert!(page_schema.is_valid(&page));
    assert!(error_schema.is_valid(&error));

    let broken = |value: &Value, edit: &dyn Fn(&mut Value)| {
        let mut copy = value.clone();
        edit(&mut copy);
        copy
    };
    let rejected = [
        (
            &group_schema,
            broken(&group, &|g| {
                g.as_object_mut().expect("object").remove("id");
            }),
            "a group without its id",
        ),
        (
            &group_schema,
            broken(&group, &|g| g["memberCount"] = json!("2")),
            "memberCount as a string",
        ),
        (
            &group_schema,
            broken(&group, &|g| g["type"] = json!("secret")),
            "a type outside the enum",
        ),
        (
            &group_schema,
            broken(&read, &|g| g["members"][0]["role"] = json!("owner")),
            "a member role outside the enum",
        ),
        (
            &group_schema,
            broken(&group, &|g| g["createdAt"] = json!("yesterday")),
            "createdAt that is not a date-time",
        ),
        (
            &message_schema,
            broken(&message, &|m| m["seq"] = json!("1")),
            "seq as a string",
        ),
        (
            &message_schema,
            broken(&message, &|m| m["attachments"] = json!([{ "name": "no url" }])),
            "an attachment without url",
        ),
        (
            &page_schema,
            broken(&page, &|p| {
                p.as_object_mut().expect("object").remove("hasMore");
            }),
            "a page without hasMore",
        ),
        (
            &page_schema,
            broken(&page, &|p| p["data"][0]["from"] = json!(42)),
            "a message in a page with a numeric sender",
        ),
        (
            &error_schema,
            broken(&error, &|e| {
                e.as_object_mut().expect("object").remove("statusCode");
            }),
            "an error without statusCode",
        ),
    ];
    for (validator, body, what) in rejected {
        assert!(!validator.is_valid(&body), "{what} is rejected: {body}");
    }

    // And through `check`, the same way the flow above uses it.
    let bad = Answer {
        status: 200,
        content_type: "application/json".into(),
        text: broken(&read, &|g| {
            g.as_object_mut().expect("object").remove("name");
        })
        .to_string(),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        schemas.check("get", "/client/community/groups/{groupId}", &bad)
    }));
    assert!(outcome.is_err(), "check rejects a group without its name");
    let undocumented = Answer {
        status: 302,
        content_type: String::new(),
        text: String::new(),
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        schemas.check("get", "/client/community/groups/{groupId}", &undocumented)
    }));
    assert!(outcome.is_err(), "check rejects an undocumented status");
}
