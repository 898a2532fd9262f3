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

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Status::not_found(msg)
            }
            // Out of fds or disk: the node is exhausted, not broken; a retry may work.
            Error::Io { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EDQUOT)
                ) =>
            {
                Status::resource_exhausted(msg)
            }
            // Lower layers (a CNI plugin that could not be run) flatten the errno
            // into their message; it still says the node ran out of fds.
            Error::Internal(m) if m.contains("(os error 24)") || m.contains("(os error 23)") => {
                Status::resource_exhausted(msg)
            }
            Error::Io { .. } | Error::Internal(_) => Status::internal(msg),
        }
    }
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
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
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
