//! Pushes the images a local cluster on Berth (`integration/scripts/local-cluster.sh`)
//! runs into the local registry the script started, under their upstream paths, so
//! berthd's mirror configuration serves `busybox`, critest's images and CoreDNS offline.
//!
//!   berth-cluster-images [--busybox-only] http://127.0.0.1:PORT [COREDNS_BINARY COREDNS_TAG]
//!
//! `--busybox-only` pushes only `busybox`, the sandbox image `registry.k8s.io/pause`
//! containerd needs (and CoreDNS when named): the kubectl end-to-end
//! test (integration/scripts/cluster-e2e.sh) runs nothing else, and building critest's,
//! nginx's and httpd's images takes minutes with a debug build.

use std::path::Path;

use anyhow::{Context, bail};
use berth_integration::forge::Pusher;
use berth_integration::forge::{
    ImageBuilder, LayerBuilder, Published, busybox_layer, critest_images, critest_server_images,
};

/// Tag of `registry.k8s.io/pause` that local-cluster.sh configures as containerd's
/// sandbox image.
const PAUSE_TAG: &str = "3.10.1";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let busybox_only = args.first().is_some_and(|a| a == "--busybox-only");
    if busybox_only {
        args.remove(0);
    }
    let (url, coredns) = match args.as_slice() {
        [url] => (url, None),
        [url, bin, tag] => (url, Some((bin, tag))),
        _ => {
            bail!(
                "usage: berth-cluster-images [--busybox-only] http://127.0.0.1:PORT [COREDNS_BINARY COREDNS_TAG]"
            )
        }
    };
    let pusher = Pusher::new(url, None)?;
    let mut images: Vec<Published> = Vec::new();
    if !busybox_only {
        images.extend(critest_images()?);
        images.extend(critest_server_images()?);
    }
    let busybox = ImageBuilder::busybox()?.build()?;
    for tag in ["latest", "1.36", "1.37"] {
        pusher
            .push("library/busybox", tag, &busybox)
            .await
            .with_context(|| format!("pushing busybox:{tag}"))?;
    }
    // containerd's sandbox image (`local-cluster.sh up --runtime containerd`; berthd
    // needs none): busybox's sleep, which a SIGKILL ends, as containerd stops it.
    let pause = ImageBuilder::new()
        .layer(busybox_layer(&[], &[])?)
        .entrypoint(["/bin/sleep", "2147483647"])
        .build()?;
    pusher
        .push("pause", PAUSE_TAG, &pause)
        .await
        .context("pushing pause")?;
    for p in &images {
        for tag in &p.tags {
            pusher
                .push(p.path(), tag, &p.image)
                .await
                .with_context(|| format!("pushing {}:{tag}", p.upstream))?;
        }
    }
    if let Some((bin, tag)) = coredns {
        // CoreDNS is one static binary; the image is that and nothing else.
        let image = ImageBuilder::new()
            .layer(LayerBuilder::new().host_binary_at("/coredns", Path::new(bin))?)
            .entrypoint(["/coredns"])
            .build()?;
        pusher
            .push("coredns/coredns", tag, &image)
            .await
            .context("pushing coredns")?;
    }
    println!("berth-cluster-images: pushed to {url}");
    Ok(())
}
