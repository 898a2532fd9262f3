//! Why a store operation failed, and the coarse class ([`ErrorKind`]) that picks its
//! gRPC code in one place.

use std::path::{Path, PathBuf};

use crate::distribution::RegistryError;
use crate::hosts::HostsError;
use crate::oci::ManifestError;
use crate::reference::{Digest, ReferenceError};
use crate::unpack::UnpackError;

/// Coarse classes of failure, for mapping onto gRPC codes in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Unavailable,
    PermissionDenied,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
}

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("image {reference} not found; tried: {}", tried.join("; "))]
    NotFound {
        reference: String,
        tried: Vec<String>,
    },
    #[error("pulling {reference}: no registry reachable; tried: {}", tried.join("; "))]
    Unavailable {
        reference: String,
        tried: Vec<String>,
    },
    #[error("pulling {reference}: access denied; tried: {}", tried.join("; "))]
    Unauthorized {
        reference: String,
        tried: Vec<String>,
    },
    #[error("pulling {reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: RegistryError,
    },
    #[error("pulling {reference}: {what} has digest {actual}, expected {expected}; discarded")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "pulling {reference}: {what} is {actual} bytes, the manifest says {expected}; discarded"
    )]
    SizeMismatch {
        reference: String,
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("pulling {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("pulling {reference}: the index has no manifest for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("pulling {reference}: bad image config {digest}: {detail}")]
    Config {
        reference: String,
        digest: Digest,
        detail: String,
    },
    #[error(
        "pulling {reference}: layer {digest} declares {size} bytes, more than it may unpack to \
         (the limit is image.max_layer_unpacked_bytes = {limit})"
    )]
    LayerTooLarge {
        reference: String,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("unpacking layer {digest}: {source}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image record {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("invalid lease holder {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidHolder(String),
    #[error("image store {0} is in use by another process (is berthd running?)")]
    Locked(PathBuf),
    #[error("background task failed: {0}")]
    Task(String),
    #[error(
        "image {image} ({reference}) is pinned by the image.pinned_images entry {pinned_by:?}; \
         remove that entry from the configuration (and reload berthd with SIGHUP) to allow its removal, or use `berthd image rm --force`"
    )]
    Pinned {
        reference: String,
        image: Digest,
        pinned_by: String,
    },
}

impl StoreError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Reference(_) | Self::InvalidHolder(_) => ErrorKind::InvalidArgument,
            Self::NotFound { .. } | Self::NoPlatform { .. } => ErrorKind::NotFound,
            Self::Unpack { source, .. } if source.is_bad_layer() => ErrorKind::InvalidArgument,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Unauthorized { .. } => ErrorKind::PermissionDenied,
            Self::Registry { source, .. } => match source {
                RegistryError::Unreachable { .. }
                | RegistryError::Stalled { .. }
                | RegistryError::Body { .. }
                | RegistryError::Token { .. } => ErrorKind::Unavailable,
                RegistryError::Deadline { .. } | RegistryError::TooSlow { .. } => {
                    ErrorKind::DeadlineExceeded
                }
                RegistryError::NotFound { .. } => ErrorKind::NotFound,
                RegistryError::Unauthorized { .. } => ErrorKind::PermissionDenied,
                // The registry served something no image may be: bad image input.
                RegistryError::TooLarge { .. } => ErrorKind::InvalidArgument,
                RegistryError::Status { status, .. } if *status >= 500 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            // What the registry served is not a usable image (a malformed or
            // unsupported manifest, content that does not match its digest, a blob
            // longer than declared): bad image input, not a fault of Berth's.
            Self::Config { .. }
            | Self::LayerTooLarge { .. }
            | Self::Manifest { .. }
            | Self::DigestMismatch { .. } => ErrorKind::InvalidArgument,
            Self::SizeMismatch {
                expected, actual, ..
            } if actual > expected => ErrorKind::InvalidArgument,
            // Shorter than declared: the download was cut off; a retry may work.
            Self::SizeMismatch { .. } => ErrorKind::Unavailable,
            Self::Unpack { source, .. } if source.is_limit() => ErrorKind::InvalidArgument,
            Self::Pinned { .. } => ErrorKind::FailedPrecondition,
            _ => ErrorKind::Internal,
        }
    }
}

pub(super) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::d;

    /// What a registry served wrong is the image's problem (InvalidArgument), a
    /// download cut short the network's (Unavailable); neither is Berth's (Internal).
    #[test]
    fn bad_registry_content_is_not_an_internal_error() {
        let reference = "r.test/x:1".to_owned();
        let manifest = StoreError::Manifest {
            reference: reference.clone(),
            source: ManifestError {
                media_type: "text/html".into(),
                detail: "not a manifest".into(),
            },
        };
        assert_eq!(manifest.kind(), ErrorKind::InvalidArgument, "{manifest}");
        let digest = StoreError::DigestMismatch {
            reference: reference.clone(),
            what: "layer".into(),
            expected: d('a'),
            actual: d('b'),
        };
        assert_eq!(digest.kind(), ErrorKind::InvalidArgument, "{digest}");
        let size = |actual| StoreError::SizeMismatch {
            reference: reference.clone(),
            what: "layer".into(),
            expected: 10,
            actual,
        };
        assert_eq!(size(11).kind(), ErrorKind::InvalidArgument);
        assert_eq!(size(9).kind(), ErrorKind::Unavailable);
        let corrupt = StoreError::Corrupt {
            path: "/x".into(),
            detail: "y".into(),
        };
        assert_eq!(corrupt.kind(), ErrorKind::Internal, "the store's own state");
    }
}
