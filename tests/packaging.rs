//! Packaging: the Helm chart (charts/fallthrough), the manifest rendered from it
//! (deploy/fallthrough.yaml), the example apps (deploy/example) and the Dockerfile stay true
//! to the binary they package.
//!
//! The plain tests read files and run the binary. The ignored ones need helm, etcd,
//! kube-apiserver and kubectl (`FALLTHROUGH_E2E_BIN`), php and gunicorn, and root for the
//! test pods' network namespaces: `scripts/test` runs them with
//! `cargo test --test packaging -- --ignored --test-threads=1`. The cluster tests share one
//! cluster, with the chart installed once as release "fallthrough" in namespace
//! "fallthrough", and run the controller outside it with the chart's ServiceAccount token.

#[path = "e2e/cluster.rs"]
mod cluster;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use cluster::*;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::{send, Fallthrough};

const CHART: &str = "charts/fallthrough";
const DEPLOY: &str = "deploy/fallthrough.yaml";
/// The command deploy/fallthrough.yaml is generated with (after its header comment).
const RENDER: [&str; 6] = [
    "template",
    "fallthrough",
    CHART,
    "--namespace",
    "fallthrough",
    "--include-crds",
];
/// How to bring deploy/fallthrough.yaml up to date, for failure messages.
const REGENERATE: &str = "(sed '/^---$/,$d' deploy/fallthrough.yaml; helm template fallthrough charts/fallthrough --namespace fallthrough --include-crds) > /tmp/fallthrough.yaml && mv /tmp/fallthrough.yaml deploy/fallthrough.yaml";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Every non-empty document of a multi-document YAML stream.
fn documents(yaml: &str) -> Vec<Value> {
    // Empty documents are skipped by the parser.
    serde_saphyr::from_multiple(yaml).expect("valid YAML")
}

/// The one document of `kind` named `name`.
fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let present: Vec<String> = docs
                .iter()
                .map(|d| format!("{:?}/{:?}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} among {present:?}")
        })
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(String::from))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// An RBAC role's rules as (apiGroup, resource, verb) triples.
type Grants = BTreeSet<(String, String, String)>;

/// An RBAC role's rules as [`Grants`].
fn grants(role: &Value) -> Grants {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

/// The name of the binary `cargo build --release` writes to target/release/.
fn cargo_bin_name() -> String {
    let manifest = read("Cargo.toml");
    let bin = manifest
        .split("[[bin]]")
        .nth(1)
        .expect("Cargo.toml has a [[bin]] section");
    bin.lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').to_string())
        })
        .expect("the [[bin]] section has a name")
}

/// `key = "value"` from the [package] section of Cargo.toml.
fn cargo_package(key: &str) -> String {
    read("Cargo.toml")
        .lines()
        .take_while(|l| !l.starts_with("[[bin]]") && !l.starts_with("[dependencies]"))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("Cargo.toml [package] has no {key}"))
}

fn version(v: &str) -> Vec<u64> {
    v.split('.').map(|n| n.parse().unwrap()).collect()
}

#[test]
fn chart_crd_is_a_byte_identical_copy_of_crds() {
    let original = std::fs::read(repo().join("crds/fallbackroutes.fallthrough.dev.yaml")).unwrap();
    let copy =
        std::fs::read(repo().join("charts/fallthrough/crds/fallbackroutes.fallthrough.dev.yaml"))
            .unwrap();
    assert!(
        original == copy,
        "charts/fallthrough/crds/ differs from crds/: run `cp crds/fallbackroutes.fallthrough.dev.yaml charts/fallthrough/crds/`"
    );
}

