//! A real control plane and real "pods" for end-to-end tests.
//!
//! etcd and kube-apiserver (built from Go modules by `scripts/e2e-binaries`, found through
//! `FALLTHROUGH_E2E_BIN`) run on free loopback ports with RBAC, an admin token and a
//! restricted token for the controller. Pods are real PHP and gunicorn processes inside
//! network namespaces with 10.x addresses, because the API server rejects loopback
//! endpoint addresses. Every process is tied to this test process by a watchdog, so
//! nothing outlives a crashed run.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token of the cluster admin (group system:masters).
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// Token of the controller: only what `RBAC` below grants.
pub const CONTROLLER_TOKEN: &str = "e2e-controller-token";
/// The controller identity's user name.
pub const CONTROLLER_USER: &str = "fallthrough-controller";
/// Namespace for the controller's Leases.
pub const SYSTEM_NAMESPACE: &str = "fallthrough-system";

/// What the controller needs, and no more.
pub const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: fallthrough-controller}
rules:
- apiGroups: [fallthrough.dev]
  resources: [fallbackroutes]
  verbs: [get, list, watch]
- apiGroups: [fallthrough.dev]
  resources: [fallbackroutes/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: fallthrough-controller}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: fallthrough-controller}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: fallthrough-controller}
---
apiVersion: v1
kind: Namespace
metadata: {name: fallthrough-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: fallthrough-leases, namespace: fallthrough-system}
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: fallthrough-leases, namespace: fallthrough-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: fallthrough-leases}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: fallthrough-controller}
"#;

/// Fails if a controller log shows the API server refusing it anything (RBAC too tight).
pub fn assert_no_forbidden(log: Vec<String>, who: &str) {
    let denied: Vec<String> = log
        .into_iter()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        denied.is_empty(),
        "{who} was refused something: {denied:#?}"
    );
}

/// Directory holding kube-apiserver, etcd and kubectl.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var("FALLTHROUGH_E2E_BIN").expect(
        "FALLTHROUGH_E2E_BIN is not set: run scripts/test, or scripts/e2e-binaries and export FALLTHROUGH_E2E_BIN=$(scripts/e2e-binaries --print-dir)",
    );
    PathBuf::from(dir)
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cleanup` (a shell command) once this test process has exited, however it exits.
pub fn on_exit(cleanup: &str) {
    let script = format!("tail --pid={} -f /dev/null; {cleanup}", std::process::id());
    // Deliberately not waited for: the watchdog outlives this process by design.
    #[allow(clippy::zombie_processes)]
    let _watchdog = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh starts");
}

/// `kubectl apply -f -` of `yaml` with `kubeconfig`; stdout, or stderr on failure. A free
/// function so a benchmark can time it on another thread.
pub fn kubectl_apply(kubeconfig: &Path, yaml: &str) -> Result<String, String> {
    let mut child = Command::new(bin_dir().join("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Spawns a process that dies with this test process.
pub fn spawn_tied(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    on_exit(&format!("kill -9 {} 2>/dev/null", child.id()));
    child
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` every 50 ms until it is true; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut probe: impl FnMut() -> bool) {
    let start = Instant::now();
    while !probe() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn sh(script: &str) -> Output {
    run(Command::new("sh").args(["-c", script]))
}

/// Second octet of this run's 10.x addresses: apart from concurrent runs.
fn subnet() -> u32 {
    100 + std::process::id() % 100
}

/// etcd + kube-apiserver.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_kubeconfig: PathBuf,
    pub controller_kubeconfig: PathBuf,
    apiserver_cmd: Vec<String>,
    apiserver: Mutex<Child>,
    _etcd: Child,
}

impl Cluster {
    pub fn start() -> Cluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("fallthrough-e2e")
            .tempdir()
            .unwrap();
        let d = dir.path();
        remove_stale_namespaces();

