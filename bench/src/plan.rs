//! Who is in which group: the users (each with a locally minted HS256 token), the groups
//! (created over REST by their first member, who is also the one who posts in them), and the
//! slots that record, per user and group, the last seq the user's socket received.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use rand::{SeedableRng, seq::SliceRandom};
use reqwest::header::HeaderValue;
use serde_json::json;

use crate::rest::Rest;

pub struct User {
    pub email: String,
    pub token: String,
    /// `Bearer <token>`.
    pub authorization: HeaderValue,
    /// Indexes into [`Plan::groups`].
    pub groups: Vec<u32>,
    /// Index of this user's first slot in the per-(user, group) arrays.
    pub first_slot: u32,
}

pub struct Group {
    /// The group's UUID once created.
    pub id: String,
    /// Indexes into [`Plan::users`]; the first is the creator (admin) and the poster.
    pub members: Vec<u32>,
}

pub struct Plan {
    pub org: String,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
    /// Group UUID -> index.
    pub index: HashMap<String, u32>,
    /// Number of (user, group) slots.
    pub slots: usize,
}

/// An HS256 JWT with the claims the server expects (email, sub, orgId, iat, exp).
pub fn mint(secret: &str, org: &str, email: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({ "email": email, "sub": email, "orgId": org, "iat": now, "exp": now + ttl.as_secs() });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

impl Plan {
    /// `users` users, each in `groups_per_user` groups of (at most) `group_size` members. Layer 0
    /// puts users in order (users 0..K in group 0, ...); every further layer shuffles them
    /// (fixed seed), so each user ends up in `groups_per_user` distinct groups.
    pub fn new(
        org: &str,
        secret: &str,
        users: usize,
        group_size: usize,
        groups_per_user: usize,
    ) -> anyhow::Result<Self> {
        if users == 0 || group_size == 0 || groups_per_user == 0 {
            bail!("users, group size and groups per user must be at least 1");
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut memberships: Vec<Vec<u32>> = vec![Vec::with_capacity(groups_per_user); users];
        let mut order: Vec<u32> = (0..users as u32).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for layer in 0..groups_per_user {
            if layer > 0 {
                order.shuffle(&mut rng);
            }
            for chunk in order.chunks(group_size) {
                let g = groups.len() as u32;
                for u in chunk {
                    memberships[*u as usize].push(g);
                }
                groups.push(Group {
                    id: String::new(),
                    members: chunk.to_vec(),
                });
            }
        }
        let ttl = Duration::from_secs(6 * 3600);
        let mut next_slot = 0u32;
        let users = memberships
            .into_iter()
            .enumerate()
            .map(|(i, groups)| {
                let email = format!("u{i}@bench.test");
                let token = mint(secret, org, &email, ttl)?;
                let authorization = HeaderValue::from_str(&format!("Bearer {token}"))?;
                let first_slot = next_slot;
                next_slot += groups.len() as u32;
                Ok(User {
                    email,
                    token,
                    authorization,
                    groups,
                    first_slot,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            org: org.to_owned(),
            users,
            groups,
            index: HashMap::new(),
            slots: next_slot as usize,
        })
    }

    /// Creates every group over REST (by its first member, listing the others), spread over the
    /// API processes, `concurrency` at a time.
    pub async fn create_groups(&mut self, rest: &Rest, apis: &[String], concurrency: usize) -> anyhow::Result<()> {
        let requests: Vec<(usize, String, HeaderValue, serde_json::Value)> = self
            .groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let creator = &self.users[group.members[0] as usize];
                let members: Vec<_> = group.members[1..]
                    .iter()
                    .map(|m| json!({ "email": self.users[*m as usize].email, "role": "member" }))
                    .collect();
                let body = json!({ "name": format!("bench-{g}"), "type": "private", "members": members });
                (g, apis[g % apis.len()].clone(), creator.authorization.clone(), body)
            })
            .collect();
        let ids: Vec<(usize, String)> = futures::stream::iter(requests)
            .map(|(g, api, auth, body)| async move {
                let id = rest
                    .create_group(&api, &auth, &body)
                    .await
                    .with_context(|| format!("creating group {g}"))?;
                Ok::<_, anyhow::Error>((g, id))
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        for (g, id) in ids {
            self.index.insert(id.clone(), g as u32);
            self.groups[g].id = id;
        }
        Ok(())
    }

    /// The slot of (user, group), if the user is a member.
    pub fn slot(&self, user: u32, group: u32) -> Option<usize> {
        let u = &self.users[user as usize];
        u.groups
            .iter()
            .position(|g| *g == group)
            .map(|i| u.first_slot as usize + i)
    }

    /// Total deliveries one message to each group would make (sum of group sizes).
    pub fn members_total(&self) -> usize {
        self.groups.iter().map(|g| g.members.len()).sum()
    }
}

/// Shared read-only plan.
pub type SharedPlan = Arc<Plan>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_in_distinct_groups() {
        let plan = Plan::new("o", "0123456789abcdef0123", 100, 10, 3).unwrap();
        assert_eq!(plan.groups.len(), 30);
        assert_eq!(plan.slots, 300);
        for (i, u) in plan.users.iter().enumerate() {
            assert_eq!(u.groups.len(), 3);
            for g in &u.groups {
                assert!(plan.groups[*g as usize].members.contains(&(i as u32)));
            }
        }
        assert_eq!(
            plan.slot(5, plan.users[5].groups[2]),
            Some(plan.users[5].first_slot as usize + 2)
        );
    }
}
