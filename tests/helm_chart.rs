//! The Helm chart (`helm/community-chat`): it renders with the default and the production values,
//! every object is valid for Kubernetes 1.30, the objects refer to each other correctly, `helm
//! lint` finds nothing above info, values.schema.json rejects wrong values, and every field of the
//! values files is documented.
//!
//! Rendering and validation use `helm-template` (Helm's library against a fake API server, then
//! kubernetes-validate), found at `../shared/tools/helm-template` beside the repository or at
//! `$HELM_TEMPLATE`. It sets up its Python venv on first use; `tests/helm/helper.py` runs in that
//! venv to turn YAML into JSON and to call helm_sdkpy's Lint action.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Once,
};

use serde_json::Value;

const CHART: &str = "helm/community-chat";
const KUBERNETES: &str = "1.30";
const RELEASE: &str = "chat";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helm_template() -> PathBuf {
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
fn helper_python() -> PathBuf {
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

fn helper(args: &[&str], stdin: &[u8]) -> Value {
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
fn render(args: &[&str]) -> Result<Vec<Value>, String> {
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
fn render_ok(args: &[&str]) -> Vec<Value> {
    render(args).unwrap_or_else(|e| panic!("helm-template {args:?} failed:\n{e}"))
}

fn kind_counts(objects: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for o in objects {
        *counts.entry(o["kind"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    counts
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

#[track_caller]
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kind_counts(objects)))
}

/// `<release>-<chart>`, the prefix of every object's name.
fn fullname() -> String {
    format!("{RELEASE}-community-chat")
}

/// The name of an object of one part of the release (`api`, `gateway`, `config`, `migrate`).
fn tier(name: &str) -> String {
    format!("{}-{name}", fullname())
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The Secret and key an env var of the container reads.
fn secret_ref<'a>(container: &'a Value, var: &str) -> Option<(&'a str, &'a str)> {
    let entry = container["env"].as_array()?.iter().find(|e| e["name"] == var)?;
    let r = &entry["valueFrom"]["secretKeyRef"];
    Some((r["name"].as_str()?, r["key"].as_str()?))
}

/// The cross-object references Kubernetes validation cannot see: selectors match pods, Services
/// and ServiceMonitors find their targets, and every referenced Secret is rendered or external.
fn check_references(objects: &[Value], external_secrets: &[&str]) {
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
fn env_value<'a>(container: &'a Value, var: &str) -> Option<&'a str> {
    let entry = container["env"].as_array()?.iter().find(|e| e["name"] == var)?;
    entry["value"].as_str()
}

/// The tier's Deployment runs `community-chat <tier>` hardened, probed and on port 8080.
fn check_tier_pod(deployment: &Value, tier_name: &str) {
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

#[test]
fn default_values_render_both_tiers_the_migration_hook_and_the_secret() {
    let objects = render_ok(&[]);
    let counts = kind_counts(&objects);
    for (kind, n) in [
        ("Deployment", 2),
        ("Service", 2),
        ("PodDisruptionBudget", 2),
        ("Job", 1),
        ("Secret", 2),
        ("ConfigMap", 1),
    ] {
        assert_eq!(counts.get(kind), Some(&n), "{kind} count in {counts:?}");
    }
    for kind in ["HorizontalPodAutoscaler", "ServiceMonitor", "Ingress"] {
        assert!(!counts.contains_key(kind), "{kind} is off by default: {counts:?}");
    }
    check_references(&objects, &[]);

    let api = find(&objects, "Deployment", &tier("api"));
    let gateway = find(&objects, "Deployment", &tier("gateway"));
    check_tier_pod(api, "api");
    check_tier_pod(gateway, "gateway");
    for var in ["DATABASE_URL", "REDIS_URL", "JWT_SECRET"] {
        let secret = secret_ref(container(gateway), var).map(|r| r.0.to_owned());
        assert_eq!(secret, Some(fullname()), "{var} from the chart's Secret");
    }

    // Each tier's grace period covers the preStop sleep and the process's own drain deadline.
    for deployment in [api, gateway] {
        let c = container(deployment);
        let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .expect("preStop sleep on 1.30");
        let drain = env_value(c, "SHUTDOWN_DRAIN_SECONDS")
            .and_then(|v| v.parse::<u64>().ok())
            .expect("drain");
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        assert!(
            grace > sleep + drain,
            "grace {grace}s covers preStop {sleep}s + drain {drain}s"
        );
    }
    let error = render(&["--set", "gateway.terminationGracePeriodSeconds=10"]).expect_err("too short a grace period");
    assert!(error.contains("terminationGracePeriodSeconds"), "{error}");

    let affinity = |name: &str| find(&objects, "Service", &tier(name))["spec"]["sessionAffinity"].clone();
    assert_eq!(affinity("gateway"), "ClientIP", "long-polling fallback affinity");
    assert_eq!(affinity("api"), "None");

    let job = find(&objects, "Job", &tier("migrate"));
    let hooks = job["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .expect("hook annotation");
    assert!(
        hooks.contains("pre-install") && hooks.contains("pre-upgrade"),
        "hooks: {hooks}"
    );
    assert_eq!(container(job)["args"], serde_json::json!(["migrate"]));
    // At pre-install only hooks exist: the Job's Secret is a hook created before it.
    let (secret, _) = secret_ref(container(job), "DATABASE_URL").expect("DATABASE_URL from a Secret");
    let hook_secret = find(&objects, "Secret", secret);
    let weight = |o: &Value| {
        let weight = o["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .expect("a hook weight");
        weight.parse::<i32>().expect("a numeric hook weight")
    };
    assert!(
        weight(hook_secret) < weight(job),
        "the hook Secret comes before the Job"
    );
}

#[test]
fn production_values_render_autoscaled_monitored_tiers_behind_one_tls_host() {
    let objects = render_ok(&["-f", "helm/community-chat/values-production.yaml"]);
    let counts = kind_counts(&objects);
    for (kind, n) in [
        ("Deployment", 2),
        ("Service", 2),
        ("HorizontalPodAutoscaler", 2),
        ("PodDisruptionBudget", 2),
        ("ServiceMonitor", 2),
        ("Ingress", 2),
        ("Job", 1),
    ] {
        assert_eq!(counts.get(kind), Some(&n), "{kind} count in {counts:?}");
    }
    assert!(!counts.contains_key("Secret"), "an existing Secret is used: {counts:?}");
    check_references(&objects, &["community-chat-credentials"]);

    for name in ["api", "gateway"] {
        let deployment = find(&objects, "Deployment", &tier(name));
        assert!(
            deployment["spec"].get("replicas").is_none(),
            "the HPA owns {name}'s replica count"
        );
        let hpa = find(&objects, "HorizontalPodAutoscaler", &tier(name));
        assert_eq!(hpa["spec"]["minReplicas"], 3);
        assert_eq!(
            secret_ref(container(deployment), "DATABASE_URL").map(|r| r.0),
            Some("community-chat-credentials")
        );
    }
    let job = find(&objects, "Job", &tier("migrate"));
    assert_eq!(
        secret_ref(container(job), "DATABASE_URL").map(|r| r.0),
        Some("community-chat-credentials")
    );

    let route = |name: &str| {
        let ingress = find(&objects, "Ingress", &tier(name));
        let rule = &ingress["spec"]["rules"][0];
        assert_eq!(rule["host"], "chat.example.com");
        assert_eq!(ingress["spec"]["tls"][0]["hosts"][0], "chat.example.com");
        let path = &rule["http"]["paths"][0];
        assert_eq!(path["backend"]["service"]["name"], tier(name));
        (path["path"].clone(), ingress["metadata"]["annotations"].clone())
    };
    let (api_path, api_annotations) = route("api");
    let (socket_path, gateway_annotations) = route("gateway");
    assert_eq!(api_path, "/client/community");
    assert_eq!(socket_path, "/socket.io");
    assert_eq!(gateway_annotations["nginx.ingress.kubernetes.io/affinity"], "cookie");
    assert!(
        api_annotations.get("nginx.ingress.kubernetes.io/affinity").is_none(),
        "the API stays unsticky"
    );
}

/// The values file of README's Deployment section, as written there.
fn readme_values() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = "cat > my-values.yaml <<'YAML'\n";
    let from = readme
        .find(start)
        .expect("README's Deployment section writes my-values.yaml")
        + start.len();
    let len = readme[from..].find("\nYAML\n").expect("the heredoc ends with YAML");
    readme[from..from + len].to_owned()
}

#[test]
fn the_readme_deployment_example_renders_what_it_says() {
    let values = std::env::temp_dir().join(format!("cc-readme-values-{}.yaml", std::process::id()));
    std::fs::write(&values, readme_values()).expect("write values");
    let rendered = render(&["-f", values.to_str().expect("utf-8 path")]);
    std::fs::remove_file(&values).ok();
    let objects = rendered.unwrap_or_else(|e| panic!("README's values do not render:\n{e}"));
    let counts = kind_counts(&objects);
    assert!(
        !counts.contains_key("Secret"),
        "the existing Secret is used: {counts:?}"
    );
    assert_eq!(counts.get("ServiceMonitor"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("Ingress"), Some(&2), "{counts:?}");
    check_references(&objects, &["community-chat-credentials"]);
    for name in ["api", "gateway"] {
        let deployment = find(&objects, "Deployment", &tier(name));
        assert_eq!(container(deployment)["image"], "REGISTRY/community-chat:TAG");
        let ingress = find(&objects, "Ingress", &tier(name));
        assert_eq!(ingress["spec"]["rules"][0]["host"], "chat.example.com");
    }
    let config = find(&objects, "ConfigMap", &tier("config"));
    assert_eq!(
        config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://otel-collector.observability:4318"
    );
    // The README scales the gateway Deployment by this name.
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    assert!(readme.contains(&format!("kubectl scale deployment {} ", tier("gateway"))));
}

#[test]
fn a_public_key_is_mounted_as_jwt_public_key_file_instead_of_a_secret() {
    let pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n";
    let set = format!("secret.jwtPublicKey={pem}");
    let objects = render_ok(&["--set", "config.jwt.algorithm=ES256", "--set-string", &set]);
    let config = &find(&objects, "ConfigMap", &tier("config"))["data"];
    assert_eq!(config["JWT_ALGORITHM"], "ES256");
    let path = config["JWT_PUBLIC_KEY_FILE"].as_str().expect("JWT_PUBLIC_KEY_FILE");
    let gateway = find(&objects, "Deployment", &tier("gateway"));
    assert!(
        secret_ref(container(gateway), "JWT_SECRET").is_none(),
        "no JWT_SECRET with a public key"
    );
    let mounted = container(gateway)["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("-")) && m["readOnly"] == true);
    assert!(mounted, "{path} is on a read-only mount");
}

#[test]
fn the_schema_rejects_wrong_types_and_unknown_keys() {
    let bad = std::env::temp_dir().join(format!("cc-bad-values-{}.yaml", std::process::id()));
    std::fs::write(&bad, "api:\n  replicas: three\n").expect("write bad values");
    let wrong_type = render(&["-f", bad.to_str().expect("utf-8 path")]);
    std::fs::remove_file(&bad).ok();
    let error = wrong_type.expect_err("replicas: three must not render");
    assert!(error.contains("replicas"), "the error names the field: {error}");

    let error = render(&["--set", "replicaz=3"]).expect_err("an unknown top-level key must not render");
    assert!(error.contains("replicaz"), "the error names the key: {error}");

    let error = render(&["--set", "gateway.service.sessionAffinity=Sticky"]).expect_err("an unknown enum value");
    assert!(error.contains("sessionAffinity"), "the error names the field: {error}");
}

#[test]
fn helm_lint_reports_nothing_above_info() {
    let chart = repo().join(CHART);
    let result = helper(&["lint", chart.to_str().expect("utf-8 path")], b"");
    assert_eq!(result["charts"], 1);
    let serious: Vec<_> = result["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    assert!(
        serious.is_empty(),
        "helm lint: {serious:?} (render the chart with helm-template to read the errors)"
    );
}

#[test]
fn every_values_field_is_documented() {
    for file in ["values.yaml", "values-production.yaml"] {
        let path = repo().join(CHART).join(file);
        let missing = helper(&["undocumented", path.to_str().expect("utf-8 path")], b"");
        assert_eq!(
            missing,
            serde_json::json!([]),
            "{file}: fields without a `# --` comment"
        );
    }
    let missing = helper(&["undocumented", "-"], b"a:\n  b: 1\n");
    assert_eq!(
        missing,
        serde_json::json!(["a.b"]),
        "the check itself finds a bare field"
    );
}