        let (client, peer) = (free_port(), free_port());
        eprintln!("e2e: starting etcd on 127.0.0.1:{client}");
        let etcd = spawn_tied(
            Command::new(bin.join("etcd")).args([
                "--name=e2e".to_string(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=e2e=http://127.0.0.1:{peer}"),
                "--log-level=warn".to_string(),
            ]),
            &d.join("etcd.log"),
        );

        // The API server advertises a non-loopback address; give it one of its own.
        let advertise = format!("10.{}.255.1", subnet());
        let dummy = format!("ftd{}", std::process::id() % 100000);
        sh(&format!(
            "ip link add {dummy} type dummy && ip addr add {advertise}/32 dev {dummy} && ip link set {dummy} up"
        ));
        on_exit(&format!("ip link del {dummy} 2>/dev/null"));

        let out = sh(&format!(
            "openssl genrsa -out {0}/sa.key 2048 2>/dev/null && openssl rsa -in {0}/sa.key -pubout -out {0}/sa.pub 2>/dev/null",
            d.display()
        ));
        assert!(out.status.success(), "openssl failed: {out:?}");
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},e2e-admin,1,\"system:masters\"\n{CONTROLLER_TOKEN},{CONTROLLER_USER},2\n"),
        )
        .unwrap();

        let port = free_port();
        let apiserver_cmd: Vec<String> = vec![
            bin.join("kube-apiserver").display().to_string(),
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--advertise-address={advertise}"),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--v=0".into(),
        ];
        let cluster = Cluster {
            port,
            admin_kubeconfig: d.join("admin.kubeconfig"),
            controller_kubeconfig: d.join("controller.kubeconfig"),
            apiserver: Mutex::new(start_apiserver(&apiserver_cmd, d)),
            apiserver_cmd,
            _etcd: etcd,
            dir,
        };
        cluster.write_kubeconfig(&cluster.admin_kubeconfig, ADMIN_TOKEN);
        cluster.write_kubeconfig(&cluster.controller_kubeconfig, CONTROLLER_TOKEN);
        cluster.wait_ready();
        let version = cluster.kubectl(&["version", "-o", "json"]);
        eprintln!(
            "e2e: kube-apiserver ready on 127.0.0.1:{port}: {}",
            String::from_utf8_lossy(&version.stdout)
                .lines()
                .find(|l| l.contains("gitVersion"))
                .unwrap_or("")
                .trim()
        );
        cluster.apply(RBAC);
        cluster
    }

    fn write_kubeconfig(&self, path: &Path, token: &str) {
        // The API server writes a self-signed CA and serving cert on first start.
        let ca = self.dir.path().join("certs/apiserver.crt");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: u}}\ncurrent-context: e2e\n",
            self.port,
            ca.display()
        );
        std::fs::write(path, config).unwrap();
    }

    fn wait_ready(&self) {
        wait_until("kube-apiserver /readyz", Duration::from_secs(120), || {
            self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    /// The `n`th extra address of this host (10.x.254.n, on `lo` until this test process
    /// exits), added on first use: something a process on the host can listen on and an
    /// EndpointSlice can name (the API server refuses loopback endpoint addresses), e.g.
    /// a controller replica's admin port.
    pub fn host_address(&self, n: u8) -> String {
        let ip = format!("10.{}.254.{n}", subnet());
        let present = sh(&format!("ip -o addr show dev lo | grep -qwF {ip}"));
        if !present.status.success() {
            let out = sh(&format!("ip addr add {ip}/32 dev lo"));
            assert!(out.status.success(), "adding {ip} failed: {out:?}");
            on_exit(&format!("ip addr del {ip}/32 dev lo 2>/dev/null"));
        }
        ip
    }

    /// `fallthrough run` arguments for a controller with the restricted identity,
    /// watching `ns`, competing for Lease `lease` as `identity`.
    pub fn controller_args(&self, ns: &str, lease: &str, identity: &str) -> Vec<String> {
        let kubeconfig = self.controller_kubeconfig.display().to_string();
        [
            "--kubeconfig",
            &kubeconfig,
            "--watch-namespace",
            ns,
            "--lease-namespace",
            SYSTEM_NAMESPACE,
            "--lease-name",
            lease,
            "--identity",
            identity,
        ]
        .map(String::from)
        .to_vec()
    }

    /// kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        run(Command::new(bin_dir().join("kubectl"))
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(args))
    }

    /// kubectl as the admin, which must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl apply -f -` of `yaml`; the result (stderr on failure).
    pub fn try_apply(&self, yaml: &str) -> Result<String, String> {
        kubectl_apply(&self.admin_kubeconfig, yaml)
    }

    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.try_apply(yaml) {
            panic!("kubectl apply failed: {e}\n{yaml}");
        }
    }

    /// Installs the checked-in CRD and waits until it is served.
    pub fn install_crd(&self) {
        let crd = repo().join("crds/fallbackroutes.fallthrough.dev.yaml");
        self.kubectl_ok(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/fallbackroutes.fallthrough.dev",
        ]);
    }

    /// Stops and starts kube-apiserver (etcd keeps the data), waiting until it is ready.
    pub fn restart_apiserver(&self) {
        let mut child = self.apiserver.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        *child = start_apiserver(&self.apiserver_cmd, self.dir.path());
        drop(child);
        self.wait_ready();
    }

    /// Stops kube-apiserver until [`Cluster::start_again`].
    pub fn stop_apiserver(&self) {
        let mut child = self.apiserver.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn start_again(&self) {
        *self.apiserver.lock().unwrap() = start_apiserver(&self.apiserver_cmd, self.dir.path());
        self.wait_ready();
    }
}

