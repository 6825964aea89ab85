//! The socket auto-join look-up ("which groups is this user in?") shares one query among the
//! handshakes that ask at the same time on Postgres (shared/src/store/lookups.rs). Each caller
//! must still get exactly its own groups: none of another user's, none of another org's.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{Backend, TestServer};
use community_chat_shared::ids::{Email, OrgId};
use futures::future::join_all;
use serde_json::json;

async fn each_caller_gets_exactly_its_groups(backend: Backend) {
    let server = TestServer::start(backend).await;
    // 40 users in 2 orgs; user i is in the groups whose number is a multiple of (i % 5 + 1), and
    // the same e-mail exists in both orgs with different memberships.
    let mut expected: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for org in ["o1", "o2"] {
        let owner = server.user(org, "owner@example.com");
        for g in 0..12 {
            let members: Vec<_> = (0..20)
                .filter(|i| (g + usize::from(org == "o2")) % (i % 5 + 1) == 0)
                .map(|i| json!({ "email": format!("u{i}@example.com"), "role": "member" }))
                .collect();
            let id = owner
                .create_group(json!({ "name": format!("{org}-g{g}"), "members": members }))
                .await;
            for i in (0..20).filter(|i| (g + usize::from(org == "o2")) % (i % 5 + 1) == 0) {
                expected
                    .entry((org.to_owned(), format!("u{i}@example.com")))
                    .or_default()
                    .insert(id.clone());
            }
        }
    }
    let store = server.service.store();
    let mut asks = Vec::new();
    for round in 0..5 {
        for org in ["o1", "o2"] {
            for i in 0..21 {
                // u20 is in no group.
                asks.push((round, org.to_owned(), format!("u{i}@example.com")));
            }
        }
    }
    let answers = join_all(asks.iter().map(|(_, org, email)| async move {
        let org = OrgId::parse(org).expect("org");
        let email = Email::parse(email).expect("email");
        store.group_ids_of(&org, &email).await.expect("look-up")
    }))
    .await;
    for ((round, org, email), got) in asks.iter().zip(answers) {
        let got: BTreeSet<String> = got.iter().map(|g| g.0.to_string()).collect();
        let want = expected.get(&(org.clone(), email.clone())).cloned().unwrap_or_default();
        assert_eq!(got, want, "round {round}: groups of {email} in {org}");
    }
}

on_both_backends!(each_caller_gets_exactly_its_groups);
