//! Who may do what (DESIGN.md, REST and Identity): every endpoint × every kind of caller ×
//! public / private group, against the status the contract promises.
//!
//! Each row runs on a fresh group, so rows are independent; every row runs even when an
//! earlier one fails, and the test ends with the list of all mismatches. A refused request
//! (4xx) must also answer the `{ statusCode, message, error }` shape and leave the data as it
//! was (the group, its members, its history and the group lists, read before and after).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Backend, SECRET, TestServer, User, check_error_shape};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use self::{Caller::*, Endpoint::*};

const ORG_A: &str = "org-a";
const ORG_B: &str = "org-b";
/// The group's only admin (its creator).
const ADMIN: &str = "ann@example.com";
/// A plain member.
const MEMBER: &str = "bob@example.com";
/// Another plain member: the target of "remove another member".
const OTHER_MEMBER: &str = "carol@example.com";
/// In org A, but not in the group.
const NON_MEMBER: &str = "eve@example.com";
/// Not in the group yet: the target of "add another member".
const NEWCOMER: &str = "dave@example.com";

/// What is called.
#[derive(Clone, Copy, Debug)]
enum Endpoint {
    /// POST /client/community/groups
    Create,
    /// GET /client/community/groups
    List,
    /// GET /:groupId
    Read,
    /// PATCH /:groupId (rename)
    Update,
    /// DELETE /:groupId
    Delete,
    /// POST /:groupId/messages
    PostMessage,
    /// GET /:groupId/messages
    History,
    /// POST /:groupId/members with someone else's e-mail
    AddOther,
    /// POST /:groupId/members with the caller's own e-mail (no role: `member`)
    SelfJoin,
    /// DELETE /:groupId/members/:email of another member
    RemoveOther,
    /// DELETE /:groupId/members/:email of the caller itself
    LeaveSelf,
}

/// Who calls. Every caller that should be refused before any rule applies (bad or missing
/// credentials) carries the admin's identity, so that failing open would show as a success.
#[derive(Clone, Copy, Debug)]
enum Caller {
    /// The group's admin, org A.
    Admin,
    /// A member of the group, org A.
    Member,
    /// A user of org A outside the group.
    NonMember,
    /// The admin's e-mail in org B, with org B's own valid token and `orgid: org-b`.
    OtherOrg,
    /// No Authorization header.
    NoToken,
    /// `Bearer not-a-jwt`.
    Garbage,
    /// The admin's claims, signed with another secret.
    BadSignature,
    /// The admin's claims, signed correctly, expired an hour ago.
    Expired,
    /// The admin's claims, signed correctly, without `exp` (DESIGN: `exp` required).
    NoExpiry,
    /// The admin's valid token, no `orgid` header.
    NoOrgId,
    /// A valid token of org B (the admin's e-mail) sent with `orgid: org-a`.
    WrongOrg,
}