fn start_apiserver(cmd: &[String], dir: &Path) -> Child {
    static STARTS: AtomicU32 = AtomicU32::new(0);
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    eprintln!("e2e: starting kube-apiserver (start {n})");
    spawn_tied(
        Command::new(&cmd[0]).args(&cmd[1..]),
        &dir.join(format!("apiserver-{n}.log")),
    )
}

/// Deletes network namespaces left by earlier runs whose process is gone.
fn remove_stale_namespaces() {
    let list = sh("ip netns list");
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("ft-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            sh(&format!("ip netns del {name}"));
        }
    }
}

/// A process in its own network namespace, reachable at `ip` from the host.
pub struct Pod {
    pub ip: String,
    pub port: u16,
    netns: String,
    child: Option<Child>,
}

static PODS: AtomicU32 = AtomicU32::new(1);

impl Pod {
    fn start(port: u16, command: &[&str], ready_path: &str) -> Pod {
        Pod::start_ready(port, command, Some(ready_path))
    }

    /// Starts `command` in a new namespace; ready once `ready_path` answers over HTTP,
    /// or, with `None`, once the port accepts a connection.
    pub fn start_ready(port: u16, command: &[&str], ready_path: Option<&str>) -> Pod {
        let n = PODS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = format!("ft-{pid}-{n}");
        let host_if = format!("ftv{}x{n}", pid % 10000);
        let (host_ip, ip) = (
            format!("10.{}.{n}.1", subnet()),
            format!("10.{}.{n}.2", subnet()),
        );
        let out = sh(&format!(
            "set -e; ip netns add {netns}; ip link add {host_if} type veth peer name eth0 netns {netns}; \
             ip addr add {host_ip}/24 dev {host_if}; ip link set {host_if} up; \
             ip netns exec {netns} ip addr add {ip}/24 dev eth0; ip netns exec {netns} ip link set eth0 up; \
             ip netns exec {netns} ip link set lo up"
        ));
        assert!(
            out.status.success(),
            "creating netns {netns} failed: {out:?}"
        );
        on_exit(&format!("ip netns del {netns} 2>/dev/null"));
        let log = std::env::temp_dir().join(format!("{netns}.log"));
        let child = spawn_tied(
            Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(
                    command
                        .iter()
                        .map(|a| a.replace("{ip}", &ip).replace("{port}", &port.to_string())),
                )
                .current_dir(repo()),
            &log,
        );
        let pod = Pod {
            ip,
            port,
            netns,
            child: Some(child),
        };
        let probe = match ready_path {
            Some(path) => format!("curl -s -o /dev/null -m 2 http://{}:{port}{path}", pod.ip),
            None => format!("timeout 2 bash -c 'exec 3<>/dev/tcp/{}/{port}'", pod.ip),
        };
        wait_until(
            &format!("pod {} ({probe}, log {})", pod.netns, log.display()),
            Duration::from_secs(30),
            || sh(&probe).status.success(),
        );
        pod
    }

