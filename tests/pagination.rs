//! History paging and seq allocation under load, on Postgres and on SQLite: every message is
//! seen exactly once in either direction, seqs are 1, 2, 3, ... with no gap under concurrent
//! writers, and a `clientMessageId` stores one message however many times it is sent at once.

mod common;

use std::collections::{HashMap, HashSet};

use common::{Backend, TestServer, User};
use futures::future::join_all;
use serde_json::{Value, json};

const PAGE: usize = 50;

/// Posts `count` messages (`{prefix}-{i}`) as `user`, `batch` at a time concurrently, and returns
/// each stored message by id, exactly as the POST answered it.
async fn post_in_batches(user: &User, group: &str, prefix: &str, count: usize, batch: usize) -> HashMap<String, Value> {
    let mut posted = HashMap::new();
    let contents: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in contents.chunks(batch) {
        let replies = join_all(chunk.iter().map(|c| user.post_message(group, c))).await;
        for message in replies {
            let id = message["id"].as_str().expect("message id").to_owned();
            assert!(
                posted.insert(id, message).is_none(),
                "two POSTs answered the same message id"
            );
        }
    }
    posted
}

fn seq(message: &Value) -> i64 {
    message["seq"].as_i64().expect("seq is an integer")
}

fn id(message: &Value) -> String {
    message["id"].as_str().expect("id is a string").to_owned()
}

/// One page of history; checks the `{ data, hasMore }` shape and the page size.
async fn page(user: &User, path: &str) -> (Vec<Value>, bool) {
    let body = user.get(path).await.expect(200);
    let data = body["data"].as_array().expect("data is an array").clone();
    let has_more = body["hasMore"].as_bool().expect("hasMore is a boolean");
    assert!(data.len() <= PAGE, "a page holds at most limit messages");
    if has_more {
        assert_eq!(data.len(), PAGE, "a page followed by more is full: {path}");
    }
    (data, has_more)
}

/// Pages through the whole history of `group` with a cursor built from the last message of
/// each page; `first` is the first request's query. Returns every message in the order seen.
async fn page_through(user: &User, group: &str, first: &str, next: impl Fn(&Value) -> String) -> Vec<Value> {
    let base = format!("/client/community/groups/{group}/messages");
    let mut seen = Vec::new();
    let mut query = first.to_owned();
    for _ in 0..100 {
        let (data, has_more) = page(user, &format!("{base}?{query}")).await;
        let Some(last) = data.last().cloned() else {
            // Only a history with nothing in that direction at all has an empty page: the
            // page before it would have said hasMore=false.
            assert!(seen.is_empty(), "hasMore=true was followed by an empty page ({query})");
            assert!(!has_more, "an empty page says hasMore=false");
            return seen;
        };
        seen.extend(data);
        if !has_more {
            return seen;
        }
        query = next(&last);
    }
    panic!("paging did not end after 100 pages");
}