#[test]
fn dockerfile_ships_the_binary_cargo_builds() {
    let bin = cargo_bin_name();
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let arg = |prefix: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .collect()
    };

    let from = arg("FROM ");
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    let (build_image, stage) = from[0].split_once(" AS ").expect("FROM image AS stage");
    let rust = build_image
        .strip_prefix("rust:")
        .and_then(|t| t.split('-').next())
        .unwrap_or_else(|| panic!("the build stage is an official rust image: {build_image}"));
    assert!(
        version(rust) >= version(&cargo_package("rust-version")),
        "{build_image} is older than Cargo.toml's rust-version"
    );
    assert!(
        build_image.ends_with("-bookworm") && from[1].starts_with("gcr.io/distroless/cc-debian12"),
        "build and runtime must share glibc (Debian 12): {from:?}"
    );

    let workdir = arg("WORKDIR ");
    let workdir = workdir.first().expect("the build stage has a WORKDIR");
    assert!(
        dockerfile.contains(&format!("cargo build --release --locked --bin {bin}")),
        "the Dockerfile must build --bin {bin}"
    );
    let copy = arg("COPY --from=");
    let [copy] = copy.as_slice() else {
        panic!("one COPY --from the build stage: {copy:?}")
    };
    let parts: Vec<&str> = copy.split_whitespace().collect();
    let built = format!("{workdir}/target/release/{bin}");
    assert_eq!(
        parts,
        [stage, built.as_str(), &format!("/usr/local/bin/{bin}")],
        "the runtime stage copies what `cargo build --release` wrote"
    );

    let entrypoint: Vec<String> =
        serde_json::from_str(arg("ENTRYPOINT ").first().expect("an ENTRYPOINT")).unwrap();
    assert_eq!(entrypoint, [format!("/usr/local/bin/{bin}")]);
    let cmd: Vec<String> = serde_json::from_str(arg("CMD ").first().expect("a CMD")).unwrap();
    assert_eq!(cmd, ["run"]);
    assert_eq!(arg("USER "), ["65532:65532"]);
    assert_eq!(arg("EXPOSE "), ["8080 8443 9090"]);

    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .collect();
    for path in ["target", ".git"] {
        assert!(
            ignored.iter().any(|l| l == path),
            ".dockerignore leaves out {path}"
        );
    }
    for needed in ["src", "Cargo.toml", "Cargo.lock"] {
        assert!(
            !ignored.iter().any(|l| l == needed),
            ".dockerignore must not leave out {needed}"
        );
    }
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let chart: Value = serde_saphyr::from_str(&read("charts/fallthrough/Chart.yaml")).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "fallthrough");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(cargo_package("version").as_str()),
        "Chart.yaml appVersion (the default image tag) must be the crate version"
    );
    let values: Value = serde_saphyr::from_str(&read("charts/fallthrough/values.yaml")).unwrap();
    assert_eq!(
        values["image"]["tag"], "",
        "the image tag defaults to appVersion"
    );
    let docs = documents(&read(DEPLOY));
    let deployment = object(&docs, "Deployment", "fallthrough");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str(),
        Some(
            format!(
                "ghcr.io/fallthrough-dev/fallthrough:{}",
                cargo_package("version")
            )
            .as_str()
        )
    );
}

/// The ClusterRole and the Lease Role of tests/e2e/cluster.rs, which the real-cluster
/// suite proves sufficient.
fn proven_grants() -> (Grants, Grants) {
    let docs = documents(RBAC);
    (
        grants(object(&docs, "ClusterRole", "fallthrough-controller")),
        grants(object(&docs, "Role", "fallthrough-leases")),
    )
}

#[test]
fn deployed_rbac_is_exactly_what_the_real_cluster_suite_proves_sufficient() {
    let docs = documents(&read(DEPLOY));
    let (cluster_wide, leases) = proven_grants();
    assert_eq!(
        grants(object(&docs, "ClusterRole", "fallthrough")),
        cluster_wide
    );
    let role = object(&docs, "Role", "fallthrough-leases");
    assert_eq!(role["metadata"]["namespace"], "fallthrough");
    assert_eq!(grants(role), leases);
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let name = if kind == "RoleBinding" {
            "fallthrough-leases"
        } else {
            "fallthrough"
        };
        let binding = object(&docs, kind, name);
        assert_eq!(binding["roleRef"]["name"], name);
        assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(binding["subjects"][0]["name"], "fallthrough");
        assert_eq!(binding["subjects"][0]["namespace"], "fallthrough");
    }
    let roles = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .count();
    assert_eq!(roles, 2, "no other roles");
}

/// The fallthrough container of the rendered Deployment.
fn container(docs: &[Value]) -> &Value {
    &object(docs, "Deployment", "fallthrough")["spec"]["template"]["spec"]["containers"][0]
}

