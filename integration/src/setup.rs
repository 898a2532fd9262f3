//! Ready-made test environments: a berthd whose registry mirrors serve critest's
//! images from a local registry, so tests run pods and containers from the images
//! kubelet and critest name, offline.

use crate::daemon::{DaemonOptions, TestDaemon};
use crate::forge::{critest_images, critest_server_images};
use crate::registry::{CRITEST_HOSTS, TestRegistry};

/// A berthd with images available through mirrors. Fields drop in reverse order:
/// the daemon stops before the registry does.
#[derive(Debug)]
pub struct Node {
    /// The daemon under test.
    pub daemon: TestDaemon,
    /// The registry serving the images.
    pub registry: TestRegistry,
    /// The certs.d directory berthd reads.
    pub certs: tempfile::TempDir,
}

impl Node {
    /// Starts a registry holding critest's images (busybox-based ones, and nginx,
    /// httpd and nonewprivs built from Debian's packages) and a berthd that mirrors
    /// every upstream registry to it.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(DaemonOptions::default()).await
    }

    /// Like [`Node::start`], with extra daemon options (the `[registry]` section is
    /// added here).
    pub async fn start_with(options: DaemonOptions) -> anyhow::Result<Self> {
        let registry = TestRegistry::start()?;
        registry.push_all(&critest_images()?).await?;
        registry.push_all(&critest_server_images()?).await?;
        Self::start_on(registry, options).await
    }

    /// Like [`Node::start`] with an empty registry, for tests that push only the
    /// images they build (building and pushing critest's takes a while).
    pub async fn start_bare() -> anyhow::Result<Self> {
        Self::start_bare_with(DaemonOptions::default()).await
    }

    /// Like [`Node::start_bare`], with extra daemon options.
    pub async fn start_bare_with(options: DaemonOptions) -> anyhow::Result<Self> {
        Self::start_on(TestRegistry::start()?, options).await
    }

    async fn start_on(registry: TestRegistry, mut options: DaemonOptions) -> anyhow::Result<Self> {
        let certs = tempfile::tempdir()?;
        registry.write_mirror_hosts(certs.path(), CRITEST_HOSTS)?;
        options.extra_config.push_str(&format!(
            "\n[registry]\nconfig_path = {:?}\nstall_timeout_secs = 20\n",
            certs.path().display().to_string()
        ));
        let daemon = TestDaemon::start_with(options).await?;
        Ok(Self {
            daemon,
            registry,
            certs,
        })
    }
}
