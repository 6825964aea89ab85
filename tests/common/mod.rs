//! Test harness: a fresh database per test (Postgres or SQLite), the real router served on a
//! loopback port, and a small HTTP client that acts as one user of one org.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use community_chat_api::AppState;
use community_chat_shared::{
    auth::Authenticator,
    bus::{Bus, InProcessBus},
    config::Config,
    domain::ChatService,
    ids::{Email, OrgId},
    metrics::Metrics,
    store::Store,
};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// Where the admin connection for creating test databases points.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test only, dropped (Postgres) or deleted (SQLite) after it.
pub struct TestDb {
    pub url: String,
    backend: Backend,
    name: String,
}

impl TestDb {
    pub async fn create(backend: Backend) -> Self {
        let name = format!("cc_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let conn = Database::connect(admin.as_str())
                    .await
                    .expect("connect to the test Postgres");
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                conn.close().await.ok();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Self {
                    url: format!("{base}/{name}"),
                    backend,
                    name,
                }
            }
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join("community-chat-tests");
                std::fs::create_dir_all(&dir).expect("create sqlite test dir");
                let path = dir.join(format!("{name}.db"));
                Self {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    backend,
                    name,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match self.backend {
            Backend::Postgres => {
                let name = self.name.clone();
                // Drop runs outside async: a short-lived runtime on its own thread.
                let dropped = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    rt.block_on(async {
                        let conn = Database::connect(postgres_admin_url().as_str()).await.ok()?;
                        conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .await
                            .ok()?;
                        conn.close().await.ok()
                    })
                })
                .join();
                if !matches!(dropped, Ok(Some(()))) {
                    eprintln!("warning: could not drop test database {}", self.name);
                }
            }
            Backend::Sqlite => {
                let path = self
                    .url
                    .trim_start_matches("sqlite://")
                    .split('?')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                for suffix in ["", "-wal", "-shm"] {
                    let _ignored = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
    }
}

/// The REST router on a loopback port, over a fresh database and an in-process bus.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub auth: Arc<Authenticator>,
    pub service: ChatService,
    pub bus: Arc<InProcessBus>,
    pub db: Arc<TestDb>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    /// `flags` are extra configuration flags, e.g. `["--max-content-chars", "20"]`.
    pub async fn start_with(backend: Backend, flags: &[&str]) -> Self {
        Self::start_on(Arc::new(TestDb::create(backend).await), flags).await
    }

    /// Another server over the same database (another pod), with its own pool and bus.
    pub async fn beside(&self) -> Self {
        Self::start_on(self.db.clone(), &[]).await
    }

    async fn start_on(db: Arc<TestDb>, flags: &[&str]) -> Self {
        let mut all = vec!["--jwt-secret", SECRET, "--database-url", &db.url];
        all.extend_from_slice(flags);
        let config = Config::from_flags(all).expect("test config");
        config.validate().expect("valid test config");
        let store = Store::connect(&db.url, 8).await.expect("connect store");
        store.migrate().await.expect("migrate");
        let bus = Arc::new(InProcessBus::default());
        let auth = Arc::new(Authenticator::from_config(&config, false).expect("authenticator"));
        let service = ChatService::new(store, bus.clone() as Arc<dyn Bus>, config.limits.clone());
        let state = AppState::new(service.clone(), auth.clone(), Arc::new(Metrics::default()));
        let router = community_chat_api::router(state, &config).expect("router");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            base,
            http,
            auth,
            service,
            bus,
            db,
            task,
        }
    }

    pub fn token(&self, org: &str, email: &str) -> String {
        let org = OrgId::parse(org).expect("org");
        let email = Email::parse(email).expect("email");
        self.auth.mint(&org, &email, Duration::from_secs(3600)).expect("mint")
    }

    /// A client acting as `email` in `org`.
    pub fn user(&self, org: &str, email: &str) -> User {
        User {
            base: self.base.clone(),
            http: self.http.clone(),
            org: Some(org.to_owned()),
            token: Some(self.token(org, email)),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One caller: its org header and token (either may be absent or wrong, for auth tests).
#[derive(Clone)]
pub struct User {
    pub base: String,
    pub http: reqwest::Client,
    pub org: Option<String>,
    pub token: Option<String>,
}

/// A response: status and parsed JSON body (`Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// Asserts the status, and for errors the `{ statusCode, message, error }` shape.
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status, body: {}", self.body);
        if status >= 400 {
            assert_error_shape(&self.body, status);
        }
        self.body
    }
}

#[track_caller]
pub fn assert_error_shape(body: &Value, status: u16) {
    if let Err(problem) = check_error_shape(body, status) {
        panic!("{problem}");
    }
}

/// The `{ statusCode, message, error }` check of [`assert_error_shape`], as a value, for table
/// tests that collect every failure before asserting.
pub fn check_error_shape(body: &Value, status: u16) -> Result<(), String> {
    if body["statusCode"] != status {
        return Err(format!("error body has statusCode {status}: {body}"));
    }
    if body["message"].as_str().is_none_or(str::is_empty) {
        return Err(format!("error body has a message: {body}"));
    }
    if body["error"].as_str().is_none_or(str::is_empty) {
        return Err(format!("error body has an error: {body}"));
    }
    Ok(())
}

impl User {
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(org) = &self.org {
            request = request.header("orgid", org);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    /// Sends a raw body with a content type (for malformed-input tests).
    pub async fn send_raw(&self, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(org) = &self.org {
            request = request.header("orgid", org);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    /// Creates a group and returns its id.
    pub async fn create_group(&self, body: Value) -> String {
        let group = self.post("/client/community/groups", body).await.expect(201);
        group["id"].as_str().expect("group id").to_owned()
    }

    /// Posts `content` and returns the stored message.
    pub async fn post_message(&self, group: &str, content: &str) -> Value {
        self.post(
            &format!("/client/community/groups/{group}/messages"),
            serde_json::json!({ "content": content }),
        )
        .await
        .expect(201)
    }
}

/// Runs each named `async fn name(backend: Backend)` as two tests, on Postgres and on SQLite.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
    };
}

/// The first difference between two snapshots of `(what, status, body)` reads, if any: the
/// "bad input changes nothing" check of the table tests.
pub fn snapshot_difference(before: &[(String, u16, Value)], after: &[(String, u16, Value)]) -> Option<String> {
    before
        .iter()
        .zip(after)
        .find(|(b, a)| b != a)
        .map(|((what, s0, b0), (_, s1, b1))| format!("{what} changed: {s0} {b0} -> {s1} {b1}"))
}