/// 500 messages: backwards with `before` from the newest, forwards with `after` from the first,
/// and forwards with `afterSeq` from 0. Each way, every message once, in order, ending with
/// `hasMore: false`, and each exactly as its POST returned it.
async fn pages_cover_every_message_once(backend: Backend) {
    const TOTAL: usize = 500;
    let server = TestServer::start(backend).await;
    let ann = server.user("o1", "ann@example.com");
    let group = ann.create_group(json!({ "name": "busy" })).await;
    let posted = post_in_batches(&ann, &group, "m", TOTAL, 25).await;
    assert_eq!(posted.len(), TOTAL);
    let posted_seqs: HashSet<i64> = posted.values().map(seq).collect();
    assert_eq!(
        posted_seqs,
        (1..=TOTAL as i64).collect(),
        "the POSTs were given seqs 1..=500"
    );

    let check_all = |seen: &[Value], what: &str| {
        assert_eq!(seen.len(), TOTAL, "{what}: every message, once");
        let ids: HashSet<String> = seen.iter().map(id).collect();
        assert_eq!(ids.len(), TOTAL, "{what}: no message twice");
        for message in seen {
            assert_eq!(
                Some(message),
                posted.get(&id(message)),
                "{what}: history returns each message exactly as the POST did"
            );
        }
    };

    // Backwards from the newest, `before` = the oldest seen so far.
    let backwards = page_through(&ann, &group, &format!("limit={PAGE}"), |last| {
        format!("limit={PAGE}&before={}", id(last))
    })
    .await;
    check_all(&backwards, "before");
    let seqs: Vec<i64> = backwards.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (1..=TOTAL as i64).rev().collect::<Vec<_>>(),
        "newest first, strictly descending"
    );
    let oldest = backwards.last().expect("oldest").clone();
    let newest = backwards.first().expect("newest").clone();
    let (data, has_more) = page(
        &ann,
        &format!(
            "/client/community/groups/{group}/messages?limit={PAGE}&before={}",
            id(&oldest)
        ),
    )
    .await;
    assert!(data.is_empty() && !has_more, "nothing before the first");

    // Forwards from the first with `after`.
    let mut forwards = vec![oldest.clone()];
    forwards.extend(
        page_through(&ann, &group, &format!("limit={PAGE}&after={}", id(&oldest)), |last| {
            format!("limit={PAGE}&after={}", id(last))
        })
        .await,
    );
    check_all(&forwards, "after");
    let seqs: Vec<i64> = forwards.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (1..=TOTAL as i64).collect::<Vec<_>>(),
        "after: oldest first, seqs exactly 1..=500"
    );
    let (data, has_more) = page(
        &ann,
        &format!(
            "/client/community/groups/{group}/messages?limit={PAGE}&after={}",
            id(&newest)
        ),
    )
    .await;
    assert!(data.is_empty() && !has_more, "nothing after the newest");

    // Forwards by seq from 0.
    let by_seq = page_through(&ann, &group, &format!("limit={PAGE}&afterSeq=0"), |last| {
        format!("limit={PAGE}&afterSeq={}", seq(last))
    })
    .await;
    check_all(&by_seq, "afterSeq");
    let seqs: Vec<i64> = by_seq.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (1..=TOTAL as i64).collect::<Vec<_>>(),
        "afterSeq: oldest first, seqs exactly 1..=500"
    );
}

/// 20 members post 15 messages each, all at once: seqs are exactly 1..=300, each poster's
/// messages are all there, and each poster's own messages got increasing seqs in send order.
async fn concurrent_posters_get_gapless_seqs(backend: Backend) {
    const POSTERS: usize = 20;
    const EACH: usize = 15;
    let server = TestServer::start(backend).await;
    let emails: Vec<String> = (0..POSTERS).map(|i| format!("poster{i}@example.com")).collect();
    let members: Vec<Value> = emails[1..]
        .iter()
        .map(|e| json!({ "email": e, "role": "member" }))
        .collect();
    let group = server
        .user("o1", &emails[0])
        .create_group(json!({ "name": "crowd", "members": members }))
        .await;

    let tasks = emails.iter().enumerate().map(|(p, email)| {
        let user = server.user("o1", email);
        let group = group.clone();
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(EACH);
            for m in 0..EACH {
                sent.push(user.post_message(&group, &format!("p{p}-m{m}")).await);
            }
            sent
        })
    });
    let sent: Vec<Vec<Value>> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("poster task"))
        .collect();

    for (p, messages) in sent.iter().enumerate() {
        let seqs: Vec<i64> = messages.iter().map(seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "poster {p}'s messages got increasing seqs in send order: {seqs:?}"
        );
        for m in messages {
            assert_eq!(m["from"], emails[p].as_str());
        }
    }

    let reader = server.user("o1", &emails[0]);
    let all = page_through(&reader, &group, &format!("limit={PAGE}&afterSeq=0"), |last| {
        format!("limit={PAGE}&afterSeq={}", seq(last))
    })
    .await;
    let seqs: Vec<i64> = all.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (1..=(POSTERS * EACH) as i64).collect::<Vec<_>>(),
        "seqs are exactly 1..=300: no gap, no duplicate"
    );
    let stored: HashMap<String, &Value> = all.iter().map(|m| (id(m), m)).collect();
    assert_eq!(stored.len(), POSTERS * EACH, "no message id twice");
    for (p, messages) in sent.iter().enumerate() {
        for (m, message) in messages.iter().enumerate() {
            let found = stored
                .get(&id(message))
                .unwrap_or_else(|| panic!("poster {p}'s message {m} is in the history"));
            assert_eq!(*found, message, "stored exactly as the POST answered");
            assert_eq!(found["content"], format!("p{p}-m{m}"));
        }
    }
}

