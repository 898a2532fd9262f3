//! The error vocabulary every module shares: [`Kind`], what sort of failure an error
//! is (the caller's mistake, a missing object, an exhausted node, Berth's own fault),
//! and [`Error`], the error of the leaf modules (`store`, `systemd`, `host`, `config`)
//! and of the few steps that have no module error of their own.
//!
//! Each larger module has its own typed error (`container::Error`, `pod::Error`,
//! `cni::exec::CniError`) whose variants carry their cause as a `#[source]` and answer
//! [`HasKind::kind`]. The failures they share (the plain-message kinds, a host I/O
//! error, a dead task) are declared once, here: `container::Error` and `pod::Error`
//! carry an [`Error`] and build one with the constructors of [`Plain`]. None of them
//! knows about gRPC: `cri/error.rs` is the one place that turns any of them into a
//! `tonic::Status`, its code chosen from the kind and its message the whole cause chain.

use std::io;

/// What sort of failure an error is. The CRI edge maps each to one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or asks for something impossible.
    InvalidArgument,
    /// The named object does not exist.
    NotFound,
    /// The request conflicts with an existing object.
    AlreadyExists,
    /// The system is not in a state where the request can run.
    FailedPrecondition,
    /// A remote dependency (a registry) cannot be reached.
    Unavailable,
    /// The operation ran out of time.
    DeadlineExceeded,
    /// Credentials were refused.
    PermissionDenied,
    /// The node ran out of something (fds, memory, disk): a retry may work.
    ResourceExhausted,
    /// A bug, an unexpected state, or the host failing in a way nobody asked for.
    Internal,
}

impl Kind {
    /// The kind of a host error, by its errno: a missing file is NotFound; out of
    /// fds, memory or disk is ResourceExhausted (the node is exhausted, not broken,
    /// and a retry may work); anything else is Internal.
    pub fn of_io(e: &io::Error) -> Kind {
        match e.raw_os_error() {
            _ if e.kind() == io::ErrorKind::NotFound => Kind::NotFound,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EDQUOT | libc::ENOMEM) => {
                Kind::ResourceExhausted
            }
            _ => Kind::Internal,
        }
    }

    /// Like [`Kind::of_io`], but a host error that is not the node running out of
    /// something is `otherwise`: a write the kernel refused (EINVAL, EBUSY) is the
    /// caller's value at fault, not Berth.
    pub fn of_io_or(e: &io::Error, otherwise: Kind) -> Kind {
        match Kind::of_io(e) {
            Kind::ResourceExhausted => Kind::ResourceExhausted,
            _ => otherwise,
        }
    }
}

