//! Builds the registry storage the VM lane's guest serves images from: critest's
//! images (busybox-based, nginx, httpd, nonewprivs; the same as the host's critest
//! test pushes, `forge::critest_images` and `critest_server_images`), pushed into a
//! temporary local registry whose `docker-registry` filesystem storage is then copied
//! to `<out-dir>`. The guest runs Debian's docker-registry on that storage and mirrors
//! the upstream hosts to it, so images keep their upstream names and no pull leaves
//! the guest.
//!
//! Usage: `berth-vm-images <out-dir>` (must not exist yet).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use berth_integration::forge::{critest_images, critest_server_images};
use berth_integration::registry::TestRegistry;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: berth-vm-images <out-dir>")?
        .into();
    if out.exists() {
        bail!("{} exists already", out.display());
    }
    let registry = TestRegistry::start()?;
    registry.push_all(&critest_images()?).await?;
    registry.push_all(&critest_server_images()?).await?;
    // kubelet's and berthd's default pinned pause image, for the guest's kubelet.
    let pause = critest_images()?
        .into_iter()
        .find(|p| p.upstream.ends_with("/pause"))
        .context("critest_images has no pause image")?;
    registry.push(pause.path(), "3.10", &pause.image).await?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(registry.storage())
        .arg(&out)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!("copying the registry storage failed: {status}");
    }
    Ok(())
}
