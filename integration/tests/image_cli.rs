//! `berthd image import|list|rm|export`: loading images on an air-gapped node from a
//! `docker save` archive, without a registry, with berthd stopped (directly on the
//! store) or running (through its admin socket).

use std::process::Command;

use berth_integration::TestDaemon;
use berth_integration::forge::{LayerBuilder, sha256};

fn berthd() -> Command {
    Command::new(TestDaemon::binary().expect("berthd binary"))
}

#[test]
fn import_a_docker_save_archive_then_list_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = LayerBuilder::new()
        .file("/hello.txt", "hello from an archive\n", 0o644)
        .tar()
        .expect("layer tar");
    let diff_id = sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["cat", "/hello.txt"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    })
    .to_string();
    let save = dir.path().join("save");
    std::fs::create_dir_all(save.join("l1")).expect("mkdir");
    std::fs::write(save.join("l1/layer.tar"), &layer).expect("layer");
    std::fs::write(save.join("cfg.json"), &config).expect("config");
    std::fs::write(
        save.join("manifest.json"),
        r#"[{"Config":"cfg.json","RepoTags":["airgap/app:1.0"],"Layers":["l1/layer.tar"]}]"#,
    )
    .expect("manifest");
    let archive = dir.path().join("app.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&save)
        .args(["manifest.json", "cfg.json", "l1/layer.tar"])
        .status()
        .expect("tar");
    assert!(st.success());

    let root = dir.path().join("root");
    let args = |sub: &[&str]| {
        let mut c = berthd();
        c.arg("--root")
            .arg(&root)
            .arg("--state")
            .arg(dir.path().join("state"));
        c.args(sub);
        c
    };
    let out = args(&["image", "import", archive.to_str().expect("utf8")])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = sha256(config.as_bytes());
    assert!(stdout.contains(&id), "{stdout}");
    assert!(stdout.contains("docker.io/airgap/app:1.0"), "{stdout}");

    let out = args(&["image", "list"]).output().expect("run");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id) && l.ends_with("docker.io/airgap/app:1.0")),
        "{listed}"
    );

    let out = args(&["image", "import", "/nonexistent/berth.tar"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/berth.tar"), "{err}");

    // Export, then import the export into a fresh store: the same image and name.
    let exported = dir.path().join("export.tar");
    let out = args(&[
        "image",
        "export",
        "-o",
        exported.to_str().expect("utf8"),
        "airgap/app:1.0",
    ])
    .output()
    .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = dir.path().join("fresh");
    let out = berthd()
        .arg("--root")
        .arg(&fresh)
        .arg("--state")
        .arg(dir.path().join("state2"))
        .args(["image", "import", exported.to_str().expect("utf8")])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&id) && stdout.contains("docker.io/airgap/app:1.0"),
        "{stdout}"
    );

    // rm: by name; an absent name is reported (exit 1) after the others are done.
    let out = args(&["image", "rm", "airgap/app:1.0", "airgap/none:1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    assert!(String::from_utf8_lossy(&out.stderr).contains("airgap/none:1"));
    let out = args(&["image", "list"]).output().expect("run");
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&id));
}

#[tokio::test]
async fn image_commands_go_through_a_running_berthd() {
    let d = TestDaemon::start().await.expect("start");
    let out = d
        .command()
        .expect("berthd")
        .args(["image", "list"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ID "));
    // The client opens the archive itself: a missing one is named.
    let out = d
        .command()
        .expect("berthd")
        .args(["image", "import", "/nonexistent/berth.tar"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/berth.tar"));

    // Without the admin socket the store is still locked by the daemon: one line
    // saying so, never a second owner of the store.
    std::fs::remove_file(d.state_dir.join("admin.sock")).expect("rm admin.sock");
    let out = d
        .command()
        .expect("berthd")
        .args(["image", "list"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is berthd running?"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
