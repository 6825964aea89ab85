//! One message's trace crosses the tiers: an `api` and a `gateway` process export spans over
//! OTLP/HTTP (JSON) to a receiver in this test; the API's request span and the gateway's
//! fan-out span of the same message share one trace id (the context travels through Redis).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, routing::post};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "otlp-test-secret-0123456789";

/// Kills its processes and drops its database, even when the test fails.
struct Cluster {
    children: Vec<Child>,
    database: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
        let _dropped = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database))
            .status();
    }
}

fn spawn(args: &[&str], env: &[(&str, String)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_community-chat"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start community-chat");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines.next().expect("process printed its address").expect("read stdout");
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn token(org: &str, email: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_community-chat"))
        .args(["token", "--org", org, "--email", email])
        .env("JWT_SECRET", SECRET)
        .output()
        .expect("mint token");
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8").trim().to_owned()
}

/// Every span of the exported requests: (service name, span name, trace id).
fn spans(bodies: &[Value]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for body in bodies {
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let name = span["name"].as_str().unwrap_or_default().to_owned();
                    let trace = span["traceId"].as_str().unwrap_or_default().to_owned();
                    out.push((service.clone(), name, trace));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_is_one_trace_across_api_and_gateway() {
    // The OTLP receiver.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let receiver = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    sink.lock().expect("lock").push(v);
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    // A database of our own, migrated.
    let database = format!("cc_otlp_{}", uuid::Uuid::new_v4().simple());
    let created = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"])
        .arg(format!("CREATE DATABASE {database}"))
        .status()
        .expect("psql");
    assert!(created.success());
    let mut cluster = Cluster {
        children: Vec::new(),
        database: database.clone(),
    };
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let migrated = Command::new(env!("CARGO_BIN_EXE_community-chat"))
        .args(["migrate"])
        .env("DATABASE_URL", &url)
        .env("JWT_SECRET", SECRET)
        .stdout(Stdio::null())
        .status()
        .expect("migrate");
    assert!(migrated.success());
    let env = vec![
        ("DATABASE_URL", url.clone()),
        ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
        (
            "REDIS_CHANNEL_PREFIX",
            format!("cc-otlp-{}", uuid::Uuid::new_v4().simple()),
        ),
        ("JWT_SECRET", SECRET.to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ];
    let (api, api_url) = spawn(&["api"], &env);
    cluster.children.push(api);
    let (gateway, gateway_url) = spawn(&["gateway"], &env);
    cluster.children.push(gateway);

    // A group with one member, connected to the gateway.
    let http = reqwest::Client::new();
    let ann = token("org-t", "ann@example.com");
    let group: Value = http
        .post(format!("{api_url}/client/community/groups"))
        .header("orgid", "org-t")
        .bearer_auth(&ann)
        .json(&json!({ "name": "traced" }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let group_id = group["id"].as_str().expect("id").to_owned();

    let ws_url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        gateway_url.replacen("http", "ws", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("websocket");
    macro_rules! next_text {
        () => {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(WsMessage::Text(t)))) => break t.to_string(),
                    Ok(Some(Ok(_))) => continue,
                    other => panic!("socket closed or silent: {other:?}"),
                }
            }
        };
    }
    assert!(next_text!().starts_with('0'), "engine.io open");
    let connect = format!("40/community-chat,{}", json!({ "token": ann, "orgId": "org-t" }));
    ws.send(WsMessage::Text(connect.into())).await.expect("send connect");
    let answer = loop {
        let text = next_text!();
        if text != "2" {
            break text;
        }
        ws.send(WsMessage::Text("3".into())).await.expect("pong");
    };
    assert!(answer.starts_with("40/community-chat,"), "connected: {answer}");

    // A traced REST post, with a parent given by the caller.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let posted = http
        .post(format!("{api_url}/client/community/groups/{group_id}/messages"))
        .header("orgid", "org-t")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .bearer_auth(&ann)
        .json(&json!({ "content": "trace me" }))
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 201);
    let delivered = loop {
        let text = next_text!();
        if text == "2" {
            ws.send(WsMessage::Text("3".into())).await.expect("pong");
            continue;
        }
        if text.starts_with("42/community-chat,") {
            break text;
        }
    };
    assert!(
        delivered.contains("trace me"),
        "the socket got the message: {delivered}"
    );

    // Both tiers export spans of that one trace.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = spans(&received.lock().expect("lock"));
        let in_trace: Vec<_> = all.iter().filter(|(_, _, t)| t == trace_id).collect();
        let api_request = in_trace
            .iter()
            .any(|(s, n, _)| s == "community-chat-api" && n == "request");
        let api_publish = in_trace
            .iter()
            .any(|(s, n, _)| s == "community-chat-api" && n == "publish");
        let fan_out = in_trace
            .iter()
            .any(|(s, n, _)| s == "community-chat-gateway" && n == "fan_out");
        if api_request && api_publish && fan_out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans of trace {trace_id} missing; got {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cluster);
}