/// The kind of an error from the first host error in its cause chain: out of fds,
/// memory or disk anywhere below is ResourceExhausted (the node is exhausted, and
/// docs/troubleshooting.md promises that code for it on every RPC); anything else,
/// or no host error at all, is `otherwise`. For errors of other crates whose variants
/// carry an `io::Error` but do not know Berth's kinds (netlink, runtime-core).
pub fn io_kind_in_chain(e: &(dyn std::error::Error + 'static), otherwise: Kind) -> Kind {
    std::iter::successors(Some(e), |e| e.source())
        .find_map(|e| e.downcast_ref::<io::Error>())
        .map_or(otherwise, |io| Kind::of_io_or(io, otherwise))
}

/// An error that knows its [`Kind`].
pub trait HasKind: std::error::Error {
    /// What sort of failure this is.
    fn kind(&self) -> Kind;
}

/// A failure of a leaf module, or of a step with no module error of its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with an existing object.
    #[error("{0}")]
    AlreadyExists(String),
    /// The system is not in a state where the request can run.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A remote dependency (a registry) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The operation ran out of time.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Credentials were refused.
    #[error("{0}")]
    PermissionDenied(String),
    /// The node ran out of something (fds, memory, disk): a retry may work.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The host failed us (I/O, a syscall); `context` says what Berth was doing.
    #[error("{context}: {source}")]
    Io {
        /// What Berth was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The image store failed; its own kind says whose fault.
    #[error(transparent)]
    Image(#[from] berth_image::StoreError),
    /// A background task died (panicked or was cancelled) while doing `what`.
    #[error("{what} task: {source}")]
    Task {
        /// What the task was doing.
        what: &'static str,
        /// Why it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A leaf module's own typed error (`systemd::SystemdError`), with the kind that
    /// module gave it and its cause chain intact.
    #[error("{source}")]
    Classified {
        /// What sort of failure it is.
        kind: Kind,
        /// The error itself.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An I/O error with what Berth was doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// A file the request (or its image) names could not be used: the request's fault,
    /// InvalidArgument `<context>: <error>` — unless the node ran out of fds, memory or
    /// space, which stays an I/O error of kind ResourceExhausted (kubelet retries).
    pub fn refused_io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if Kind::of_io(&source) == Kind::ResourceExhausted {
            Self::io(context, source)
        } else {
            Self::InvalidArgument(format!("{context}: {source}"))
        }
    }

    /// A background task that ended without its result.
    pub fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Self::Task { what, source }
    }

    /// A typed error of a leaf module, its kind kept.
    pub fn classified<E: HasKind + Send + Sync + 'static>(e: E) -> Self {
        Self::Classified {
            kind: e.kind(),
            source: Box::new(e),
        }
    }
}

impl HasKind for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::InvalidArgument(_) => Kind::InvalidArgument,
            Error::NotFound(_) => Kind::NotFound,
            Error::AlreadyExists(_) => Kind::AlreadyExists,
            Error::FailedPrecondition(_) => Kind::FailedPrecondition,
            Error::Unavailable(_) => Kind::Unavailable,
            Error::DeadlineExceeded(_) => Kind::DeadlineExceeded,
            Error::PermissionDenied(_) => Kind::PermissionDenied,
            Error::ResourceExhausted(_) => Kind::ResourceExhausted,
            Error::Io { source, .. } => Kind::of_io(source),
            Error::Image(e) => image_kind(e),
            Error::Classified { kind, .. } => *kind,
            Error::Task { .. } | Error::Internal(_) => Kind::Internal,
        }
    }
}

/// The constructors every module error gets for the failures it shares with [`Error`]:
/// the plain-message kinds (the request's mistake, a missing object, ...), a host I/O
/// error, a background task's death. A module error (`container::Error`, `pod::Error`)
/// carries an [`Error`] in one variant (`Host`) instead of declaring these again, and
/// opts in with `impl Plain for Error {}`; `container::Error::invalid_argument(m)` is
/// `Error::InvalidArgument(m)` inside it, with the same message and kind.
pub trait Plain: From<Error> {
    /// The request is malformed; the message names the field.
    fn invalid_argument(message: String) -> Self {
        Error::InvalidArgument(message).into()
    }

    /// The named object does not exist.
    fn not_found(message: String) -> Self {
        Error::NotFound(message).into()
    }

    /// The request conflicts with an existing object.
    fn already_exists(message: String) -> Self {
        Error::AlreadyExists(message).into()
    }

    /// The object (or the node) is not in a state where the request can run.
    fn failed_precondition(message: String) -> Self {
        Error::FailedPrecondition(message).into()
    }

    /// The operation ran out of time.
    fn deadline_exceeded(message: String) -> Self {
        Error::DeadlineExceeded(message).into()
    }

    /// A bug or an unexpected state.
    fn internal(message: String) -> Self {
        Error::Internal(message).into()
    }

    /// An I/O error with what Berth was doing when it happened ([`Error::io`]).
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::io(context, source).into()
    }

    /// A background task that ended without its result ([`Error::task`]).
    fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| Error::Task { what, source }.into()
    }
}

/// The kind of an image store failure, from the store's own classification.
pub fn image_kind(e: &berth_image::StoreError) -> Kind {
    use berth_image::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidArgument => Kind::InvalidArgument,
        ErrorKind::NotFound => Kind::NotFound,
        ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => Kind::Unavailable,
        ErrorKind::PermissionDenied => Kind::PermissionDenied,
        ErrorKind::FailedPrecondition => Kind::FailedPrecondition,
        ErrorKind::Internal => Kind::Internal,
    }
}