/// `(endpoint, caller, expected on a public group, expected on a private group)`.
type Row = (Endpoint, Caller, u16, u16);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // endpoint     caller         public  private
    (Create,        Admin,         201,    201),
    (Create,        Member,        201,    201),
    (Create,        NonMember,     201,    201),
    (Create,        OtherOrg,      201,    201),
    (Create,        NoToken,       401,    401),
    (Create,        Garbage,       401,    401),
    (Create,        BadSignature,  401,    401),
    (Create,        Expired,       401,    401),
    (Create,        NoExpiry,      401,    401),
    (Create,        NoOrgId,       400,    400),
    (Create,        WrongOrg,      403,    403),

    (List,          Admin,         200,    200),
    (List,          Member,        200,    200),
    (List,          NonMember,     200,    200),
    (List,          OtherOrg,      200,    200),
    (List,          NoToken,       401,    401),
    (List,          Garbage,       401,    401),
    (List,          BadSignature,  401,    401),
    (List,          Expired,       401,    401),
    (List,          NoExpiry,      401,    401),
    (List,          NoOrgId,       400,    400),
    (List,          WrongOrg,      403,    403),

    // A private group is 404 to non-members; every group is 404 from another org.
    (Read,          Admin,         200,    200),
    (Read,          Member,        200,    200),
    (Read,          NonMember,     200,    404),
    (Read,          OtherOrg,      404,    404),
    (Read,          NoToken,       401,    401),
    (Read,          Garbage,       401,    401),
    (Read,          BadSignature,  401,    401),
    (Read,          Expired,       401,    401),
    (Read,          NoExpiry,      401,    401),
    (Read,          NoOrgId,       400,    400),
    (Read,          WrongOrg,      403,    403),

    (Update,        Admin,         200,    200),
    (Update,        Member,        403,    403),
    (Update,        NonMember,     403,    404),
    (Update,        OtherOrg,      404,    404),
    (Update,        NoToken,       401,    401),
    (Update,        Garbage,       401,    401),
    (Update,        BadSignature,  401,    401),
    (Update,        Expired,       401,    401),
    (Update,        NoExpiry,      401,    401),
    (Update,        NoOrgId,       400,    400),
    (Update,        WrongOrg,      403,    403),

    (Delete,        Admin,         204,    204),
    (Delete,        Member,        403,    403),
    (Delete,        NonMember,     403,    404),
    (Delete,        OtherOrg,      404,    404),
    (Delete,        NoToken,       401,    401),
    (Delete,        Garbage,       401,    401),
    (Delete,        BadSignature,  401,    401),
    (Delete,        Expired,       401,    401),
    (Delete,        NoExpiry,      401,    401),
    (Delete,        NoOrgId,       400,    400),
    (Delete,        WrongOrg,      403,    403),

    (PostMessage,   Admin,         201,    201),
    (PostMessage,   Member,        201,    201),
    (PostMessage,   NonMember,     403,    404),
    (PostMessage,   OtherOrg,      404,    404),
    (PostMessage,   NoToken,       401,    401),
    (PostMessage,   Garbage,       401,    401),
    (PostMessage,   BadSignature,  401,    401),
    (PostMessage,   Expired,       401,    401),
    (PostMessage,   NoExpiry,      401,    401),
    (PostMessage,   NoOrgId,       400,    400),
    (PostMessage,   WrongOrg,      403,    403),

    (History,       Admin,         200,    200),
    (History,       Member,        200,    200),
    (History,       NonMember,     200,    404),
    (History,       OtherOrg,      404,    404),
    (History,       NoToken,       401,    401),
    (History,       Garbage,       401,    401),
    (History,       BadSignature,  401,    401),
    (History,       Expired,       401,    401),
    (History,       NoExpiry,      401,    401),
    (History,       NoOrgId,       400,    400),
    (History,       WrongOrg,      403,    403),

    (AddOther,      Admin,         201,    201),
    (AddOther,      Member,        403,    403),
    (AddOther,      NonMember,     403,    404),
    (AddOther,      OtherOrg,      404,    404),
    (AddOther,      NoToken,       401,    401),
    (AddOther,      Garbage,       401,    401),
    (AddOther,      BadSignature,  401,    401),
    (AddOther,      Expired,       401,    401),
    (AddOther,      NoExpiry,      401,    401),
    (AddOther,      NoOrgId,       400,    400),
    (AddOther,      WrongOrg,      403,    403),

    // The admin "joining" with the default role would demote the last admin: 409. A member
    // is already in: setting a role is for admins, so 403 (DESIGN: "admin, or self-join").
    (SelfJoin,      Admin,         409,    409),
    (SelfJoin,      Member,        403,    403),
    (SelfJoin,      NonMember,     201,    404),
    (SelfJoin,      OtherOrg,      404,    404),
    (SelfJoin,      NoToken,       401,    401),
    (SelfJoin,      Garbage,       401,    401),
    (SelfJoin,      BadSignature,  401,    401),
    (SelfJoin,      Expired,       401,    401),
    (SelfJoin,      NoExpiry,      401,    401),
    (SelfJoin,      NoOrgId,       400,    400),
    (SelfJoin,      WrongOrg,      403,    403),

    (RemoveOther,   Admin,         204,    204),
    (RemoveOther,   Member,        403,    403),
    (RemoveOther,   NonMember,     403,    404),
    (RemoveOther,   OtherOrg,      404,    404),
    (RemoveOther,   NoToken,       401,    401),
    (RemoveOther,   Garbage,       401,    401),
    (RemoveOther,   BadSignature,  401,    401),
    (RemoveOther,   Expired,       401,    401),
    (RemoveOther,   NoExpiry,      401,    401),
    (RemoveOther,   NoOrgId,       400,    400),
    (RemoveOther,   WrongOrg,      403,    403),

    // The last admin cannot leave (409); a non-member of a public group is not a member (404).
    (LeaveSelf,     Admin,         409,    409),
    (LeaveSelf,     Member,        204,    204),
    (LeaveSelf,     NonMember,     404,    404),
    (LeaveSelf,     OtherOrg,      404,    404),
    (LeaveSelf,     NoToken,       401,    401),
    (LeaveSelf,     Garbage,       401,    401),
    (LeaveSelf,     BadSignature,  401,    401),
    (LeaveSelf,     Expired,       401,    401),
    (LeaveSelf,     NoExpiry,      401,    401),
    (LeaveSelf,     NoOrgId,       400,    400),
    (LeaveSelf,     WrongOrg,      403,    403),
];

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// An HS256 token built by hand, for the cases `Authenticator::mint` cannot make.
fn forge(secret: &str, org: &str, email: &str, exp: Option<i64>) -> String {
    let mut claims = json!({ "email": email, "sub": email, "orgId": org, "iat": now_secs() - 7200 });
    if let Some(exp) = exp {
        claims["exp"] = json!(exp);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// The client for `caller`, and the e-mail it acts as (for self-join and leave).
fn client(server: &TestServer, caller: Caller) -> (User, &'static str) {
    let with = |org: Option<&str>, token: Option<String>| User {
        base: server.base.clone(),
        http: server.http.clone(),
        org: org.map(str::to_owned),
        token,
    };
    let hour = Some(now_secs() + 3600);
    match caller {
        Admin => (server.user(ORG_A, ADMIN), ADMIN),
        Member => (server.user(ORG_A, MEMBER), MEMBER),
        NonMember => (server.user(ORG_A, NON_MEMBER), NON_MEMBER),
        OtherOrg => (server.user(ORG_B, ADMIN), ADMIN),
        NoToken => (with(Some(ORG_A), None), ADMIN),
        Garbage => (with(Some(ORG_A), Some("not-a-jwt".into())), ADMIN),
        BadSignature => (
            with(
                Some(ORG_A),
                Some(forge("another-secret-0123456789", ORG_A, ADMIN, hour)),
            ),
            ADMIN,
        ),
        Expired => (
            with(Some(ORG_A), Some(forge(SECRET, ORG_A, ADMIN, Some(now_secs() - 3600)))),
            ADMIN,
        ),
        NoExpiry => (with(Some(ORG_A), Some(forge(SECRET, ORG_A, ADMIN, None))), ADMIN),
        NoOrgId => (with(None, Some(server.token(ORG_A, ADMIN))), ADMIN),
        WrongOrg => (with(Some(ORG_A), Some(server.token(ORG_B, ADMIN))), ADMIN),
    }
}

/// The request of `endpoint` on `group`, as `email`.
fn request(endpoint: Endpoint, group: &str, email: &str, group_type: &str) -> (Method, String, Option<Value>) {
    let groups = "/client/community/groups".to_owned();
    let one = format!("{groups}/{group}");
    match endpoint {
        Create => (
            Method::POST,
            groups,
            Some(json!({ "name": "made in a row", "type": group_type })),
        ),
        List => (Method::GET, groups, None),
        Read => (Method::GET, one, None),
        Update => (Method::PATCH, one, Some(json!({ "name": "renamed" }))),
        Delete => (Method::DELETE, one, None),
        PostMessage => (
            Method::POST,
            format!("{one}/messages"),
            Some(json!({ "content": "hello from a row" })),
        ),
        History => (Method::GET, format!("{one}/messages"), None),
        AddOther => (
            Method::POST,
            format!("{one}/members"),
            Some(json!({ "email": NEWCOMER })),
        ),
        SelfJoin => (Method::POST, format!("{one}/members"), Some(json!({ "email": email }))),
        RemoveOther => (Method::DELETE, format!("{one}/members/{OTHER_MEMBER}"), None),
        LeaveSelf => (Method::DELETE, format!("{one}/members/{email}"), None),
    }
}

/// Everything a refused request must not change, read by users who may read it.
async fn snapshot(server: &TestServer, group: &str) -> Vec<(String, u16, Value)> {
    let admin = server.user(ORG_A, ADMIN);
    let outsider = server.user(ORG_A, NON_MEMBER);
    let org_b = server.user(ORG_B, ADMIN);
    let reads = [
        ("org-a admin", &admin, format!("/client/community/groups/{group}")),
        (
            "org-a admin",
            &admin,
            format!("/client/community/groups/{group}/messages?limit=200"),
        ),
        ("org-a admin", &admin, "/client/community/groups?limit=100".into()),
        (
            "org-a non-member",
            &outsider,
            "/client/community/groups?visibility=public&limit=100".into(),
        ),
        ("org-b user", &org_b, "/client/community/groups?limit=100".into()),
        (
            "org-b user",
            &org_b,
            "/client/community/groups?visibility=public&limit=100".into(),
        ),
    ];
    let mut out = Vec::new();
    for (who, user, path) in reads {
        let reply = user.get(&path).await;
        out.push((format!("{who}: GET {path}"), reply.status.as_u16(), reply.body));
    }
    out
}

async fn every_endpoint_caller_and_group_type(backend: Backend) {
    let server = TestServer::start(backend).await;
    let admin = server.user(ORG_A, ADMIN);
    // Org B exists, with a group of its own, so "another org" is a real tenant.
    server
        .user(ORG_B, ADMIN)
        .create_group(json!({ "name": "org-b group", "type": "public" }))
        .await;

    let mut failures = Vec::new();
    let mut cases = 0;
    for &(endpoint, caller, on_public, on_private) in TABLE {
        for (group_type, expected) in [("public", on_public), ("private", on_private)] {
            cases += 1;
            let group = admin
                .create_group(json!({
                    "name": format!("{endpoint:?} by {caller:?}"),
                    "type": group_type,
                    "members": [
                        { "email": MEMBER, "role": "member" },
                        { "email": OTHER_MEMBER, "role": "member" },
                    ],
                }))
                .await;
            admin.post_message(&group, "the first message").await;

            let before = snapshot(&server, &group).await;
            let (user, email) = client(&server, caller);
            let (method, path, body) = request(endpoint, &group, email, group_type);
            let reply = user.send(method.clone(), &path, body).await;
            let status = reply.status.as_u16();

            let case = format!("{endpoint:?} as {caller:?} on a {group_type} group ({method} {path})");
            if status != expected {
                failures.push(format!("{case}: expected {expected}, got {status} {}", reply.body));
            }
            if status >= 400
                && let Err(problem) = check_error_shape(&reply.body, status)
            {
                failures.push(format!("{case}: {problem}"));
            }
            if expected >= 400
                && let Some(change) = common::snapshot_difference(&before, &snapshot(&server, &group).await)
            {
                failures.push(format!("{case}: refused, but {change}"));
            }
        }
    }
    assert_eq!(cases, TABLE.len() * 2);
    assert!(
        failures.is_empty(),
        "{} of {cases} authorization cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

on_both_backends!(every_endpoint_caller_and_group_type);
