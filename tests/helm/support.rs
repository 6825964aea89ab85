//! Helpers of `tests/helm_chart.rs`: rendering the chart with `helm-template`, finding objects
//! in the result, and the checks several tests share (cross-object references, the tier pods).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Once,
};

use serde_json::Value;

pub const CHART: &str = "helm/community-chat";
pub const KUBERNETES: &str = "1.30";
pub const RELEASE: &str = "chat";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn helm_template() -> PathBuf {
    let beside = repo().join("../shared/tools/helm-template");
    if beside.exists() {
        return beside;
    }
    match std::env::var_os("HELM_TEMPLATE") {
        Some(path) => PathBuf::from(path),
        None => panic!("helm-template is neither at {} nor in $HELM_TEMPLATE", beside.display()),
    }
}

/// The Python of the venv helm-template sets up (PyYAML, helm_sdkpy), made on first use.
pub fn helper_python() -> PathBuf {
    static VENV: Once = Once::new();
    VENV.call_once(|| {
        // Its start-up (venv included) runs before argument parsing.
        let status = Command::new(helm_template())
            .arg("--help")
            .stdout(Stdio::null())
            .status()
            .expect("run helm-template");
        assert!(status.success(), "helm-template --help failed");
    });
    let venv =
        std::env::var_os("HELM_TEMPLATE_VENV").map_or_else(|| PathBuf::from("/tmp/helm-template-venv"), PathBuf::from);
    let python = venv.join("bin/python");
    if python.exists() {
        python
    } else {
        PathBuf::from("python3")
    }
}

pub fn helper(args: &[&str], stdin: &[u8]) -> Value {
    let mut child = Command::new(helper_python())
        .arg(repo().join("tests/helm/helper.py"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/helm/helper.py");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("helper output");
    assert!(
        out.status.success(),
        "helper {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("helper prints JSON")
}

/// Renders the chart with `--validate 1.30`: the objects, or helm-template's error output.
pub fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(helm_template())
        .current_dir(repo())
        .args([CHART, "--release", RELEASE, "--validate", KUBERNETES])
        .args(args)
        .output()
        .expect("run helm-template");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    match helper(&["to-json"], &out.stdout) {
        Value::Array(objects) => Ok(objects),
        other => panic!("expected a list of objects, got {other}"),
    }
}

#[track_caller]
pub fn render_ok(args: &[&str]) -> Vec<Value> {
    render(args).unwrap_or_else(|e| panic!("helm-template {args:?} failed:\n{e}"))
}

pub fn kind_counts(objects: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in objects {
        *counts.entry(o["kind"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    counts
}

pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[track_caller]
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kind_counts(objects)))
}

/// `<release>-<chart>`, the prefix of every object's name.
pub fn fullname() -> String {
    format!("{RELEASE}-community-chat")
}

/// The name of an object of one part of the release (`api`, `gateway`, `config`, `migrate`).
pub fn tier(name: &str) -> String {
    format!("{}-{name}", fullname())
}

/// Whether every label of `selector` is among `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

pub fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The Secret and key an env var of the container reads.
pub fn secret_ref<'a>(container: &'a Value, var: &str) -> Option<(&'a str, &'a str)> {
    let entry = container["env"].as_array()?.iter().find(|e| e["name"] == var)?;
    let r = &entry["valueFrom"]["secretKeyRef"];
    Some((r["name"].as_str()?, r["key"].as_str()?))
}

/// The cross-object references Kubernetes validation cannot see: selectors match pods, Services
/// and ServiceMonitors find their targets, and every referenced Secret is rendered or external.
pub fn check_references(objects: &[Value], external_secrets: &[&str]) {
    let deployments = of_kind(objects, "Deployment");
    let pod_labels = |d: &&Value| d["spec"]["template"]["metadata"]["labels"].clone();
    for d in &deployments {
        assert!(
            selects(&d["spec"]["selector"]["matchLabels"], &pod_labels(d)),
            "{} selects its pods",
            d["metadata"]["name"]
        );
    }
    for kind in ["Service", "PodDisruptionBudget"] {
        for o in of_kind(objects, kind) {
            let selector = if kind == "Service" {
                &o["spec"]["selector"]
            } else {
                &o["spec"]["selector"]["matchLabels"]
            };
            let matched = deployments.iter().filter(|d| selects(selector, &pod_labels(d))).count();
            assert_eq!(
                matched, 1,
                "{kind} {} selects the pods of exactly one Deployment",
                o["metadata"]["name"]
            );
        }
    }
    for hpa in of_kind(objects, "HorizontalPodAutoscaler") {
        let target = &hpa["spec"]["scaleTargetRef"];
        find(objects, "Deployment", target["name"].as_str().expect("target name"));
        assert!(hpa["spec"]["minReplicas"].as_u64() <= hpa["spec"]["maxReplicas"].as_u64());
    }
    let services = of_kind(objects, "Service");
    let has_port = |svc: &Value, name: &Value| {
        svc["spec"]["ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| &p["name"] == name))
    };
    for monitor in of_kind(objects, "ServiceMonitor") {
        let matched: Vec<_> = services
            .iter()
            .filter(|s| selects(&monitor["spec"]["selector"]["matchLabels"], &s["metadata"]["labels"]))
            .collect();
        assert_eq!(
            matched.len(),
            1,
            "ServiceMonitor {} selects one Service",
            monitor["metadata"]["name"]
        );
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(endpoint["path"], "/metrics");
        assert!(
            has_port(matched[0], &endpoint["port"]),
            "the monitored Service has port {}",
            endpoint["port"]
        );
    }
    for ingress in of_kind(objects, "Ingress") {
        for rule in ingress["spec"]["rules"].as_array().expect("rules") {
            for path in rule["http"]["paths"].as_array().expect("paths") {
                let backend = &path["backend"]["service"];
                let svc = find(objects, "Service", backend["name"].as_str().expect("backend name"));
                assert!(has_port(svc, &backend["port"]["name"]), "Ingress backend port exists");
            }
        }
    }
    for workload in of_kind(objects, "Deployment")
        .into_iter()
        .chain(of_kind(objects, "Job"))
    {
        let c = container(workload);
        for entry in c["env"].as_array().into_iter().flatten() {
            if let Some(name) = entry["valueFrom"]["secretKeyRef"]["name"].as_str() {
                let rendered = of_kind(objects, "Secret").iter().any(|s| s["metadata"]["name"] == name);
                assert!(
                    rendered || external_secrets.contains(&name),
                    "{} reads an unknown Secret {name}",
                    entry["name"]
                );
            }
        }
        for from in c["envFrom"].as_array().into_iter().flatten() {
            find(
                objects,
                "ConfigMap",
                from["configMapRef"]["name"].as_str().expect("configMapRef"),
            );
        }
    }
}

/// The literal value of an env var of the container.
pub fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    let entry = container["env"].as_array()?.iter().find(|e| e["name"] == var)?;
    entry["value"].as_str()
}

/// The tier's Deployment runs `community-chat <tier>` hardened, probed and on port 8080.
pub fn check_tier_pod(deployment: &Value, tier_name: &str) {
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(deployment);
    assert_eq!(c["args"], serde_json::json!([tier_name]));
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
    assert!(c["resources"]["requests"].is_object(), "resources are set");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let tmp = c["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == "/tmp"));
    assert!(tmp.is_some(), "an emptyDir is mounted at /tmp");
    assert_eq!(pod["automountServiceAccountToken"], false);
}
