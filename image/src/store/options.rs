//! The store's registry and unpack options: timeouts, body and unpack limits,
//! download concurrency, platform and pinned images.

use std::time::Duration;

use crate::distribution::{BodyLimits, Timeouts};
use crate::hosts::RegistryHosts;
use crate::oci::{self, Platform};
use crate::unpack::UnpackLimits;

/// How the store reaches registries.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `certs.d`-style registry host configuration.
    pub hosts: RegistryHosts,
    /// A layer download that receives nothing for this long is abandoned.
    pub stall_timeout: Duration,
    /// Connecting (TCP and TLS) to a registry.
    pub connect_timeout: Duration,
    /// From a request sent to its response headers.
    pub header_timeout: Duration,
    /// A whole small request (token, manifest, index, config).
    pub request_timeout: Duration,
    /// Least average layer download rate over each `stall_timeout` window, bytes/s.
    pub min_layer_rate: u64,
    /// Largest manifest or index read.
    pub max_manifest_bytes: u64,
    /// Largest image config read.
    pub max_config_bytes: u64,
    /// Limits on what one layer may unpack to.
    pub unpack: UnpackLimits,
    /// Layers downloaded at the same time per pull.
    pub max_concurrent_downloads: usize,
    /// The platform picked from image indexes.
    pub platform: Platform,
    /// Images [`ImageStore::remove`] refuses to remove (and that ImageStatus reports
    /// as pinned): references (tag or digest) or image ids, as configured.
    pub pinned: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        let t = Timeouts::default();
        let l = BodyLimits::default();
        Self {
            hosts: RegistryHosts::default(),
            stall_timeout: t.stall,
            connect_timeout: t.connect,
            header_timeout: t.headers,
            request_timeout: t.request,
            min_layer_rate: t.min_rate,
            max_manifest_bytes: l.manifest,
            max_config_bytes: l.config,
            unpack: UnpackLimits::default(),
            max_concurrent_downloads: 3,
            platform: oci::host_platform(),
            pinned: Vec::new(),
        }
    }
}

impl StoreOptions {
    pub(super) fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.connect_timeout,
            headers: self.header_timeout,
            request: self.request_timeout,
            stall: self.stall_timeout,
            min_rate: self.min_layer_rate,
        }
    }

    pub(super) fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            manifest: self.max_manifest_bytes,
            config: self.max_config_bytes,
        }
    }
}
