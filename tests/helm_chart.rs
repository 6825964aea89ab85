//! The Helm chart (`helm/community-chat`): it renders with the default and the production values,
//! every object is valid for Kubernetes 1.30, the objects refer to each other correctly, `helm
//! lint` finds nothing above info, values.schema.json rejects wrong values, and every field of the
//! values files is documented.
//!
//! Rendering and validation use `helm-template` (Helm's library against a fake API server, then
//! kubernetes-validate), found at `../shared/tools/helm-template` beside the repository or at
//! `$HELM_TEMPLATE`. It sets up its Python venv on first use; `tests/helm/helper.py` runs in that
//! venv to turn YAML into JSON and to call helm_sdkpy's Lint action.

#[path = "helm/support.rs"]
mod support;

use serde_json::Value;
use support::*;

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
