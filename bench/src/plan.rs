//! Who is in which group: the users (each with a token: minted here with the servers' HS256
//! secret, or printed by an operator's command), the groups (created over REST by their first
//! member, who is also the one who posts in them), and the slots that record, per user and
//! group, the last seq the user's socket received.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use rand::{SeedableRng, seq::SliceRandom};
use reqwest::header::HeaderValue;
use serde_json::json;

use crate::rest::Rest;

/// Token commands run at once while issuing tokens.
const TOKEN_COMMANDS_IN_FLIGHT: usize = 8;
/// Longest a token command may take.
const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the users' tokens come from.
#[derive(Clone, Debug)]
pub enum Tokens {
    /// Minted by the bench: HS256 with this secret (the servers' `JWT_SECRET`).
    Secret(String),
    /// Printed by this shell command, run once per user with `{org}` and `{email}` replaced
    /// (also in `$BENCH_ORG` and `$BENCH_EMAIL`): for servers whose keys the bench does not hold.
    Command(String),
}

impl Tokens {
    /// One token per e-mail of `emails`, in order, for `org`, valid for `ttl` at least (a
    /// command decides its own lifetime).
    pub async fn issue(&self, org: &str, emails: &[String], ttl: Duration) -> anyhow::Result<Vec<String>> {
        match self {
            Tokens::Secret(secret) => emails.iter().map(|email| mint(secret, org, email, ttl)).collect(),
            Tokens::Command(command) => {
                futures::stream::iter(emails)
                    .map(|email| run_token_command(command, org, email))
                    .buffered(TOKEN_COMMANDS_IN_FLIGHT)
                    .try_collect()
                    .await
            }
        }
    }
}

/// Runs the token command for one user; its trimmed output (a leading `Bearer ` removed).
async fn run_token_command(command: &str, org: &str, email: &str) -> anyhow::Result<String> {
    // Org and e-mail are the bench's own (letters, digits, `.-_@`): safe inside a shell word.
    let line = command.replace("{org}", org).replace("{email}", email);
    let run = tokio::process::Command::new("sh")
        .args(["-c", &line])
        .env("BENCH_ORG", org)
        .env("BENCH_EMAIL", email)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(TOKEN_COMMAND_TIMEOUT, run)
        .await
        .with_context(|| format!("token command for {email} took over {TOKEN_COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("running the token command `{line}`"))?;
    if !out.status.success() {
        bail!(
            "token command `{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("token command printed something other than text")?;
    let token = text.trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("token command `{line}` printed no single token: {:.200}", text.trim());
    }
    Ok(token.to_owned())
}

/// The e-mail of user `i`.
pub fn email(i: usize) -> String {
    format!("u{i}@bench.test")
}

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
    /// One user per token (user `i` is [`email`]`(i)`, holding `tokens[i]`), each in
    /// `groups_per_user` groups of (at most) `group_size` members. Layer 0 puts users in order
    /// (users 0..K in group 0, ...); every further layer shuffles them (fixed seed), so each user
    /// ends up in `groups_per_user` distinct groups.
    pub fn new(org: &str, tokens: Vec<String>, group_size: usize, groups_per_user: usize) -> anyhow::Result<Self> {
        let users = tokens.len();
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
        let mut next_slot = 0u32;
        let users = memberships
            .into_iter()
            .zip(tokens)
            .enumerate()
            .map(|(i, (groups, token))| {
                let email = email(i);
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
        let tokens = (0..100).map(|i| format!("t{i}")).collect();
        let plan = Plan::new("o", tokens, 10, 3).unwrap();
        assert_eq!(plan.users[7].token, "t7");
        assert_eq!(plan.users[7].email, email(7));
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

    #[tokio::test]
    async fn token_command_gets_org_and_email() {
        let tokens = Tokens::Command("echo \"Bearer t-{org}-$BENCH_EMAIL\"".into());
        let issued = tokens
            .issue("acme", &[email(0), email(1)], Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(issued, ["t-acme-u0@bench.test", "t-acme-u1@bench.test"]);
        let failing = Tokens::Command("echo nope >&2; exit 3".into());
        let error = failing
            .issue("acme", &[email(0)], Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(format!("{error:#}").contains("nope"), "{error:#}");
    }
}
