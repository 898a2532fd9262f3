//! What can go wrong with a container, each failure with its cause and its [`Kind`].
//! The request's own mistakes carry only their message (there is nothing below
//! them) and, like host I/O errors and task deaths, are the crate-level error inside
//! [`Error::Host`], built with [`Plain`]'s constructors; every failure of something
//! Berth called keeps that error as its `#[source]`, so `cri/error.rs` can show the
//! whole chain and choose the code from the kind.

use berth_runtime_core::cgroups::CgroupError;
use berth_runtime_core::monitor_protocol as protocol;

use super::handler::RuntimeError;
use crate::error::{HasKind, Kind, Plain};

/// A container operation's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container has exited, or was never started.
    #[error("container {id} is not running")]
    NotRunning {
        /// The container.
        id: String,
    },
    /// A record or spec could not be encoded or decoded.
    #[error("{what}: {source}")]
    Json {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The container's OCI runtime (runc, crun) failed.
    #[error("{context}: {source}")]
    Runtime {
        /// What Berth asked of it.
        context: String,
        /// How it failed.
        #[source]
        source: RuntimeError,
    },
    /// The native runtime (runtime-core) failed a step.
    #[error("{context}: {source}")]
    RuntimeCore {
        /// What Berth asked of it.
        context: String,
        /// How it failed.
        #[source]
        source: berth_runtime_core::ContainerError,
    },
    /// The container's cgroup refused new resources.
    #[error("updating resources of {id}: {source}")]
    Update {
        /// The container.
        id: String,
        /// The cgroup's refusal.
        #[source]
        source: CgroupError,
    },
    /// The monitor could not create the container; it classified why.
    #[error("creating the container: {}", .0.message)]
    Create(protocol::MonitorError),
    /// The monitor's report or reply could not be read.
    #[error("berth-monitor's report: {0}")]
    Protocol(#[source] protocol::ProtocolError),
    /// The monitor died before reporting the container.
    #[error(
        "creating container {id}: berth-monitor exited ({status}) without reporting the container; see berthd's log"
    )]
    MonitorExited {
        /// The container.
        id: String,
        /// How the monitor ended, as far as known.
        status: String,
    },
    /// The monitor hung while creating the container.
    #[error(
        "creating container {id}: berth-monitor did not create the container within {timeout:?} (is the node overloaded?); retry"
    )]
    MonitorTimeout {
        /// The container.
        id: String,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    /// Every failure that is not the container's own: the plain-message kinds (the
    /// request's mistake, a missing object, a bug), a host I/O error, the image store,
    /// a background task, a leaf module (store, systemd, host, the OCI spec). Built
    /// with the constructors of [`Plain`]; its kind stands.
    #[error(transparent)]
    Host(#[from] crate::error::Error),
}

impl Plain for Error {}

impl Error {
    /// The cgroup of container `id` refused new resources.
    pub fn update(id: impl Into<String>, source: CgroupError) -> Self {
        Self::Update {
            id: id.into(),
            source,
        }
    }

    /// The OCI runtime failed doing `context`.
    pub fn runtime(context: impl Into<String>) -> impl FnOnce(RuntimeError) -> Self {
        let context = context.into();
        move |source| Self::Runtime { context, source }
    }
}

impl HasKind for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::NotRunning { .. } => Kind::FailedPrecondition,
            Error::Update { source, .. } => cgroup_kind(source),
            // The monitor classifies from its typed errors: a bad executable or working
            // dir is the caller's mistake, out of fds the node's state, the rest ours.
            Error::Create(e) => match e.kind {
                protocol::ErrorKind::SpecFault => Kind::InvalidArgument,
                protocol::ErrorKind::ResourceExhausted => Kind::ResourceExhausted,
                protocol::ErrorKind::Internal => Kind::Internal,
            },
            Error::Runtime { source, .. } => match source {
                RuntimeError::Spawn { source, .. } => match Kind::of_io(source) {
                    Kind::ResourceExhausted => Kind::ResourceExhausted,
                    _ => Kind::Internal,
                },
                RuntimeError::Timeout { .. }
                | RuntimeError::Task(_)
                | RuntimeError::Failed { .. } => Kind::Internal,
            },
            Error::Host(e) => e.kind(),
            // runtime-core does not know Berth's kinds; a host error it carries (its
            // `Io` variant, a process step's) still says whether the node ran out.
            Error::RuntimeCore { source, .. } => {
                crate::error::io_kind_in_chain(source, Kind::Internal)
            }
            Error::Json { .. }
            | Error::Protocol(_)
            | Error::MonitorExited { .. }
            | Error::MonitorTimeout { .. } => Kind::Internal,
        }
    }
}

/// Whose fault a cgroup's refusal is: a value the kernel rejects (EINVAL, ERANGE,
/// EBUSY: below current usage, beyond the parent's limit) or a controller the host
/// lacks is the request's; out of memory or space the node's; anything else (EIO,
/// a missing cgroup) Berth's.
pub fn cgroup_kind(e: &CgroupError) -> Kind {
    match e {
        CgroupError::Write { source, .. } => match source.raw_os_error() {
            Some(libc::EINVAL | libc::ERANGE | libc::EBUSY | libc::EOPNOTSUPP) => {
                Kind::InvalidArgument
            }
            _ => match Kind::of_io(source) {
                Kind::ResourceExhausted => Kind::ResourceExhausted,
                _ => Kind::Internal,
            },
        },
        CgroupError::InvalidPath(_) | CgroupError::Unsupported(_) => Kind::InvalidArgument,
        CgroupError::Devices(_) => Kind::FailedPrecondition,
        CgroupError::Read { source, .. }
        | CgroupError::Create { source, .. }
        | CgroupError::Remove { source, .. } => match Kind::of_io(source) {
            Kind::ResourceExhausted => Kind::ResourceExhausted,
            _ => Kind::Internal,
        },
    }
}

impl From<berth_image::StoreError> for Error {
    fn from(e: berth_image::StoreError) -> Self {
        Error::Host(e.into())
    }
}

impl From<crate::systemd::SystemdError> for Error {
    fn from(e: crate::systemd::SystemdError) -> Self {
        Error::Host(e.into())
    }
}

/// Result of a container operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
