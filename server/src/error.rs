//! Berth's error type at the gRPC edge: one conversion to `tonic::Status`, so handlers
//! use `?` and the status code of every failure is chosen here, in one place.

use tonic::Status;

/// A failure a CRI handler reports to its client.
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
        source: std::io::Error,
    },
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
}

impl Error {
    /// The gRPC code of this failure, chosen by its kind: the caller's mistakes
    /// (InvalidArgument, NotFound, ...) as the handler classified them; host errors by
    /// their errno (a missing file is NotFound, out of fds, memory or disk is
    /// ResourceExhausted: the node is exhausted, not broken, and a retry may work);
    /// anything else is Berth's own fault, Internal.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Io { source, .. } => match source.raw_os_error() {
                _ if source.kind() == std::io::ErrorKind::NotFound => Code::NotFound,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EDQUOT | libc::ENOMEM) => {
                    Code::ResourceExhausted
                }
                _ => Code::Internal,
            },
            // Lower layers (a CNI plugin that could not be run) flatten the errno
            // into their message; it still says the node ran out of fds.
            Error::Internal(m) if m.contains("(os error 24)") || m.contains("(os error 23)") => {
                Code::ResourceExhausted
            }
            Error::Internal(_) => Code::Internal,
        }
    }

    /// The message a client sees: this error and every cause below it that its own
    /// text does not already include, with errno numbers shown by name.
    pub fn message(&self) -> String {
        let mut msg = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            cause = c.source();
        }
        with_errno_names(&msg)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(e.code(), e.message())
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

impl From<berth_image::StoreError> for Error {
    fn from(e: berth_image::StoreError) -> Self {
        use berth_image::ErrorKind;
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::InvalidArgument => Error::InvalidArgument(msg),
            ErrorKind::NotFound => Error::NotFound(msg),
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded => Error::Unavailable(msg),
            ErrorKind::PermissionDenied => Error::PermissionDenied(msg),
            ErrorKind::FailedPrecondition => Error::FailedPrecondition(msg),
            ErrorKind::Internal => Error::Internal(msg),
        }
    }
}

/// Result of a handler step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes_are_chosen_by_kind() {
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::NotFound("x".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Internal("x".into()), Code::Internal),
            (
                Error::io("reading x", std::io::Error::other("boom")),
                Code::Internal,
            ),
            (
                Error::io(
                    "generating an id",
                    std::io::Error::from_raw_os_error(libc::EMFILE),
                ),
                Code::ResourceExhausted,
            ),
            (
                Error::io("writing x", std::io::Error::from_raw_os_error(libc::ENOSPC)),
                Code::ResourceExhausted,
            ),
            (
                Error::io("forking", std::io::Error::from_raw_os_error(libc::ENOMEM)),
                Code::ResourceExhausted,
            ),
            (
                Error::io("opening x", std::io::Error::from_raw_os_error(libc::ENOENT)),
                Code::NotFound,
            ),
            (
                Error::Internal("running a CNI plugin: (os error 24)".into()),
                Code::ResourceExhausted,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn errnos_are_shown_by_name() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(libc::EINVAL), "EINVAL");
        assert_eq!(errno_name(9999), "errno 9999");
        let s = Status::from(Error::io(
            "mounting /x",
            std::io::Error::from_raw_os_error(libc::EPERM),
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message().ends_with("(EPERM)") && !s.message().contains("os error"),
            "{}",
            s.message()
        );
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

    #[test]
    fn message_keeps_the_cause_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("unpacking layer sha256:ab")]
        struct Outer(#[source] std::io::Error);
        let inner = std::io::Error::other(Outer(std::io::Error::from_raw_os_error(libc::EACCES)));
        let s = Status::from(Error::io("pulling x", inner));
        assert!(
            s.message()
                .starts_with("pulling x: unpacking layer sha256:ab")
                && s.message().ends_with("(EACCES)"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn io_message_keeps_context() {
        let s = Status::from(Error::io(
            "reading /x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        ));
        assert!(s.message().starts_with("reading /x: "), "{}", s.message());
    }
}
