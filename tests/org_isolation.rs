//! The org is the hard boundary (DESIGN.md, Identity and tenancy): the same e-mail in two orgs
//! is two unrelated users, and no id of one org is usable from another. Every refused request
//! answers the `{ statusCode, message, error }` shape, and org A's data is read back from org A
//! afterwards to prove nothing changed.

mod common;

use common::{Backend, TestServer, User, check_error_shape};
use reqwest::Method;
use serde_json::{Value, json};

const ORG_A: &str = "org-a";
const ORG_B: &str = "org-b";
const ANN: &str = "ann@example.com";
const BOB: &str = "bob@example.com";
const EVE: &str = "eve@example.com";
const GROUPS: &str = "/client/community/groups";

/// Org A's data: a public and a private group (admin ann, member bob), one message in each.
struct OrgA {
    public: String,
    private: String,
    public_message: String,
    private_message: String,
}

async fn org_a(server: &TestServer) -> OrgA {
    let ann = server.user(ORG_A, ANN);
    let mut ids = Vec::new();
    for group_type in ["public", "private"] {
        let group = ann
            .create_group(json!({
                "name": format!("A {group_type}"),
                "type": group_type,
                "members": [{ "email": BOB, "role": "member" }],
            }))
            .await;
        let message = ann.post_message(&group, &format!("A {group_type} says hi")).await;
        ids.push((group, message["id"].as_str().expect("message id").to_owned()));
    }
    let (private, private_message) = ids.pop().expect("private");
    let (public, public_message) = ids.pop().expect("public");
    OrgA {
        public,
        private,
        public_message,
        private_message,
    }
}

/// Everything org `org` can read about `groups`, by its admin, its member and an outsider.
async fn snapshot(server: &TestServer, org: &str, groups: &[&str]) -> Vec<(String, u16, Value)> {
    let mut reads: Vec<(User, String)> = Vec::new();
    for email in [ANN, BOB, EVE] {
        let user = server.user(org, email);
        reads.push((user.clone(), format!("{GROUPS}?limit=100")));
        reads.push((user.clone(), format!("{GROUPS}?visibility=public&limit=100")));
    }
    let ann = server.user(org, ANN);
    for group in groups {
        reads.push((ann.clone(), format!("{GROUPS}/{group}")));
        reads.push((ann.clone(), format!("{GROUPS}/{group}/messages?limit=200")));
    }
    let mut out = Vec::new();
    for (user, path) in reads {
        let reply = user.get(&path).await;
        let who = user.org.clone().unwrap_or_default();
        out.push((format!("{who}: GET {path}"), reply.status.as_u16(), reply.body));
    }
    out
}

/// Checks one reply against its expected status and the error shape; returns the problems.
fn check(label: &str, reply: common::Reply, expected: u16) -> Vec<String> {
    let status = reply.status.as_u16();
    let mut problems = Vec::new();
    if status != expected {
        problems.push(format!("{label}: expected {expected}, got {status} {}", reply.body));
    }
    if status >= 400
        && let Err(problem) = check_error_shape(&reply.body, status)
    {
        problems.push(format!("{label}: {problem}"));
    }
    problems
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|g| g["name"].as_str().expect("name").to_owned())
        .collect();
    names.sort();
    names
}

fn orgs(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|g| g["orgId"].as_str().expect("orgId").to_owned())
        .collect()
}

