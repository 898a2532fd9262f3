//! Pull + unpack of a multi-layer image (≥ 50 MB) from a local docker-registry, by
//! berth-image and — when `containerd` and `ctr` are on PATH — by containerd pulling
//! the same image from the same registry in the same run. Prints per-sample times
//! and medians. Run as root: `cargo bench -p berth-integration --bench image_pull`.
//! `BENCH_SAMPLES` sets the number of samples (default 5).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_image::{Auth, ImageStore, RegistryHosts, StoreOptions};
use berth_integration::forge::{ImageBuilder, LayerBuilder, busybox_layer};
use berth_integration::registry::TestRegistry;

/// Data that compresses about as well as typical binaries and text (~2:1).
fn content(len: usize, mut seed: u64) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"container ",
        b"runtime ",
        b"kubernetes ",
        b"overlay ",
        b"\n",
        b"layer ",
        b"image ",
        b"registry ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if seed.is_multiple_of(2) {
            out.extend_from_slice(&seed.to_le_bytes());
        } else {
            out.extend_from_slice(words[(seed >> 8) as usize % words.len()]);
        }
    }
    out.truncate(len);
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
}

impl Containerd {
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let p = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/c.sock\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            p.display()
        );
        std::fs::write(p.join("config.toml"), config).ok()?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(p.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(p.join("containerd.log")).ok()?)
            .spawn()
            .ok()?;
        let c = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if c.ctr(&["version"]).is_ok_and(|s| s.success()) {
                return Some(c);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn ctr(&self, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Unmount anything containerd left below its root before the dir goes.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .stderr(Stdio::null())
            .status();
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| Path::new(&d).join(bin).is_file())
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let reg = TestRegistry::start()?;
    let mut builder = ImageBuilder::new().layer(busybox_layer(&[], &[])?);
    for i in 0..4u64 {
        let mut layer = LayerBuilder::new();
        for f in 0..10u64 {
            layer = layer.file(
                &format!("/data/{i}/{f}.bin"),
                content(2 << 20, i * 100 + f + 1),
                0o644,
            );
        }
        builder = builder.layer(layer);
    }
    let image = builder.build()?;
    let compressed: usize = image.layers.iter().map(|l| l.blob.len()).sum();
    reg.push("bench/big", "1", &image).await?;
    let reference = format!("{}/bench/big:1", reg.host());
    println!(
        "image: {} layers, {:.1} MB compressed, {:.1} MB uncompressed",
        image.layers.len(),
        compressed as f64 / 1e6,
        (4 * 10 * (2 << 20) + 2_000_000) as f64 / 1e6
    );

    let mut berth = Vec::new();
    for i in 0..samples {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::open(
            dir.path(),
            StoreOptions {
                hosts: RegistryHosts::new(None),
                ..StoreOptions::default()
            },
        )?;
        let t = Instant::now();
        store.pull(&reference, &Auth::anonymous()).await?;
        let d = t.elapsed();
        println!("berth      sample {i}: {:>7.1} ms", d.as_secs_f64() * 1e3);
        berth.push(d);
    }
    println!(
        "berth      median: {:>7.1} ms",
        median(&mut berth).as_secs_f64() * 1e3
    );

    if !(on_path("containerd") && on_path("ctr")) {
        println!("containerd: not installed, skipped (apt-get install containerd)");
        return Ok(());
    }
    let mut ctd = Vec::new();
    for i in 0..samples {
        let Some(c) = Containerd::start() else {
            println!("containerd: did not start, skipped");
            return Ok(());
        };
        let t = Instant::now();
        let status = c.ctr(&["images", "pull", "--plain-http", &reference])?;
        let d = t.elapsed();
        anyhow::ensure!(status.success(), "ctr pull failed");
        println!("containerd sample {i}: {:>7.1} ms", d.as_secs_f64() * 1e3);
        ctd.push(d);
    }
    println!(
        "containerd median: {:>7.1} ms",
        median(&mut ctd).as_secs_f64() * 1e3
    );
    Ok(())
}
