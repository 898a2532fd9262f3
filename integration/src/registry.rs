//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1 with a free port and temporary storage, optionally behind htpasswd
//! basic auth. Stopped and cleaned up on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::forge::{BuiltImage, Pusher};

/// The upstream registries critest's images live on.
pub const CRITEST_HOSTS: &[&str] = &["registry.k8s.io", "gcr.io", "k8s.gcr.io", "docker.io"];

/// The registry binary from Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running registry owned by a test.
#[derive(Debug)]
pub struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_inner(None)
    }

    /// Starts a registry that requires basic auth with `user`/`password` (htpasswd,
    /// bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<Self> {
        // A port picked by the kernel can be taken again between our probe and the
        // registry's bind; retry a few times.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(credentials.clone()) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    fn try_start(credentials: Option<(String, String)>) -> anyhow::Result<Self> {
        if !Path::new(REGISTRY_BIN).exists() {
            bail!(
                "{REGISTRY_BIN} missing: install Debian's docker-registry (integration/scripts/install-deps.sh)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .context("creating the registry directory")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage)?;
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash(password, 4).context("hashing the registry password")?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_BIN}"))?;
        let mut registry = Self {
            child: Some(child),
            dir,
            addr,
            credentials,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "docker-registry exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} within {READY_TIMEOUT:?}:\n{}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`, the registry host as written in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The registry's storage directory (to corrupt blobs on purpose).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A pusher with this registry's credentials.
    pub fn pusher(&self) -> anyhow::Result<Pusher> {
        Pusher::new(&self.url(), self.credentials.clone())
    }

    /// Pushes each image under its upstream path with all its tags.
    pub async fn push_all(&self, images: &[crate::forge::Published]) -> anyhow::Result<()> {
        let pusher = self.pusher()?;
        for p in images {
            for tag in &p.tags {
                pusher
                    .push(p.path(), tag, &p.image)
                    .await
                    .with_context(|| format!("pushing {}:{tag}", p.upstream))?;
            }
        }
        Ok(())
    }

    /// Writes `<dir>/<host>/hosts.toml` for each upstream `host` with this registry
    /// as its server, so images keep their upstream names and a pull never leaves
    /// the machine.
    pub fn write_mirror_hosts(&self, dir: &Path, hosts: &[&str]) -> anyhow::Result<()> {
        for host in hosts {
            let d = dir.join(host);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            std::fs::write(
                d.join("hosts.toml"),
                format!(
                    "# Test mirror for {host}: everything is served by the local registry.\n\
                     server = \"{}\"\n",
                    self.url()
                ),
            )?;
        }
        Ok(())
    }

    /// Pushes `image` as `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> anyhow::Result<()> {
        self.pusher()?.push(repo, tag, image).await
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(l.local_addr()?.port())
}