/// The same e-mail in two orgs sees two distinct group sets, one per token.
async fn same_email_in_two_orgs_sees_two_group_sets(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = org_a(&server).await;
    let ann_a = server.user(ORG_A, ANN);
    let ann_b = server.user(ORG_B, ANN);
    let bob_b = server.user(ORG_B, BOB);
    let b_group = ann_b
        .create_group(json!({ "name": "B only", "members": [{ "email": BOB, "role": "admin" }] }))
        .await;
    ann_b.post_message(&b_group, "B says hi").await;

    let list_a = ann_a.get(GROUPS).await.expect(200);
    assert_eq!(list_a["total"], 2);
    assert_eq!(names(&list_a), ["A private", "A public"]);
    assert!(orgs(&list_a).iter().all(|o| o == ORG_A), "{list_a}");
    let list_b = ann_b.get(GROUPS).await.expect(200);
    assert_eq!(list_b["total"], 1);
    assert_eq!(names(&list_b), ["B only"]);
    assert_eq!(list_b["data"][0]["orgId"], ORG_B);
    assert_eq!(list_b["data"][0]["myRole"], "admin");

    // Bob is a member in A and an admin in B: two users, two roles.
    let bob_a_list = server.user(ORG_A, BOB).get(GROUPS).await.expect(200);
    assert_eq!(names(&bob_a_list), ["A private", "A public"]);
    assert!(
        bob_a_list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["myRole"] == "member")
    );
    let bob_b_list = bob_b.get(GROUPS).await.expect(200);
    assert_eq!(names(&bob_b_list), ["B only"]);
    assert_eq!(bob_b_list["data"][0]["myRole"], "admin");

    // Each sees its own group's members and history, and not the other's.
    let read_b = ann_b.get(&format!("{GROUPS}/{b_group}")).await.expect(200);
    assert_eq!(read_b["orgId"], ORG_B);
    assert_eq!(read_b["memberCount"], 2);
    let history_b = ann_b.get(&format!("{GROUPS}/{b_group}/messages")).await.expect(200);
    let contents: Vec<&str> = history_b["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["B says hi"]);
    assert_eq!(history_b["data"][0]["orgId"], ORG_B);
    assert_eq!(
        history_b["data"][0]["seq"], 1,
        "seq is per group, and org A's messages do not count"
    );
    ann_a.get(&format!("{GROUPS}/{b_group}")).await.expect(404);
    ann_b.get(&format!("{GROUPS}/{}", a.public)).await.expect(404);
    ann_b.get(&format!("{GROUPS}/{}", a.private)).await.expect(404);

    // A new org-B user with the same e-mail as an org-A member starts with nothing.
    assert_eq!(server.user(ORG_B, EVE).get(GROUPS).await.expect(200)["total"], 0);
}