/// The symbolic name of a Linux errno (`ENOENT`), the way runc, strace and the man
/// pages spell it; `errno N` for one this table does not know.
pub fn errno_name(errno: i32) -> std::borrow::Cow<'static, str> {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENOTBLK => "ENOTBLK",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::EDOM => "EDOM",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENOMSG => "ENOMSG",
        libc::EIDRM => "EIDRM",
        libc::ENOSTR => "ENOSTR",
        libc::ENODATA => "ENODATA",
        libc::ETIME => "ETIME",
        libc::ENOSR => "ENOSR",
        libc::ENOLINK => "ENOLINK",
        libc::EPROTO => "EPROTO",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EILSEQ => "EILSEQ",
        libc::EUSERS => "EUSERS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EDESTADDRREQ => "EDESTADDRREQ",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ESOCKTNOSUPPORT => "ESOCKTNOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPFNOSUPPORT => "EPFNOSUPPORT",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ENETRESET => "ENETRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETOOMANYREFS => "ETOOMANYREFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::EOWNERDEAD => "EOWNERDEAD",
        libc::ENOTRECOVERABLE => "ENOTRECOVERABLE",
        libc::ERFKILL => "ERFKILL",
        libc::EHWPOISON => "EHWPOISON",
        libc::ENOKEY => "ENOKEY",
        libc::EKEYEXPIRED => "EKEYEXPIRED",
        libc::EKEYREVOKED => "EKEYREVOKED",
        libc::EKEYREJECTED => "EKEYREJECTED",
        libc::ENOMEDIUM => "ENOMEDIUM",
        libc::EMEDIUMTYPE => "EMEDIUMTYPE",
        libc::EREMOTEIO => "EREMOTEIO",
        _ => return format!("errno {errno}").into(),
    };
    name.into()
}

/// `text` with every `(os error N)` — how `std::io::Error` prints an errno, also when
/// a lower layer flattened one into a string — and every `(errno N)` (runtime-core's
/// and the monitor's reports) replaced by `(ENAME)`.
pub fn with_errno_names(text: &str) -> String {
    let mut out = text.to_owned();
    for mark in ["(os error ", "(errno "] {
        out = replace_errnos(&out, mark);
    }
    out
}

fn replace_errnos(text: &str, mark: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(mark) {
        let after = &rest[at + mark.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<i32>() {
            Ok(n) if after[digits..].starts_with(')') => {
                out.push_str(&rest[..at]);
                out.push('(');
                out.push_str(&errno_name(n));
                out.push(')');
                rest = &after[digits + 1..];
            }
            _ => {
                out.push_str(&rest[..at + mark.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Result of a step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_errors_are_classified_by_errno() {
        let k = |errno| Kind::of_io(&io::Error::from_raw_os_error(errno));
        assert_eq!(k(libc::ENOENT), Kind::NotFound);
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOSPC,
            libc::EDQUOT,
            libc::ENOMEM,
        ] {
            assert_eq!(k(errno), Kind::ResourceExhausted, "{}", errno_name(errno));
        }
        assert_eq!(k(libc::EIO), Kind::Internal);
        assert_eq!(k(libc::EPERM), Kind::Internal);
        let or =
            |errno| Kind::of_io_or(&io::Error::from_raw_os_error(errno), Kind::InvalidArgument);
        assert_eq!(or(libc::EINVAL), Kind::InvalidArgument);
        assert_eq!(or(libc::ENOSPC), Kind::ResourceExhausted);
        assert_eq!(
            Error::io("x", io::Error::other("boom")).kind(),
            Kind::Internal
        );
    }

    #[test]
    fn errnos_are_shown_by_name() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(9999), "errno 9999");
        // Flattened into a string by a lower layer, twice, and a lookalike that is not
        // an errno.
        assert_eq!(
            with_errno_names("a: x (os error 2): y (os error 22) (os error z)"),
            "a: x (ENOENT): y (EINVAL) (os error z)"
        );
        // How the monitor reports a failed step of container set-up.
        assert_eq!(
            with_errno_names("container init failed at chdir: /no/such/dir (errno 2)"),
            "container init failed at chdir: /no/such/dir (ENOENT)"
        );
    }
}