/// Sends `content` with `clientMessageId` as `user`; returns (status, message).
async fn send_with_client_id(user: &User, group: &str, client_id: &str, content: &str) -> (u16, Value) {
    let reply = user
        .post(
            &format!("/client/community/groups/{group}/messages"),
            json!({ "content": content, "clientMessageId": client_id }),
        )
        .await;
    let status = reply.status.as_u16();
    assert!(
        status == 200 || status == 201,
        "idempotent send answered {status}: {}",
        reply.body
    );
    (status, reply.body)
}

/// The same `clientMessageId` sent 10 times at once stores one message (one 201, nine 200 with
/// the same id and seq), leaves no gap in the seqs, and a later retry still replays it. Another
/// sender, or another group, with the same `clientMessageId` is another message.
async fn client_message_id_is_idempotent_under_concurrency(backend: Backend) {
    const ROUNDS: usize = 5;
    const COPIES: usize = 10;
    let server = TestServer::start(backend).await;
    let ann = server.user("o1", "ann@example.com");
    let bob = server.user("o1", "bob@example.com");
    let group = ann
        .create_group(json!({ "name": "retries", "members": [{ "email": "bob@example.com", "role": "member" }] }))
        .await;
    let base = format!("/client/community/groups/{group}/messages");

    let mut expected_seq = 1;
    assert_eq!(seq(&ann.post_message(&group, "before").await), expected_seq);
    let mut stored_once = Vec::new();
    for round in 0..ROUNDS {
        let client_id = format!("retry-{round}");
        let replies = join_all((0..COPIES).map(|_| send_with_client_id(&ann, &group, &client_id, "same send"))).await;
        expected_seq += 1;
        let created: Vec<&Value> = replies.iter().filter(|(s, _)| *s == 201).map(|(_, m)| m).collect();
        assert_eq!(
            created.len(),
            1,
            "round {round}: exactly one 201 among {COPIES} concurrent sends: {:?}",
            replies.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
        let original = created[0].clone();
        assert_eq!(seq(&original), expected_seq, "round {round}: the next seq");
        assert_eq!(original["clientMessageId"], client_id.as_str());
        for (status, message) in &replies {
            assert_eq!(
                message, &original,
                "round {round}: every replay ({status}) returns the stored message"
            );
        }
        // The next normal message takes the next seq: the replays left no gap.
        expected_seq += 1;
        assert_eq!(
            seq(&ann.post_message(&group, &format!("after round {round}")).await),
            expected_seq,
            "round {round}: no seq was used up by the replays"
        );
        stored_once.push(original);
    }

    // A later retry, even with other content, replays the stored message.
    let (status, replay) = send_with_client_id(&ann, &group, "retry-0", "different content").await;
    assert_eq!(status, 200);
    assert_eq!(replay, stored_once[0]);

    // The same clientMessageId from another sender is another message.
    let (status, bobs) = send_with_client_id(&bob, &group, "retry-0", "same send").await;
    assert_eq!(status, 201, "another sender's clientMessageId is its own");
    assert_ne!(id(&bobs), id(&stored_once[0]));
    expected_seq += 1;
    assert_eq!(seq(&bobs), expected_seq);
    assert_eq!(bobs["from"], "bob@example.com");
    let (status, again) = send_with_client_id(&bob, &group, "retry-0", "same send").await;
    assert_eq!((status, &again), (200, &bobs), "and replays for that sender");

    // The same clientMessageId in another group is another message.
    let other = ann.create_group(json!({ "name": "elsewhere" })).await;
    let (status, elsewhere) = send_with_client_id(&ann, &other, "retry-0", "same send").await;
    assert_eq!(status, 201);
    assert_eq!(seq(&elsewhere), 1);

    // The history holds each send once, seqs 1..=n with no gap.
    let history = ann.get(&format!("{base}?afterSeq=0&limit=200")).await.expect(200);
    let data = history["data"].as_array().expect("data");
    let seqs: Vec<i64> = data.iter().map(seq).collect();
    assert_eq!(seqs, (1..=expected_seq).collect::<Vec<_>>());
    for round in 0..ROUNDS {
        let client_id = format!("retry-{round}");
        let copies = data
            .iter()
            .filter(|m| m["clientMessageId"] == client_id.as_str() && m["from"] == "ann@example.com")
            .count();
        assert_eq!(copies, 1, "round {round}: stored once");
    }
}

on_both_backends!(
    pages_cover_every_message_once,
    concurrent_posters_get_gapless_seqs,
    client_message_id_is_idempotent_under_concurrency,
);
