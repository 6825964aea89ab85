//! Group commit on Postgres (shared/src/store/group_commit.rs): posts that arrive together are stored
//! by one statement, and still each get the answer the one-by-one path gives: members' posts
//! stored with gap-free seqs, a non-member's post refused, a bad `replyTo` refused, one message
//! per `clientMessageId` even across two processes, and no message outliving its group.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{Backend, TestServer, User};
use futures::future::join_all;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

fn messages_path(group: &str) -> String {
    format!("/client/community/groups/{group}/messages")
}

/// Every seq of the group's history, oldest first.
async fn seqs(user: &User, group: &str) -> Vec<i64> {
    let body = user
        .get(&format!("{}?limit=100", messages_path(group)))
        .await
        .expect(200);
    assert_eq!(body["hasMore"], json!(false), "the test groups hold under 100 messages");
    let mut seqs: Vec<i64> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    seqs
}

async fn count_rows(server: &TestServer, sql: &str) -> i64 {
    let row = server
        .service
        .store()
        .connection()
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .expect("count query")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_stored_in_shared_commits_and_each_post_gets_its_own_answer() {
    let server = TestServer::start(Backend::Postgres).await;
    let alice = server.user("o1", "alice@example.com");
    let bob = server.user("o1", "bob@example.com");
    let carol = server.user("o1", "carol@example.com");
    let group = alice
        .create_group(
            json!({ "name": "burst", "type": "public", "members": [{ "email": "bob@example.com", "role": "member" }] }),
        )
        .await;
    let other = alice.create_group(json!({ "name": "elsewhere" })).await;
    let elsewhere = alice.post_message(&other, "a message of another group").await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = server.service.store().batch_stats();

    // 3 rounds of 40 requests at once: 30 members' posts, 5 from a non-member, 5 replying to a
    // message of another group.
    for round in 0..3 {
        let mut requests = Vec::new();
        for i in 0..30 {
            let user = if i % 2 == 0 { &alice } else { &bob };
            requests.push((
                user,
                json!({ "content": format!("r{round}-m{i}") }),
                StatusCode::CREATED,
            ));
        }
        for i in 0..5 {
            requests.push((
                &carol,
                json!({ "content": format!("r{round}-c{i}") }),
                StatusCode::FORBIDDEN,
            ));
            let body = json!({ "content": format!("r{round}-x{i}"), "replyTo": elsewhere });
            requests.push((&bob, body, StatusCode::BAD_REQUEST));
        }
        let path = messages_path(&group);
        let replies = join_all(requests.iter().map(|(user, body, _)| user.post(&path, body.clone()))).await;
        for ((_, body, expected), reply) in requests.iter().zip(replies) {
            assert_eq!(reply.status, *expected, "{body}: {:?}", reply.body);
            if *expected != StatusCode::CREATED {
                common::assert_error_shape(&reply.body, expected.as_u16());
            }
        }
    }

    assert_eq!(
        seqs(&alice, &group).await,
        (1..=90).collect::<Vec<_>>(),
        "gap-free seqs, one per stored post"
    );
    let after = server.service.store().batch_stats();
    let (batches, posts) = (after.batches - before.batches, after.posts - before.posts);
    assert_eq!(posts, 120, "every post of the bursts went through group commit");
    assert!(
        batches < posts,
        "some commits carried more than one post: {posts} posts in {batches} statements"
    );
    assert_eq!(after.retried, 0, "no batch failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_in_a_burst_is_stored_and_points_at_its_message() {
    let server = TestServer::start(Backend::Postgres).await;
    let alice = server.user("o1", "alice@example.com");
    let group = alice.create_group(json!({ "name": "replies" })).await;
    let first = alice.post_message(&group, "first").await;
    let first_id = first["id"].as_str().expect("id");
    let bodies: Vec<Value> = (0..20)
        .map(|i| json!({ "content": format!("reply {i}"), "replyTo": first_id }))
        .collect();
    let path = messages_path(&group);
    let replies = join_all(bodies.iter().map(|b| alice.post(&path, b.clone()))).await;
    for reply in replies {
        let stored = reply.expect(201);
        assert_eq!(stored["replyTo"], json!(first_id));
    }
    assert_eq!(seqs(&alice, &group).await, (1..=21).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_message_id_sent_at_once_to_two_processes_is_stored_once() {
    let one = TestServer::start(Backend::Postgres).await;
    let two = one.beside().await;
    let group = one
        .user("o1", "alice@example.com")
        .create_group(json!({ "name": "twice" }))
        .await;
    for round in 0..10 {
        let client_id = format!("retry-{round}");
        // The same send 3 times on each process, inside bursts of other posts.
        let mut requests = Vec::new();
        for (p, server) in [&one, &two].into_iter().enumerate() {
            let user = server.user("o1", "alice@example.com");
            for i in 0..3 {
                requests.push((user.clone(), json!({ "content": "once", "clientMessageId": client_id })));
                requests.push((user.clone(), json!({ "content": format!("r{round}-p{p}-{i}") })));
            }
        }
        let path = messages_path(&group);
        let replies = join_all(requests.iter().map(|(user, body)| user.post(&path, body.clone()))).await;
        let mut ids = BTreeSet::new();
        let mut created = 0;
        for ((_, body), reply) in requests.iter().zip(replies) {
            if body.get("clientMessageId").is_some() {
                assert!(
                    reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
                    "a retry is answered 201 (first) or 200 (replay): {:?}",
                    reply.status
                );
                created += usize::from(reply.status == StatusCode::CREATED);
                ids.insert(reply.body["id"].as_str().expect("id").to_owned());
            } else {
                reply.expect(201);
            }
        }
        assert_eq!(
            ids.len(),
            1,
            "round {round}: every send of {client_id} answers one message"
        );
        assert_eq!(created, 1, "round {round}: exactly one send of {client_id} stored it");
    }
    let all = seqs(&one.user("o1", "alice@example.com"), &group).await;
    assert_eq!(
        all,
        (1..=70).collect::<Vec<_>>(),
        "60 plain posts and 10 idempotent ones, gap-free"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_stored_send_are_replayed_without_failing_their_batch() {
    let server = TestServer::start(Backend::Postgres).await;
    let alice = server.user("o1", "alice@example.com");
    let group = alice.create_group(json!({ "name": "retries" })).await;
    let path = messages_path(&group);
    let before = server.service.store().batch_stats();
    for round in 0..5 {
        // 5 sends of one clientMessageId at once (one is stored, the others are held back to
        // later batches, where the stored one is found), among 15 other posts.
        let client_id = format!("again-{round}");
        let mut bodies: Vec<Value> = (0..5)
            .map(|_| json!({ "content": "again", "clientMessageId": client_id }))
            .collect();
        bodies.extend((0..15).map(|i| json!({ "content": format!("r{round}-{i}") })));
        let replies = join_all(bodies.iter().map(|b| alice.post(&path, b.clone()))).await;
        let mut ids = BTreeSet::new();
        for (body, reply) in bodies.iter().zip(replies) {
            if body.get("clientMessageId").is_some() {
                assert!(reply.status == StatusCode::CREATED || reply.status == StatusCode::OK);
                ids.insert(reply.body["id"].as_str().expect("id").to_owned());
            } else {
                reply.expect(201);
            }
        }
        assert_eq!(ids.len(), 1, "round {round}: one message for {client_id}");
    }
    assert_eq!(seqs(&alice, &group).await, (1..=80).collect::<Vec<_>>());
    let after = server.service.store().batch_stats();
    assert_eq!(
        after.retried - before.retried,
        0,
        "a retry of a stored send is left out of its batch, not failing it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_group_while_its_members_post_leaves_none_of_its_messages() {
    let server = TestServer::start(Backend::Postgres).await;
    let alice = server.user("o1", "alice@example.com");
    for round in 0..5 {
        let group = alice.create_group(json!({ "name": format!("doomed {round}") })).await;
        let posts = (0..40).map(|i| {
            let (alice, group) = (alice.clone(), group.clone());
            tokio::spawn(async move {
                alice
                    .post(&messages_path(&group), json!({ "content": format!("m{i}") }))
                    .await
                    .status
            })
        });
        let posts: Vec<_> = posts.collect();
        tokio::time::sleep(std::time::Duration::from_millis(5 * round)).await;
        alice
            .delete(&format!("/client/community/groups/{group}"))
            .await
            .expect(204);
        let mut statuses: HashMap<u16, usize> = HashMap::new();
        for post in join_all(posts).await {
            *statuses.entry(post.expect("post task").as_u16()).or_default() += 1;
        }
        assert!(
            statuses.keys().all(|s| *s == 201 || *s == 404),
            "a post answers 201 before the delete, 404 after: {statuses:?}"
        );
        let left = count_rows(
            &server,
            &format!("SELECT count(*) FROM messages WHERE group_id = '{group}'::uuid"),
        )
        .await;
        assert_eq!(
            left, 0,
            "round {round}: messages of a deleted group remain ({statuses:?})"
        );
    }
}

/// Foreign keys declared on `table`.
async fn foreign_keys(server: &TestServer, table: &str) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM information_schema.table_constraints \
         WHERE table_name = '{table}' AND constraint_type = 'FOREIGN KEY'"
    );
    count_rows(server, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_have_no_foreign_key_to_groups_on_postgres() {
    let server = TestServer::start(Backend::Postgres).await;
    assert_eq!(
        foreign_keys(&server, "messages").await,
        0,
        "the migration drops messages_org_id_group_id_fkey"
    );
    assert_eq!(
        foreign_keys(&server, "group_members").await,
        1,
        "group_members keeps its key"
    );
}
