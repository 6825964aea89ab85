//! The whole REST conversation of the spec, on Postgres and on SQLite.

mod common;

use common::{Backend, TestServer};
use serde_json::json;

/// Create, list, read, post, read history, add and remove members, rename, delete.
async fn whole_group_conversation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let ann = server.user("my-org", "Ann@Example.com");
    let bob = server.user("my-org", "bob@example.com");
    let carol = server.user("my-org", "carol@example.com");

    let group = ann
        .post(
            "/client/community/groups",
            json!({
                "name": "Logo project",
                "description": "Working group for the Q2 rebrand",
                "type": "private",
                "members": [{ "email": "bob@example.com", "role": "member" }, { "email": "dan@example.com", "role": "admin" }],
                "page": "optional-page-id"
            }),
        )
        .await
        .expect(201);
    assert_eq!(group["name"], "Logo project");
    assert_eq!(group["type"], "private");
    assert_eq!(group["createdBy"], "ann@example.com");
    assert_eq!(group["myRole"], "admin");
    assert_eq!(group["memberCount"], 3);
    assert_eq!(group["page"], "optional-page-id");
    let id = group["id"].as_str().unwrap().to_owned();
    let base = format!("/client/community/groups/{id}");

    // Listing: the caller's groups, with the page filter.
    let list = bob.get("/client/community/groups").await.expect(200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["data"][0]["myRole"], "member");
    assert_eq!(
        bob.get("/client/community/groups?page=other").await.expect(200)["total"],
        0
    );
    assert_eq!(
        bob.get("/client/community/groups?page=optional-page-id")
            .await
            .expect(200)["total"],
        1
    );
    assert_eq!(carol.get("/client/community/groups").await.expect(200)["total"], 0);

    // Reading: members listed; the private group is invisible to carol.
    let read = bob.get(&base).await.expect(200);
    let members = read["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.contains(&json!({ "email": "ann@example.com", "role": "admin" })));
    carol.get(&base).await.expect(404);

    // Messages.
    let first = ann.post_message(&id, "Approved — let’s ship.").await;
    assert_eq!(first["seq"], 1);
    assert_eq!(first["from"], "ann@example.com");
    assert_eq!(first["contentType"], "text");
    let reply = bob
        .post(
            &format!("{base}/messages"),
            json!({ "content": "**yes**", "contentType": "markdown", "attachments": [{ "url": "https://x.test/a.png", "name": "a.png", "mimeType": "image/png", "size": 10 }], "replyTo": first["id"] }),
        )
        .await
        .expect(201);
    assert_eq!(reply["seq"], 2);
    assert_eq!(reply["replyTo"], first["id"]);
    assert_eq!(reply["attachments"][0]["mimeType"], "image/png");
    let history = ann.get(&format!("{base}/messages?limit=50")).await.expect(200);
    assert_eq!(history["hasMore"], false);
    let seqs: Vec<i64> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 1], "newest first");
    assert_eq!(
        history["data"][0], reply,
        "history returns the message exactly as the post did"
    );

    // Members: add, change role, leave, remove.
    let added = ann
        .post(&format!("{base}/members"), json!({ "email": "carol@example.com" }))
        .await
        .expect(201);
    assert_eq!(added, json!({ "email": "carol@example.com", "role": "member" }));
    carol.get(&base).await.expect(200);
    ann.post(
        &format!("{base}/members"),
        json!({ "email": "carol@example.com", "role": "admin" }),
    )
    .await
    .expect(200);
    assert_eq!(carol.get(&base).await.expect(200)["myRole"], "admin");
    carol
        .delete(&format!("{base}/members/carol@example.com"))
        .await
        .expect(204);
    carol.get(&base).await.expect(404);
    ann.delete(&format!("{base}/members/dan@example.com")).await.expect(204);
    assert_eq!(ann.get(&base).await.expect(200)["memberCount"], 2);

    // Rename (admin), not by a member.
    bob.patch(&base, json!({ "name": "Nope" })).await.expect(403);
    let renamed = ann
        .patch(&base, json!({ "name": "Logo v2", "type": "public", "page": null }))
        .await
        .expect(200);
    assert_eq!(renamed["name"], "Logo v2");
    assert_eq!(renamed["type"], "public");
    assert_eq!(renamed["page"], serde_json::Value::Null);
    assert_eq!(
        renamed["description"], "Working group for the Q2 rebrand",
        "absent fields are unchanged"
    );

    // Delete (admin).
    bob.delete(&base).await.expect(403);
    ann.delete(&base).await.expect(204);
    ann.get(&base).await.expect(404);
    assert_eq!(bob.get("/client/community/groups").await.expect(200)["total"], 0);
}

/// The last admin can neither leave, be removed, nor be demoted; after a promotion they can.
async fn last_admin_is_protected(backend: Backend) {
    let server = TestServer::start(backend).await;
    let ann = server.user("o1", "ann@example.com");
    let id = ann
        .create_group(json!({ "name": "g", "members": [{ "email": "bob@example.com", "role": "member" }] }))
        .await;
    let base = format!("/client/community/groups/{id}");
    ann.delete(&format!("{base}/members/ann@example.com")).await.expect(409);
    ann.post(
        &format!("{base}/members"),
        json!({ "email": "ann@example.com", "role": "member" }),
    )
    .await
    .expect(409);
    ann.post(
        &format!("{base}/members"),
        json!({ "email": "bob@example.com", "role": "admin" }),
    )
    .await
    .expect(200);
    ann.delete(&format!("{base}/members/ann@example.com")).await.expect(204);
    let bob = server.user("o1", "bob@example.com");
    assert_eq!(
        bob.get(&base).await.expect(200)["members"],
        json!([{ "email": "bob@example.com", "role": "admin" }])
    );
}

/// Public groups: readable and self-joinable by anyone in the org, listed with visibility=public.
async fn public_groups_can_be_joined(backend: Backend) {
    let server = TestServer::start(backend).await;
    let ann = server.user("o1", "ann@example.com");
    let eve = server.user("o1", "eve@example.com");
    let id = ann
        .create_group(json!({ "name": "Town square", "type": "public" }))
        .await;
    ann.create_group(json!({ "name": "Secret", "type": "private" })).await;
    let base = format!("/client/community/groups/{id}");
    ann.post_message(&id, "welcome").await;

    let public = eve.get("/client/community/groups?visibility=public").await.expect(200);
    assert_eq!(public["total"], 1);
    assert_eq!(public["data"][0]["myRole"], serde_json::Value::Null);
    assert_eq!(eve.get(&base).await.expect(200)["myRole"], serde_json::Value::Null);
    assert_eq!(
        eve.get(&format!("{base}/messages")).await.expect(200)["data"][0]["content"],
        "welcome"
    );
    eve.post(&format!("{base}/messages"), json!({ "content": "hi" }))
        .await
        .expect(403);
    eve.post(
        &format!("{base}/members"),
        json!({ "email": "eve@example.com", "role": "admin" }),
    )
    .await
    .expect(403);
    eve.post(&format!("{base}/members"), json!({ "email": "frank@example.com" }))
        .await
        .expect(403);
    eve.post(&format!("{base}/members"), json!({ "email": "eve@example.com" }))
        .await
        .expect(201);
    eve.post_message(&id, "hi").await;
    assert_eq!(eve.get("/client/community/groups").await.expect(200)["total"], 1);
}

on_both_backends!(
    whole_group_conversation,
    last_admin_is_protected,
    public_groups_can_be_joined
);
