//! Real PHP-FPM and a real gunicorn/Flask app as child processes, for the FastCGI
//! tests. PHP-FPM listens on a Unix socket in its own temp dir (or on a free loopback
//! port); waits poll for the socket to accept, never sleep.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::wait_for_async;

/// The PHP fixtures (`tests/fixtures/php`).
pub fn php_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/php")
}

/// Where PHP-FPM listens.
#[derive(Clone, Debug)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// `php-fpm8.2 -F -O -R -y CONF`, one static pool.
pub struct PhpFpm {
    child: Option<Child>,
    conf: PathBuf,
    pub listen: Listen,
    /// `pm.max_children`: the most connections it serves at once.
    pub max_children: usize,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl PhpFpm {
    /// A pool of `max_children` workers on a Unix socket.
    pub async fn unix(max_children: usize) -> PhpFpm {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("php-fpm.sock");
        Self::start(dir, Listen::Unix(sock), max_children).await
    }

    /// A pool of `max_children` workers on a free loopback TCP port.
    pub async fn tcp(max_children: usize) -> PhpFpm {
        let dir = tempfile::tempdir().unwrap();
        // PHP-FPM cannot bind port 0 and say which port it got: take a free one.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        Self::start(dir, Listen::Tcp(addr), max_children).await
    }

    async fn start(dir: tempfile::TempDir, listen: Listen, max_children: usize) -> PhpFpm {
        let conf = dir.path().join("php-fpm.conf");
        let listen_at = match &listen {
            Listen::Unix(path) => path.display().to_string(),
            Listen::Tcp(addr) => addr.to_string(),
        };
        std::fs::write(
            &conf,
            format!(
                "[global]\nerror_log = /proc/self/fd/2\ndaemonize = no\npid = {dir}/php-fpm.pid\n\
                 [test]\nlisten = {listen_at}\npm = static\npm.max_children = {max_children}\n\
                 catch_workers_output = yes\ndecorate_workers_output = no\n\
                 security.limit_extensions = .php\nclear_env = yes\n\
                 php_admin_value[post_max_size] = 0\nphp_admin_value[upload_max_filesize] = 0\n\
                 php_admin_value[memory_limit] = 256M\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let mut fpm = PhpFpm {
            child: None,
            conf,
            listen,
            max_children,
            log: Arc::default(),
            _dir: dir,
        };
        fpm.spawn().await;
        fpm
    }

    async fn spawn(&mut self) {
        if let Listen::Unix(path) = &self.listen {
            let _ = std::fs::remove_file(path);
        }
        let mut child = Command::new(fpm_binary())
            .args(["-F", "-O", "-R", "-y"])
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("php-fpm8.2 starts (apt-get install php8.2-fpm)");
        let stderr = child.stderr.take().unwrap();
        let lines = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let listen = self.listen.clone();
        wait_for_async("php-fpm to accept connections", || {
            let listen = listen.clone();
            async move {
                match listen {
                    Listen::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
                    Listen::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                }
            }
        })
        .await;
    }

    /// The backend URL fallthrough is given.
    pub fn url(&self) -> String {
        match &self.listen {
            Listen::Unix(path) => format!("unix:{}", path.display()),
            Listen::Tcp(addr) => format!("fastcgi://{addr}"),
        }
    }

    /// Stops PHP-FPM (SIGTERM: its workers quit at once, dropping their connections)
    /// and starts it again on the same socket.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// What PHP-FPM logged.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fpm_binary() -> &'static str {
    if Path::new("/usr/sbin/php-fpm8.2").exists() {
        "/usr/sbin/php-fpm8.2"
    } else {
        "php-fpm8.2"
    }
}

/// gunicorn serving `tests/fixtures/python/echo.py` on a free loopback port.
pub struct Gunicorn {
    child: Child,
    pub addr: SocketAddr,
}

impl Gunicorn {
    pub async fn start() -> Gunicorn {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python");
        let mut child = Command::new("gunicorn")
            .args(["--bind", "127.0.0.1:0", "--workers", "2", "--chdir"])
            .arg(&dir)
            .arg("echo:app")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gunicorn starts (pip install flask gunicorn)");
        let stderr = child.stderr.take().unwrap();
        let found = Arc::new(Mutex::new(None));
        let seen = found.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.split("Listening at: http://").nth(1) {
                    let addr = at.split_whitespace().next().unwrap_or_default();
                    *seen.lock().unwrap() = addr.parse::<SocketAddr>().ok();
                }
            }
        });
        let addr = super::wait_for("gunicorn to listen", || *found.lock().unwrap()).await;
        Gunicorn { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its workers too.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