#[tokio::test]
async fn deployed_args_start_the_binary_and_its_probes_answer() {
    let docs = documents(&read(DEPLOY));
    let container = container(&docs);
    let args = strings(&container["args"]);
    assert_eq!(args.first().map(String::as_str), Some("run"));

    let help = Command::new(env!("CARGO_BIN_EXE_fallthrough"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "the Deployment passes {flag}, which `fallthrough run` does not know"
        );
    }
    for env in container["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        assert!(
            name == "RUST_LOG" || help.contains(&format!("[env: {name}=")),
            "the Deployment sets {name}, which `fallthrough run` does not read"
        );
    }

    // The rendered flags, on loopback and with a routes file instead of a cluster.
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        support::route("probe", "http://127.0.0.1:9", "http://127.0.0.1:9", ""),
    )
    .unwrap();
    let mut flags: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--http-addr=") && !a.starts_with("--admin-addr="))
        .collect();
    flags.extend(["--routes", routes.to_str().unwrap()]);
    let ft = Fallthrough::spawn(dir, routes.clone(), &flags).await;

    let admin_port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "admin")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("an admin port");
    assert!(args.contains(&format!("--admin-addr=0.0.0.0:{admin_port}")));
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["port"], "admin", "{probe} asks the admin port");
        let path = get["path"].as_str().unwrap();
        let (status, _, body) = support::get(ft.admin, path).await;
        assert_eq!(
            status,
            200,
            "{probe} {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// Metric names src/metrics.rs registers.
fn exported_metrics() -> BTreeSet<String> {
    read("src/metrics.rs")
        .split('"')
        .filter(|s| {
            s.starts_with("fallthrough_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(String::from)
        .collect()
}

/// Asserts every `fallthrough_*` series in `expr` is an exported metric (histograms with
/// their _bucket, _sum and _count series).
fn assert_known_metrics(expr: &str, exported: &BTreeSet<String>, where_: &str) {
    let names = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("fallthrough_"));
    for name in names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| b.ends_with("_seconds"))
            .unwrap_or(name);
        assert!(
            exported.contains(base),
            "{where_} uses {name}, which fallthrough does not export ({exported:?})"
        );
    }
}

#[test]
fn dashboard_queries_use_exported_metrics_and_its_variables() {
    let exported = exported_metrics();
    assert!(
        exported.contains("fallthrough_requests_total"),
        "{exported:?}"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("charts/fallthrough/dashboards/fallthrough.json")).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "route"]);

    let panels = dashboard["panels"].as_array().unwrap();
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} uses the datasource variable"
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert_known_metrics(expr, &exported, &format!("panel {title:?}"));
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
    let all = serde_json::to_string(panels).unwrap();
    for used in [
        "fallthrough_requests_total",
        "fallthrough_fallbacks_total",
        "fallthrough_fallbacks_skipped_total",
        "fallthrough_upstream_duration_seconds_bucket",
        "fallthrough_request_duration_seconds_bucket",
        "fallthrough_config_last_reload_successful",
        "fallthrough_config_reloads_total",
        "fallthrough_routes",
        "fallthrough_routes_rejected",
        "$namespace",
        "$route",
    ] {
        assert!(all.contains(used), "the dashboard shows {used}");
    }
}

// ---- Needs helm (and for the cluster tests, root and the cluster binaries) ----

