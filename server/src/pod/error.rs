//! What can go wrong with a pod sandbox, each failure with its cause and its [`Kind`].
//! A container error met on the way (StopPodSandbox stopping its containers, the pod
//! context) keeps its own kind; `cri/error.rs` turns either into a status.

use crate::cni::exec::CniError;
use crate::cni::native::NativeError;
use crate::error::{HasKind, Kind, Plain};

/// A pod sandbox operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CNI plugin failed to attach the pod.
    #[error("pod sandbox {id}: pod network: {source}")]
    Network {
        /// The pod.
        id: String,
        /// The plugin's failure.
        #[source]
        source: CniError,
    },
    /// The portmap plugin failed to add the pod's hostPorts to the native network.
    #[error("pod sandbox {id}: pod network (hostPort): {source}")]
    HostPorts {
        /// The pod.
        id: String,
        /// The plugin's failure.
        #[source]
        source: CniError,
    },
    /// A CNI plugin failed to detach the pod (StopPodSandbox retries it).
    #[error("tearing down the pod network: {0}")]
    NetworkTeardown(#[source] CniError),
    /// The built-in network failed to detach the pod.
    #[error("tearing down the pod network: {0}")]
    NativeTeardown(#[source] NativeError),
    /// The built-in network failed to attach the pod.
    #[error("pod sandbox {id}: pod network: {source}")]
    NativeNetwork {
        /// The pod.
        id: String,
        /// Why.
        #[source]
        source: NativeError,
    },
    /// The pod's cgroup refused new resources (UpdatePodSandboxResources).
    #[error("resizing pod {id}: {source}")]
    Resize {
        /// The pod.
        id: String,
        /// The cgroup's refusal.
        #[source]
        source: berth_runtime_core::cgroups::CgroupError,
    },
    /// A container of the pod failed; its kind stands.
    #[error(transparent)]
    Container(#[from] crate::container::Error),
    /// Every failure that is not the pod's own: the plain-message kinds (the request's
    /// mistake, a missing object, a bug), a host I/O error, a background task, a leaf
    /// module (store, systemd, host). Built with the constructors of [`Plain`]; its
    /// kind stands.
    #[error(transparent)]
    Host(#[from] crate::error::Error),
}

impl Plain for Error {}

impl HasKind for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Network { source, .. }
            | Error::HostPorts { source, .. }
            | Error::NetworkTeardown(source) => source.kind(),
            Error::NativeNetwork { source, .. } | Error::NativeTeardown(source) => source.kind(),
            Error::Resize { source, .. } => crate::container::error::cgroup_kind(source),
            Error::Container(e) => e.kind(),
            Error::Host(e) => e.kind(),
        }
    }
}

impl From<crate::systemd::SystemdError> for Error {
    fn from(e: crate::systemd::SystemdError) -> Self {
        Error::Host(e.into())
    }
}

/// Result of a pod operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
