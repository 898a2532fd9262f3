//! What can go wrong with a pod sandbox, each failure with its cause and its [`Kind`].
//! A container error met on the way (StopPodSandbox stopping its containers, the pod
//! context) keeps its own kind; `cri/error.rs` turns either into a status.

use crate::cni::exec::CniError;
use crate::cni::native::NativeError;
use crate::error::{HasKind, Kind};

/// A pod sandbox operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// An object the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with an existing object.
    #[error("{0}")]
    AlreadyExists(String),
    /// The pod (or the node) is not in a state where the request can run.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The host failed us; `context` says what Berth was doing.
    #[error("{context}: {source}")]
    Io {
        /// What Berth was doing.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
    /// A background task died while doing `what`.
    #[error("{what} task: {source}")]
    Task {
        /// What it was doing.
        what: &'static str,
        /// Why it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A record could not be encoded.
    #[error("{what}: {source}")]
    Json {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A container of the pod failed; its kind stands.
    #[error(transparent)]
    Container(#[from] crate::container::Error),
    /// A leaf module (store, systemd, host) failed; its kind stands.
    #[error(transparent)]
    Host(#[from] crate::error::Error),
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An I/O error with what Berth was doing when it happened.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A background task that ended without its result.
    pub fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Self::Task { what, source }
    }
}

impl HasKind for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::InvalidArgument(_) => Kind::InvalidArgument,
            Error::NotFound(_) => Kind::NotFound,
            Error::AlreadyExists(_) => Kind::AlreadyExists,
            Error::FailedPrecondition(_) => Kind::FailedPrecondition,
            Error::Io { source, .. } => Kind::of_io(source),
            Error::Network { source, .. }
            | Error::HostPorts { source, .. }
            | Error::NetworkTeardown(source) => source.kind(),
            Error::NativeNetwork { source, .. } | Error::NativeTeardown(source) => source.kind(),
            Error::Resize { source, .. } => crate::container::error::cgroup_kind(source),
            Error::Container(e) => e.kind(),
            Error::Host(e) => e.kind(),
            Error::Task { .. } | Error::Json { .. } | Error::Internal(_) => Kind::Internal,
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