/// With a valid org-B token and `orgid: org-b`, every endpoint on org A's group ids answers 404
/// and changes nothing in org A.
async fn org_a_group_ids_are_unknown_in_org_b(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = org_a(&server).await;
    // Org B is a real tenant where ann is an admin and bob a member, with the same e-mails.
    let b_group = server
        .user(ORG_B, ANN)
        .create_group(json!({ "name": "B", "type": "public", "members": [{ "email": BOB, "role": "member" }] }))
        .await;

    let a_groups = [a.public.as_str(), a.private.as_str()];
    let a_before = snapshot(&server, ORG_A, &a_groups).await;
    let b_before = snapshot(&server, ORG_B, &[&b_group]).await;

    let mut failures = Vec::new();
    let mut cases = 0;
    for (group, message) in [(&a.public, &a.public_message), (&a.private, &a.private_message)] {
        for email in [ANN, BOB, EVE] {
            let user = server.user(ORG_B, email);
            let g = format!("{GROUPS}/{group}");
            let requests: Vec<(&str, Method, String, Option<Value>)> = vec![
                ("read", Method::GET, g.clone(), None),
                ("rename", Method::PATCH, g.clone(), Some(json!({ "name": "hijacked" }))),
                (
                    "make private",
                    Method::PATCH,
                    g.clone(),
                    Some(json!({ "type": "private" })),
                ),
                ("delete", Method::DELETE, g.clone(), None),
                (
                    "post a message",
                    Method::POST,
                    format!("{g}/messages"),
                    Some(json!({ "content": "from B" })),
                ),
                (
                    "post a reply",
                    Method::POST,
                    format!("{g}/messages"),
                    Some(json!({ "content": "from B", "replyTo": message })),
                ),
                ("history", Method::GET, format!("{g}/messages"), None),
                (
                    "history before",
                    Method::GET,
                    format!("{g}/messages?before={message}"),
                    None,
                ),
                (
                    "history after",
                    Method::GET,
                    format!("{g}/messages?after={message}"),
                    None,
                ),
                (
                    "history afterSeq",
                    Method::GET,
                    format!("{g}/messages?afterSeq=0"),
                    None,
                ),
                (
                    "add a member",
                    Method::POST,
                    format!("{g}/members"),
                    Some(json!({ "email": "mallory@example.com" })),
                ),
                (
                    "self-join",
                    Method::POST,
                    format!("{g}/members"),
                    Some(json!({ "email": email })),
                ),
                (
                    "self-join as admin",
                    Method::POST,
                    format!("{g}/members"),
                    Some(json!({ "email": email, "role": "admin" })),
                ),
                ("remove a member", Method::DELETE, format!("{g}/members/{BOB}"), None),
                ("remove the admin", Method::DELETE, format!("{g}/members/{ANN}"), None),
                ("leave", Method::DELETE, format!("{g}/members/{email}"), None),
            ];
            for (what, method, path, body) in requests {
                cases += 1;
                let label = format!("org-b {email}: {what} on org A's group ({method} {path})");
                let reply = user.send(method, &path, body).await;
                failures.extend(check(&label, reply, 404));
                if let Some(change) = common::snapshot_difference(&a_before, &snapshot(&server, ORG_A, &a_groups).await)
                {
                    failures.push(format!("{label}: org A {change}"));
                }
            }
        }
    }
    if let Some(change) = common::snapshot_difference(&b_before, &snapshot(&server, ORG_B, &[&b_group]).await) {
        failures.push(format!("org B itself {change}"));
    }
    assert!(
        failures.is_empty(),
        "{} failures in {cases} cross-org cases:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    // The same requests still work inside org A (the 404s above are about the org, nothing else).
    let ann_a = server.user(ORG_A, ANN);
    ann_a
        .get(&format!("{GROUPS}/{}/messages?before={}", a.private, a.private_message))
        .await
        .expect(200);
    ann_a
        .patch(&format!("{GROUPS}/{}", a.private), json!({ "name": "renamed in A" }))
        .await
        .expect(200);
}

/// Org A's message ids are unknown cursors and reply targets in org B (400), even for the same
/// e-mail, and using them changes nothing.
async fn org_a_message_ids_are_unknown_in_org_b(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = org_a(&server).await;
    let ann_b = server.user(ORG_B, ANN);
    let b_group = ann_b.create_group(json!({ "name": "B", "type": "public" })).await;
    let b_message = ann_b.post_message(&b_group, "B's own").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b_before = snapshot(&server, ORG_B, &[&b_group]).await;
    let a_groups = [a.public.as_str(), a.private.as_str()];
    let a_before = snapshot(&server, ORG_A, &a_groups).await;

    let msgs = format!("{GROUPS}/{b_group}/messages");
    let mut failures = Vec::new();
    let mut cases = 0;
    for a_message in [&a.public_message, &a.private_message] {
        let requests: Vec<(&str, Method, String, Option<Value>)> = vec![
            ("before", Method::GET, format!("{msgs}?before={a_message}"), None),
            ("after", Method::GET, format!("{msgs}?after={a_message}"), None),
            (
                "replyTo",
                Method::POST,
                msgs.clone(),
                Some(json!({ "content": "re", "replyTo": a_message })),
            ),
        ];
        for (what, method, path, body) in requests {
            cases += 1;
            let label = format!("org A's message {a_message} as {what} in org B");
            failures.extend(check(&label, ann_b.send(method, &path, body).await, 400));
        }
    }
    if let Some(change) = common::snapshot_difference(&b_before, &snapshot(&server, ORG_B, &[&b_group]).await) {
        failures.push(format!("org B {change}"));
    }
    if let Some(change) = common::snapshot_difference(&a_before, &snapshot(&server, ORG_A, &a_groups).await) {
        failures.push(format!("org A {change}"));
    }
    assert!(
        failures.is_empty(),
        "{} failures in {cases} cases:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    // B's own message id works in the same three places.
    ann_b.get(&format!("{msgs}?before={b_message}")).await.expect(200);
    ann_b.get(&format!("{msgs}?after={b_message}")).await.expect(200);
    let reply = ann_b
        .post(&msgs, json!({ "content": "re", "replyTo": b_message }))
        .await
        .expect(201);
    assert_eq!(reply["replyTo"], b_message.as_str());
}

/// A valid token of one org sent with the `orgid` of another is 403 on every endpoint, whichever
/// org's group id is used, and changes nothing in either org.
async fn token_of_one_org_with_the_orgid_of_another_is_403(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = org_a(&server).await;
    let b_group = server
        .user(ORG_B, ANN)
        .create_group(json!({ "name": "B", "type": "public" }))
        .await;
    let a_groups = [a.public.as_str(), a.private.as_str()];
    let a_before = snapshot(&server, ORG_A, &a_groups).await;
    let b_before = snapshot(&server, ORG_B, &[&b_group]).await;

    let mismatched = |token_org: &str, header_org: &str| User {
        base: server.base.clone(),
        http: server.http.clone(),
        org: Some(header_org.to_owned()),
        token: Some(server.token(token_org, ANN)),
    };
    let mut failures = Vec::new();
    let mut cases = 0;
    for (token_org, header_org) in [(ORG_A, ORG_B), (ORG_B, ORG_A), (ORG_A, "ORG-A"), (ORG_A, "org-a2")] {
        let user = mismatched(token_org, header_org);
        let mut requests: Vec<(Method, String, Option<Value>)> = vec![
            (Method::POST, GROUPS.to_owned(), Some(json!({ "name": "sneaky" }))),
            (Method::GET, GROUPS.to_owned(), None),
            (Method::GET, format!("{GROUPS}?visibility=public"), None),
        ];
        for group in [a.public.as_str(), a.private.as_str(), b_group.as_str()] {
            let g = format!("{GROUPS}/{group}");
            requests.extend([
                (Method::GET, g.clone(), None),
                (Method::PATCH, g.clone(), Some(json!({ "name": "hijacked" }))),
                (Method::DELETE, g.clone(), None),
                (Method::POST, format!("{g}/messages"), Some(json!({ "content": "x" }))),
                (Method::GET, format!("{g}/messages"), None),
                (
                    Method::POST,
                    format!("{g}/members"),
                    Some(json!({ "email": "mallory@example.com" })),
                ),
                (Method::POST, format!("{g}/members"), Some(json!({ "email": ANN }))),
                (Method::DELETE, format!("{g}/members/{BOB}"), None),
                (Method::DELETE, format!("{g}/members/{ANN}"), None),
            ]);
        }
        for (method, path, body) in requests {
            cases += 1;
            let label = format!("token of {token_org} with orgid {header_org}: {method} {path}");
            failures.extend(check(&label, user.send(method, &path, body).await, 403));
        }
    }
    if let Some(change) = common::snapshot_difference(&a_before, &snapshot(&server, ORG_A, &a_groups).await) {
        failures.push(format!("org A {change}"));
    }
    if let Some(change) = common::snapshot_difference(&b_before, &snapshot(&server, ORG_B, &[&b_group]).await) {
        failures.push(format!("org B {change}"));
    }
    assert!(
        failures.is_empty(),
        "{} failures in {cases} cases:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// `visibility=public` lists the caller's org's public groups only.
async fn public_listing_stays_inside_the_org(backend: Backend) {
    let server = TestServer::start(backend).await;
    let ann_a = server.user(ORG_A, ANN);
    let ann_b = server.user(ORG_B, ANN);
    let a_public = [
        ann_a
            .create_group(json!({ "name": "A square", "type": "public" }))
            .await,
        ann_a
            .create_group(json!({ "name": "A market", "type": "public", "page": "shared-page" }))
            .await,
    ];
    ann_a
        .create_group(json!({ "name": "A back room", "type": "private" }))
        .await;
    let b_public = ann_b
        .create_group(json!({ "name": "B square", "type": "public", "page": "shared-page" }))
        .await;

    for user in [server.user(ORG_B, EVE), ann_b.clone()] {
        let listed = user
            .get(&format!("{GROUPS}?visibility=public&limit=100"))
            .await
            .expect(200);
        assert_eq!(listed["total"], 1, "{listed}");
        assert_eq!(names(&listed), ["B square"]);
        assert_eq!(listed["data"][0]["id"], b_public.as_str());
        assert!(orgs(&listed).iter().all(|o| o == ORG_B), "{listed}");
        // The same page id in both orgs does not join them either.
        let by_page = user
            .get(&format!("{GROUPS}?visibility=public&page=shared-page"))
            .await
            .expect(200);
        assert_eq!(names(&by_page), ["B square"]);
    }
    let listed = server
        .user(ORG_A, EVE)
        .get(&format!("{GROUPS}?visibility=public&limit=100"))
        .await
        .expect(200);
    assert_eq!(listed["total"], 2, "{listed}");
    assert_eq!(names(&listed), ["A market", "A square"]);
    assert!(orgs(&listed).iter().all(|o| o == ORG_A), "{listed}");
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert!(a_public.iter().all(|id| ids.contains(&id.as_str())));
    // Org A's public groups are public to org A only: org B cannot read or join them.
    for id in &a_public {
        server.user(ORG_B, EVE).get(&format!("{GROUPS}/{id}")).await.expect(404);
        server
            .user(ORG_B, EVE)
            .post(&format!("{GROUPS}/{id}/members"), json!({ "email": EVE }))
            .await
            .expect(404);
    }
}

on_both_backends!(
    same_email_in_two_orgs_sees_two_group_sets,
    org_a_group_ids_are_unknown_in_org_b,
    org_a_message_ids_are_unknown_in_org_b,
    token_of_one_org_with_the_orgid_of_another_is_403,
    public_listing_stays_inside_the_org
);
