//! Berth's image layer: parse references, pull images from OCI registries (mirrors,
//! plain-HTTP loopback registries, basic and bearer auth), keep them in a
//! content-addressed store and unpack each layer once into an overlay-ready snapshot
//! directory.
//!
//! The entry point is [`ImageStore`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth_image::StoreError> {
//! use berth_image::{Auth, ImageStore, StoreOptions};
//! let store = ImageStore::open("/var/lib/berth/images", StoreOptions::default())?;
//! let image = store.pull("busybox:1.36", &Auth::anonymous()).await?;
//! let lower_dirs = store.snapshot_dirs(&image); // top layer first
//! # let _ = lower_dirs; Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod distribution;
pub mod hosts;
mod locks;
pub mod oci;
pub mod reference;
pub mod store;
pub mod unpack;

pub use distribution::{Auth, RegistryError};
pub use hosts::{DEFAULT_CONFIG_DIR, Endpoint, HostsError, RegistryHosts};
pub use oci::{ImageConfig, Platform};
pub use reference::{Digest, DigestError, Reference, ReferenceError};
pub use store::{ErrorKind, FsUsage, GcReport, Image, ImageStore, Layer, StoreError, StoreOptions};
pub use unpack::UnpackError;