    /// The legacy PHP site (demo/legacy) under PHP-FPM on port 9000, two workers: a
    /// FastCGI backend, as a `php:8.2-fpm` pod would be.
    pub fn php_fpm() -> Pod {
        let n = PODS.load(Ordering::Relaxed);
        let conf = std::env::temp_dir().join(format!("ft-{}-fpm-{n}.conf", std::process::id()));
        let pid = conf.with_extension("pid");
        std::fs::write(
            &conf,
            format!(
                "[global]\nerror_log = /proc/self/fd/2\ndaemonize = no\npid = {}\n\
             [legacy]\nlisten = 0.0.0.0:9000\npm = static\npm.max_children = 2\n\
             catch_workers_output = yes\nsecurity.limit_extensions = .php\n",
                pid.display()
            ),
        )
        .unwrap();
        let conf = conf.display().to_string();
        Pod::start_ready(9000, &["php-fpm8.2", "-F", "-O", "-R", "-y", &conf], None)
    }

    /// The legacy PHP site (demo/legacy) under `php -S`.
    pub fn php() -> Pod {
        Pod::start(
            8080,
            &["php", "-S", "{ip}:{port}", "demo/legacy/router.php"],
            "/",
        )
    }

    /// The new Python app (demo/new) under gunicorn.
    pub fn python() -> Pod {
        Pod::start(
            8000,
            &[
                "gunicorn",
                "-b",
                "{ip}:{port}",
                "-w",
                "2",
                "--chdir",
                "demo/new",
                "app:app",
            ],
            "/api/products",
        )
    }

    /// Stops the process (the namespace goes when the test process exits).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        sh(&format!("ip netns pids {} | xargs -r kill -9", self.netns));
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop();
        sh(&format!("ip netns del {} 2>/dev/null", self.netns));
    }
}

/// A Service without selector and its hand-written EndpointSlice listing `ready` pods
/// (and `not_ready` ones with ready=false): what the endpoint controller would write.
pub fn service_yaml(
    ns: &str,
    name: &str,
    port_name: &str,
    target: u16,
    ready: &[&Pod],
    not_ready: &[&Pod],
) -> String {
    let endpoint = |p: &Pod, ready: bool| {
        format!(
            "- addresses: [\"{}\"]\n  conditions: {{ready: {ready}}}\n",
            p.ip
        )
    };
    let endpoints: String = ready
        .iter()
        .map(|p| endpoint(p, true))
        .chain(not_ready.iter().map(|p| endpoint(p, false)))
        .collect();
    let endpoints = if endpoints.is_empty() {
        "[]\n".to_string()
    } else {
        format!("\n{endpoints}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports:\n  - {{name: {port_name}, port: 80, targetPort: {target}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-e2e\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: e2e}}\n\
         addressType: IPv4\nports:\n- {{name: {port_name}, port: {target}, protocol: TCP}}\nendpoints: {endpoints}"
    )
}

/// A FallbackRoute joining Service `primary` and `fallback` (port 80 of each).
pub fn route_yaml(
    ns: &str,
    name: &str,
    hosts: &[&str],
    primary: &str,
    fallback: &str,
    extra: &str,
) -> String {
    let hosts = hosts
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: fallthrough.dev/v1alpha1\nkind: FallbackRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{hosts}]\n  primary: {{service: {{name: {primary}, port: 80}}}}\n  fallback: {{service: {{name: {fallback}, port: http}}}}\n{extra}"
    )
}