fn helm(args: &[&str]) -> Output {
    Command::new(bin_dir().join("helm"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm from {}: {e}", bin_dir().display()))
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What a failing helm command printed.
fn helm_err(args: &[&str]) -> String {
    let out = helm(args);
    assert!(!out.status.success(), "helm {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A values file in a temp dir.
fn values_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

/// Every optional feature on.
const EVERYTHING: &str = "
autoscaling: {enabled: true, minReplicas: 3, targetMemoryUtilizationPercentage: 90}
metrics:
  serviceMonitor: {enabled: true, additionalLabels: {release: kube-prometheus-stack}}
  prometheusRule: {enabled: true, additionalLabels: {release: kube-prometheus-stack}}
dashboard: {enabled: true}
networkPolicy: {enabled: true}
controller: {watchNamespace: shop, allowUrlBackends: true, logFormat: json, accessLog: json,
  trustedProxies: [10.0.0.0/8, 192.168.1.7]}
service:
  type: NodePort
  externalTrafficPolicy: Local
  nodePorts: {http: 30080}
  annotations: {example.com/kept: \"yes\"}
  proxyProtocol: {enabled: true, loadBalancer: aws}
";

#[test]
#[ignore = "needs helm, one of the Go-built cluster binaries: run scripts/test"]
fn helm_template_of_the_defaults_is_deploy_fallthrough_yaml() {
    let rendered = helm_ok(&RENDER);
    let checked_in = read(DEPLOY);
    let body_start = checked_in
        .find("\n---\n")
        .expect("deploy/fallthrough.yaml: a header comment, then the rendered chart");
    let (header, body) = checked_in.split_at(body_start + 1);
    assert!(
        header.lines().all(|l| l.starts_with('#')),
        "the header is comment lines only"
    );
    assert!(
        header.contains(&RENDER.join(" ")),
        "the header names the command"
    );
    assert!(
        body == rendered,
        "deploy/fallthrough.yaml is out of date; regenerate it with:\n  {REGENERATE}"
    );
}

#[test]
#[ignore = "needs helm, one of the Go-built cluster binaries: run scripts/test"]
fn helm_lint_passes_with_defaults_and_everything_on() {
    helm_ok(&["lint", "--strict", CHART]);
    let (_dir, everything) = values_file(EVERYTHING);
    let everything = everything.to_str().unwrap();
    helm_ok(&["lint", "--strict", CHART, "-f", everything]);

    let docs = documents(&helm_ok(&[
        "template",
        "fallthrough",
        CHART,
        "-n",
        "fallthrough",
        "-f",
        everything,
    ]));
    let present = kinds(&docs);
    for kind in [
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "PodDisruptionBudget",
        "IngressClass",
        "NetworkPolicy",
    ] {
        assert!(present.contains(kind), "{kind} rendered: {present:?}");
    }
    assert!(
        object(&docs, "Deployment", "fallthrough")["spec"]["replicas"].is_null(),
        "with an HPA the Deployment leaves replicas to it"
    );
    assert!(
        !present.contains("ClusterRole") && !present.contains("ClusterRoleBinding"),
        "watchNamespace grants nothing cluster-wide: {present:?}"
    );
    let scoped = object(&docs, "Role", "fallthrough");
    assert_eq!(scoped["metadata"]["namespace"], "shop");
    assert_eq!(grants(scoped), proven_grants().0);
    let args = strings(&container(&docs)["args"]);
    for arg in [
        "--watch-namespace=shop",
        "--allow-url-backends",
        "--log-format=json",
        "--access-log=json",
        "--trusted-proxies=10.0.0.0/8,192.168.1.7",
        "--proxy-protocol",
    ] {
        assert!(args.iter().any(|a| a == arg), "{arg} in {args:?}");
    }
    let service = object(&docs, "Service", "fallthrough");
    assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(
        annotations["service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"],
        "*"
    );
    assert_eq!(
        annotations["example.com/kept"], "yes",
        "merged with the user's"
    );
    let (_dir, untrusted) = values_file("service: {proxyProtocol: {enabled: true}}");
    let refused = helm_err(&[
        "template",
        "fallthrough",
        CHART,
        "-f",
        untrusted.to_str().unwrap(),
    ]);
    assert!(
        refused.contains("needs controller.trustedProxies"),
        "{refused}"
    );
    let dashboard = object(&docs, "ConfigMap", "fallthrough-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = dashboard["data"]["fallthrough.json"].as_str().unwrap();
    assert_eq!(
        json.trim_end(),
        read("charts/fallthrough/dashboards/fallthrough.json").trim_end()
    );
    let monitor = object(&docs, "ServiceMonitor", "fallthrough");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
}

#[test]
#[ignore = "needs helm, one of the Go-built cluster binaries: run scripts/test"]
fn bad_values_fail_because_of_the_schema() {
    let cases = [
        ("replicaCount: \"two\"\n", "/replicaCount"),
        ("replicaCount: 0\n", "/replicaCount"),
        ("service: {type: Ingress}\n", "/service/type"),
        ("controller: {logFormat: yaml}\n", "/controller/logFormat"),
        (
            "controller: {shutdownGrace: 10}\n",
            "/controller/shutdownGrace",
        ),
        ("ports: {http: 70000}\n", "/ports/http"),
        ("replicaCont: 3\n", "replicaCont"),
    ];
    for (values, complaint) in cases {
        let (_dir, file) = values_file(values);
        let file = file.to_str().unwrap();
        for command in ["lint", "template"] {
            let args: Vec<&str> = match command {
                "lint" => vec!["lint", CHART, "-f", file],
                _ => vec!["template", "x", CHART, "-f", file],
            };
            let out = helm(&args);
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !out.status.success(),
                "helm {command} accepted {values:?}:\n{said}"
            );
            assert!(
                said.contains("schema") && said.contains(complaint),
                "helm {command} refused {values:?} but not by the schema at {complaint}:\n{said}"
            );
        }
    }
    // What a schema cannot see, the templates refuse.
    let (_dir, file) = values_file("controller: {shutdownGrace: 60s}\n");
    let out = helm(&["template", "x", CHART, "-f", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("killed mid-drain"),
        "{said}"
    );
}

#[test]
#[ignore = "needs helm, one of the Go-built cluster binaries: run scripts/test"]
fn prometheus_rules_use_exported_metrics() {
    let docs = documents(&helm_ok(&[
        "template",
        "fallthrough",
        CHART,
        "--set",
        "metrics.prometheusRule.enabled=true",
    ]));
    let rule = object(&docs, "PrometheusRule", "fallthrough");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let exported = exported_metrics();
    let mut records = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for r in rules {
        let expr = r["expr"].as_str().unwrap();
        assert_known_metrics(expr, &exported, "the PrometheusRule");
        if let Some(name) = r["record"].as_str() {
            records.insert(name.to_string());
        }
        if let Some(name) = r["alert"].as_str() {
            alerts.insert(name.to_string());
        }
    }
    for record in [
        "namespace_route:fallthrough_fallback_share:ratio_rate5m",
        "fallthrough:fallback_share:ratio_rate5m",
    ] {
        assert!(records.contains(record), "{records:?}");
    }
    assert_eq!(
        alerts,
        BTreeSet::from([
            "FallthroughConfigReloadFailed".to_string(),
            "FallthroughSelfErrorsHigh".to_string()
        ])
    );
}

// ---- The chart in a real cluster ----

/// The shared cluster, with the chart installed with its defaults.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let c = Cluster::start();
        let kubeconfig = c.admin_kubeconfig.to_str().unwrap().to_string();
        helm_ok(&[
            "install",
            "fallthrough",
            CHART,
            "--namespace",
            "fallthrough",
            "--create-namespace",
            "--kubeconfig",
            &kubeconfig,
        ]);
        c
    })
}

/// A kubeconfig for ServiceAccount `sa` of `ns`, with a fresh token.
fn service_account_kubeconfig(c: &Cluster, ns: &str, sa: &str) -> PathBuf {
    let token = c.kubectl_ok(&["create", "token", sa, "-n", ns, "--duration=1h"]);
    let path = c.dir.path().join(format!("{ns}-{sa}.kubeconfig"));
    let ca = c.dir.path().join("certs/apiserver.crt");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {sa}}}\ncurrent-context: e2e\n",
        c.port,
        ca.display(),
        token.trim()
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// The controller, outside the cluster, with the token of the chart's ServiceAccount.
async fn controller_as(kubeconfig: &Path, lease_namespace: &str, extra: &[&str]) -> Fallthrough {
    let mut args = vec![
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--lease-namespace",
        lease_namespace,
        "--identity",
        "chart-test",
        "--shutdown-grace",
        "1s",
    ];
    args.extend_from_slice(extra);
    let ft = Fallthrough::spawn(tempfile::tempdir().unwrap(), Default::default(), &args).await;
    let admin = ft.admin;
    support::wait_for_async("controller /readyz", || async move {
        support::get(admin, "/readyz").await.0 == 200
    })
    .await;
    ft
}

fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Waits until `host`+`path` is answered `status` by `who`.
async fn eventually_served(ft: &Fallthrough, host: &str, path: &str, status: u16, who: &str) {
    let start = std::time::Instant::now();
    loop {
        let req = Request::get(path)
            .header("host", host)
            .body(Full::<Bytes>::default())
            .unwrap();
        let (s, headers, _) = send(ft.http, req).await;
        if s == status && served_by(&headers) == who {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{host}{path}: still {s} from {:?}, wanted {status} from {who:?}; log:\n{}",
            served_by(&headers),
            ft.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until condition `type_` of the route is `status`.
fn wait_condition(c: &Cluster, ns: &str, route: &str, type_: &str, status: &str) {
    let path = format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}");
    wait_until(
        &format!("{ns}/{route} {type_}={status}"),
        Duration::from_secs(30),
        || c.kubectl_ok(&["get", "fallbackroute", "-n", ns, route, "-o", &path]) == status,
    );
}

fn no_forbidden(ft: &Fallthrough) {
    cluster::assert_no_forbidden(ft.log(), "the chart's RBAC: the controller");
}

/// Checks that the controller serves the route of [`create_namespace_with_apps`] from
/// both pods, writes its status, and records a Warning Event for a broken route: every
/// write the controller makes went through.
async fn serves_a_route(c: &Cluster, ft: &Fallthrough, ns: &str, host: &str) {
    eventually_served(ft, host, "/about.php", 200, "legacy-php").await;
    eventually_served(ft, host, "/products/3", 200, "new-python").await;
    wait_condition(c, ns, "shop", "Programmed", "True");
    wait_condition(c, ns, "shop", "Accepted", "True");

    let dangling = format!("dangling.{host}");
    c.apply(&route_yaml(
        ns,
        "dangling",
        &[&dangling],
        "missing",
        "new",
        "",
    ));
    wait_condition(c, ns, "dangling", "ResolvedRefs", "False");
    wait_until(
        "a BackendNotFound Event on the dangling route",
        Duration::from_secs(30),
        || {
            c.kubectl_ok(&[
                "get",
                "events.events.k8s.io",
                "-n",
                ns,
                "--field-selector",
                "regarding.name=dangling",
                "-o",
                "jsonpath={.items[*].reason}",
            ])
            .contains("BackendNotFound")
        },
    );
}

fn create_namespace_with_apps(c: &Cluster, ns: &str, host: &str) -> (Pod, Pod) {
    c.kubectl_ok(&["create", "namespace", ns]);
    let (php, py) = (Pod::php(), Pod::python());
    c.apply(&service_yaml(ns, "legacy", "web", 8080, &[&php], &[]));
    c.apply(&service_yaml(ns, "new", "http", 8000, &[&py], &[]));
    c.apply(&route_yaml(ns, "shop", &[host], "legacy", "new", ""));
    (php, py)
}

#[test]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
fn helm_install_is_accepted_by_a_real_api_server() {
    let c = cluster();
    let status = helm_ok(&[
        "status",
        "fallthrough",
        "-n",
        "fallthrough",
        "--kubeconfig",
        c.admin_kubeconfig.to_str().unwrap(),
    ]);
    assert!(status.contains("STATUS: deployed"), "{status}");
    let notes = helm_ok(&[
        "get",
        "notes",
        "fallthrough",
        "-n",
        "fallthrough",
        "--kubeconfig",
        c.admin_kubeconfig.to_str().unwrap(),
    ]);
    for told in [
        "kind: FallbackRoute",
        "kubectl get fallbackroutes -A",
        "port-forward service/fallthrough-metrics 9090:9090",
        r#"sum by (namespace, route) (rate(fallthrough_requests_total{backend="fallback"}[5m]))"#,
        "TLS is not implemented yet",
    ] {
        assert!(notes.contains(told), "NOTES.txt tells {told:?}:\n{notes}");
    }
    for object in [
        "crd/fallbackroutes.fallthrough.dev",
        "ingressclass/fallthrough",
        "clusterrole/fallthrough",
        "clusterrolebinding/fallthrough",
    ] {
        c.kubectl_ok(&["get", object]);
    }
    for object in [
        "deployment/fallthrough",
        "service/fallthrough",
        "service/fallthrough-metrics",
        "serviceaccount/fallthrough",
        "poddisruptionbudget/fallthrough",
        "role/fallthrough-leases",
        "rolebinding/fallthrough-leases",
    ] {
        c.kubectl_ok(&["get", "-n", "fallthrough", object]);
    }
    // Fields a too-old API server would silently drop survived the round trip.
    let kept = c.kubectl_ok(&[
        "get",
        "-n",
        "fallthrough",
        "deployment/fallthrough",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].lifecycle.preStop.sleep.seconds} {.spec.template.spec.topologySpreadConstraints[0].matchLabelKeys[0]}",
    ]);
    assert_eq!(kept, "5 pod-template-hash");
    let service = c.kubectl_ok(&[
        "get",
        "-n",
        "fallthrough",
        "service/fallthrough",
        "-o",
        "jsonpath={.spec.type} {.spec.ports[*].port}",
    ]);
    assert_eq!(service, "LoadBalancer 80 443");

    // The example applies cleanly too: apps, Services and a FallbackRoute the CRD accepts.
    let example = repo().join("deploy/example");
    let applied = c.kubectl_ok(&["apply", "-f", example.to_str().unwrap()]);
    assert!(
        applied.contains("fallbackroute.fallthrough.dev/shop created"),
        "{applied}"
    );

    // Every optional object is accepted too (the Prometheus Operator's kinds aside: this
    // cluster has no such CRDs), rendered as another release watching namespace shop.
    let (_dir, everything) = values_file(EVERYTHING);
    let rendered = helm_ok(&[
        "template",
        "everything",
        CHART,
        "--namespace",
        "shop",
        "--set",
        "ingressClass.name=everything",
        "-f",
        everything.to_str().unwrap(),
    ]);
    let accepted: Vec<String> = documents(&rendered)
        .iter()
        .filter(|d| {
            !d["apiVersion"]
                .as_str()
                .unwrap_or_default()
                .starts_with("monitoring.coreos.com/")
        })
        .map(|d| serde_saphyr::to_string(d).unwrap())
        .collect();
    let applied = c
        .try_apply(&accepted.join("---\n"))
        .unwrap_or_else(|e| panic!("the API server refused optional objects: {e}"));
    for created in [
        "horizontalpodautoscaler.autoscaling/everything-fallthrough created",
        "role.rbac.authorization.k8s.io/everything-fallthrough created",
        "configmap/everything-fallthrough-dashboard created",
    ] {
        assert!(applied.contains(created), "{created} in:\n{applied}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn controller_runs_with_the_charts_service_account() {
    let c = cluster();
    let ns = "chart-shop";
    let _pods = create_namespace_with_apps(c, ns, "shop.chart.test");
    let kubeconfig = service_account_kubeconfig(c, "fallthrough", "fallthrough");
    let ft = controller_as(&kubeconfig, "fallthrough", &[]).await;

    serves_a_route(c, &ft, ns, "shop.chart.test").await;
    let holder = c.kubectl_ok(&[
        "get",
        "lease",
        "-n",
        "fallthrough",
        "fallthrough-status",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "chart-test", "the Lease in the release namespace");
    no_forbidden(&ft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the Go-built cluster binaries: run scripts/test"]
async fn with_watch_namespace_a_role_in_that_namespace_is_enough() {
    let c = cluster();
    let (ns, release_ns) = ("chart-scoped", "fallthrough-scoped");
    let _pods = create_namespace_with_apps(c, ns, "scoped.chart.test");
    helm_ok(&[
        "install",
        "scoped",
        CHART,
        "--namespace",
        release_ns,
        "--create-namespace",
        "--skip-crds",
        "--set",
        &format!("controller.watchNamespace={ns}"),
        "--set",
        "ingressClass.create=false",
        "--kubeconfig",
        c.admin_kubeconfig.to_str().unwrap(),
    ]);
    let sa = "scoped-fallthrough";
    let who = format!("--as=system:serviceaccount:{release_ns}:{sa}");
    let can = |args: &[&str]| {
        let mut all = vec!["auth", "can-i", who.as_str()];
        all.extend_from_slice(args);
        String::from_utf8(c.kubectl(&all).stdout)
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(can(&["watch", "fallbackroutes", "-n", ns]), "yes");
    assert_eq!(can(&["watch", "services", "-n", "default"]), "no");
    assert_eq!(can(&["list", "services", "--all-namespaces"]), "no");
    assert_eq!(
        can(&["get", "secrets", "-n", ns]),
        "yes",
        "TLS certificates"
    );
    assert_eq!(can(&["get", "secrets", "-n", "default"]), "no");
    assert_eq!(can(&["create", "secrets", "-n", ns]), "no");
    assert_eq!(
        can(&["list", "endpointslices", "-n", release_ns]),
        "yes",
        "the peers, through the metrics Service's EndpointSlices"
    );

    let kubeconfig = service_account_kubeconfig(c, release_ns, sa);
    let ft = controller_as(&kubeconfig, release_ns, &["--watch-namespace", ns]).await;
    serves_a_route(c, &ft, ns, "scoped.chart.test").await;
    no_forbidden(&ft);
}

// ---- The example apps of deploy/example, run locally ----

/// `data` of the ConfigMap in a deploy/example file.
fn config_map_data(file: &str) -> Vec<(String, String)> {
    let docs = documents(&read(file));
    let map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap_or_else(|| panic!("{file} has a ConfigMap"));
    map["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
        .collect()
}

fn write_all(dir: &Path, files: &[(String, String)]) {
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

/// A local app process, stopped when the test ends.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Share of the route's responses that came from the fallback, from /metrics.
async fn fallback_share(ft: &Fallthrough) -> f64 {
    let samples = ft.samples("fallthrough_requests_total").await;
    let (mut fallback, mut total) = (0.0, 0.0);
    for (key, value) in samples {
        if key.contains("route=\"shop\"") {
            total += value;
            if key.contains("backend=\"fallback\"") {
                fallback += value;
            }
        }
    }
    fallback / total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs php and gunicorn (scripts/test installs them)"]
async fn example_apps_serve_behind_fallthrough_and_the_share_climbs() {
    let work = tempfile::tempdir().unwrap();
    let (php_dir, py_dir) = (work.path().join("php"), work.path().join("python"));
    std::fs::create_dir_all(&php_dir).unwrap();
    std::fs::create_dir_all(&py_dir).unwrap();
    write_all(
        &php_dir,
        &config_map_data("deploy/example/10-legacy-php.yaml"),
    );
    write_all(
        &py_dir,
        &config_map_data("deploy/example/20-new-python.yaml"),
    );

    let (php_port, py_port) = (free_port(), free_port());
    let _php = App(spawn_tied(
        Command::new("php").args([
            "-S",
            &format!("127.0.0.1:{php_port}"),
            php_dir.join("router.php").to_str().unwrap(),
        ]),
        &work.path().join("php.log"),
    ));
    let _py = App(spawn_tied(
        Command::new("gunicorn").args([
            "-b",
            &format!("127.0.0.1:{py_port}"),
            "-w",
            "1",
            "--chdir",
            py_dir.to_str().unwrap(),
            "app:app",
        ]),
        &work.path().join("gunicorn.log"),
    ));

    // The example's route, with URLs standing in for its Services.
    let mut route: Value = serde_saphyr::from_str(&read("deploy/example/30-route.yaml")).unwrap();
    let host = route["spec"]["hosts"][0].as_str().unwrap().to_string();
    route["spec"]["primary"] =
        serde_saphyr::from_str(&format!("{{url: \"http://127.0.0.1:{php_port}\"}}")).unwrap();
    route["spec"]["fallback"] =
        serde_saphyr::from_str(&format!("{{url: \"http://127.0.0.1:{py_port}\"}}")).unwrap();
    let routes = serde_saphyr::to_string(&route).unwrap();
    let ft = Fallthrough::start_with(&routes, &["--ingress-class", "fallthrough"]).await;

    eventually_served(&ft, &host, "/healthz", 200, "new-python").await;
    eventually_served(&ft, &host, "/about.php", 200, "legacy-php").await;
    let visit = || async {
        let mut who = Vec::new();
        for path in [
            "/",
            "/about.php",
            "/contact.php",
            "/news.php",
            "/products",
            "/products/3",
        ] {
            let req = Request::get(path)
                .header("host", host.as_str())
                .body(Full::<Bytes>::default())
                .unwrap();
            let (status, headers, _) = send(ft.http, req).await;
            assert_eq!(status, 200, "{path}");
            who.push(served_by(&headers));
        }
        who
    };
    assert_eq!(
        visit().await,
        [
            "legacy-php",
            "legacy-php",
            "legacy-php",
            "legacy-php",
            "new-python",
            "new-python"
        ]
    );
    let req = Request::get("/nothing-here")
        .header("host", host.as_str())
        .body(Full::<Bytes>::default())
        .unwrap();
    let (status, headers, _) = send(ft.http, req).await;
    assert_eq!(
        (status.as_u16(), served_by(&headers).as_str()),
        (404, "new-python")
    );
    let before = fallback_share(&ft).await;

    // Move two pages: PHP drops them from still-here.txt, the Python app takes over.
    std::fs::write(php_dir.join("still-here.txt"), "/\n/contact.php\n").unwrap();
    assert_eq!(
        visit().await,
        [
            "legacy-php",
            "new-python",
            "legacy-php",
            "new-python",
            "new-python",
            "new-python"
        ]
    );
    let after = fallback_share(&ft).await;
    assert!(
        after > before,
        "the new app's share climbs: {before:.2} -> {after:.2}"
    );
}
