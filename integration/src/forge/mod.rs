//! Builds OCI images locally — busybox-based images from Debian's static
//! `/bin/busybox`, with users, groups and any files — and pushes them to a registry
//! over the OCI distribution API (blob upload POST/PATCH/PUT, manifest PUT).
//!
//! ```no_run
//! # async fn demo(registry: &berth_integration::registry::TestRegistry) -> anyhow::Result<()> {
//! use berth_integration::forge::{Compression, ImageBuilder, LayerBuilder};
//! let image = ImageBuilder::busybox()?
//!     .layer(LayerBuilder::new().file("/hello.txt", "hi\n", 0o644))
//!     .cmd(["sh", "-c", "cat /hello.txt"])
//!     .user("1002")
//!     .build()?;
//! registry.push("e2e-test-images/hello", "1", &image).await?;
//! # Ok(()) }
//! ```
//!
//! By job: [`layer`] writes layer tarballs, [`busybox`] makes the busybox base layer
//! from the host's binary, [`image`] assembles config, manifest and index, [`push`]
//! talks to the registry, and [`critest`] builds the images critest and the other
//! tests pull.

pub mod busybox;
pub mod critest;
pub mod image;
pub mod layer;
pub mod push;

use sha2::Digest as _;

pub use busybox::{BUSYBOX, DYNAMIC_BUSYBOX, Group, User, busybox_layer, busybox_layer_from};
pub use critest::{
    APACHE, NGINX, Published, critest_images, critest_server_images, httpd_image, nginx_image,
    nnp_binary, nonewprivs_image,
};
pub use image::{BuiltImage, ImageBuilder};
pub use layer::{BuiltLayer, LayerBuilder};
pub use push::Pusher;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub(crate) const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_record_diff_ids_and_compression() {
        let layer = LayerBuilder::new().file("/a", "x", 0o644);
        let gz = layer.clone().build(false).unwrap();
        let zs = layer
            .clone()
            .compression(Compression::Zstd)
            .build(false)
            .unwrap();
        let raw = layer.compression(Compression::None).build(false).unwrap();
        assert_eq!(gz.diff_id, zs.diff_id);
        assert_eq!(raw.diff_id, raw.digest);
        assert_ne!(gz.digest, zs.digest);
        assert!(gz.blob.starts_with(&[0x1f, 0x8b]));
        assert!(zs.blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert!(zs.media_type.ends_with("+zstd"));
    }

    #[test]
    fn hard_link_headers_carry_the_linked_files_mode_and_owner() {
        // containerd applies a link header's mode and owner to the shared inode: a
        // header with anything but the target's own would change the target there
        // (busybox lost its exec bit when these headers said 0644).
        let tar = LayerBuilder::new()
            .file_owned("/bin/busybox", "elf", 0o4755, 7, 8)
            .hardlink("/bin/sh", "/bin/busybox")
            .hardlink("/sbin/ash", "/bin/sh")
            .tar()
            .unwrap();
        let mut seen = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().display().to_string(),
                h.entry_type().is_hard_link(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            [
                ("bin/busybox".to_owned(), false, 0o4755, 7, 8),
                ("bin/sh".to_owned(), true, 0o4755, 7, 8),
                ("sbin/ash".to_owned(), true, 0o4755, 7, 8),
            ]
        );
        let dangling = LayerBuilder::new()
            .hardlink("/bin/sh", "/bin/busybox")
            .tar();
        assert!(
            dangling.is_err(),
            "a link to nothing must not be forged silently"
        );
    }

    #[test]
    fn whiteout_names() {
        let tar = LayerBuilder::new()
            .whiteout("/etc/gone")
            .opaque("/var/cache")
            .tar()
            .unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["etc/.wh.gone", "var/cache/.wh..wh..opq"]);
    }

    #[test]
    fn config_carries_runtime_settings_and_the_id_is_its_digest() {
        let img = ImageBuilder::new()
            .files(&[("/x", b"1", 0o644)])
            .user("1003:1004")
            .workdir("/srv")
            .entrypoint(["/bin/sh"])
            .cmd(["-c", "true"])
            .env("A=b")
            .build()
            .unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&img.config).unwrap();
        assert_eq!(cfg["config"]["User"], "1003:1004");
        assert_eq!(cfg["config"]["WorkingDir"], "/srv");
        assert_eq!(cfg["config"]["Entrypoint"][0], "/bin/sh");
        assert_eq!(cfg["config"]["Env"][1], "A=b");
        assert_eq!(cfg["rootfs"]["diff_ids"][0], img.layers[0].diff_id);
        assert_eq!(img.id(), sha256(&img.config));
    }
}
