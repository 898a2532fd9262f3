//! The one place an error becomes a `tonic::Status`. Every module error answers its
//! [`Kind`]; the code comes from that kind alone (never from the message), and the
//! message is the error followed by every cause below it that its own text does not
//! already include, errno numbers shown by name: "creating container X: mounting
//! /a: permission denied (EACCES)".

use tonic::{Code, Status};

use crate::error::{HasKind, Kind, with_errno_names};

/// The gRPC code of a kind of failure.
pub fn code(kind: Kind) -> Code {
    match kind {
        Kind::InvalidArgument => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::AlreadyExists => Code::AlreadyExists,
        Kind::FailedPrecondition => Code::FailedPrecondition,
        Kind::Unavailable => Code::Unavailable,
        Kind::DeadlineExceeded => Code::DeadlineExceeded,
        Kind::PermissionDenied => Code::PermissionDenied,
        Kind::ResourceExhausted => Code::ResourceExhausted,
        Kind::Internal => Code::Internal,
    }
}

/// The message a client sees: `e` and every cause below it that the text so far
/// does not already include, with errno numbers shown by name.
pub fn message(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
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

/// The status of any classified error.
pub fn status<E: HasKind>(e: &E) -> Status {
    Status::new(code(e.kind()), message(e))
}

impl From<crate::error::Error> for Status {
    fn from(e: crate::error::Error) -> Self {
        status(&e)
    }
}

impl From<crate::container::Error> for Status {
    fn from(e: crate::container::Error) -> Self {
        status(&e)
    }
}

impl From<crate::pod::Error> for Status {
    fn from(e: crate::pod::Error) -> Self {
        status(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::native::NativeError;
    use crate::cni::netlink::NetlinkError;
    use crate::container::Error as ContainerError;
    use crate::error::{Error, Plain};
    use crate::pod::Error as PodError;

    #[test]
    fn codes_come_from_kinds() {
        let errno = std::io::Error::from_raw_os_error;
        let cases: Vec<(Status, Code)> = vec![
            (
                Error::InvalidArgument("x".into()).into(),
                Code::InvalidArgument,
            ),
            (Error::NotFound("x".into()).into(), Code::NotFound),
            (Error::AlreadyExists("x".into()).into(), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()).into(),
                Code::FailedPrecondition,
            ),
            (Error::Internal("x".into()).into(), Code::Internal),
            (
                Error::io("reading x", std::io::Error::other("boom")).into(),
                Code::Internal,
            ),
            (
                Error::io("generating an id", errno(libc::EMFILE)).into(),
                Code::ResourceExhausted,
            ),
            (
                Error::io("writing x", errno(libc::ENOSPC)).into(),
                Code::ResourceExhausted,
            ),
            (
                Error::io("forking", errno(libc::ENOMEM)).into(),
                Code::ResourceExhausted,
            ),
            (
                Error::io("opening x", errno(libc::ENOENT)).into(),
                Code::NotFound,
            ),
            // A cgroup that refuses a value is the caller's fault; one that fails with
            // EIO is not (it was InvalidArgument whatever the errno).
            (
                ContainerError::update("c1", cgroup_write(libc::EINVAL)).into(),
                Code::InvalidArgument,
            ),
            (
                ContainerError::update("c1", cgroup_write(libc::EIO)).into(),
                Code::Internal,
            ),
            // A CNI plugin that could not be started for want of fds: the node is
            // exhausted, found from the errno itself, not from the text.
            (
                PodError::Network {
                    id: "p1".into(),
                    source: crate::cni::exec::CniError::Spawn {
                        command: "ADD",
                        plugin: "bridge".into(),
                        binary: "/opt/cni/bin/bridge".into(),
                        source: errno(libc::EMFILE),
                    },
                }
                .into(),
                Code::ResourceExhausted,
            ),
            // A container error inside a pod error keeps its kind.
            (
                PodError::from(ContainerError::NotRunning { id: "c1".into() }).into(),
                Code::FailedPrecondition,
            ),
            // The native network and the native runtime: out of fds below them is the
            // node exhausted (docs/troubleshooting.md promises it on every RPC), any
            // other host error still Berth's.
            (
                native_network(NativeError::Netlink(NetlinkError::Io(errno(libc::EMFILE)))),
                Code::ResourceExhausted,
            ),
            (
                native_network(NativeError::Netlink(NetlinkError::Kernel {
                    what: "creating bridge berth0".into(),
                    source: errno(libc::ENOBUFS),
                })),
                Code::Internal,
            ),
            (
                native_network(NativeError::Netlink(NetlinkError::Kernel {
                    what: "creating bridge berth0".into(),
                    source: errno(libc::ENOMEM),
                })),
                Code::ResourceExhausted,
            ),
            (
                native_network(NativeError::Netlink(NetlinkError::Malformed("x".into()))),
                Code::Internal,
            ),
            (
                native_network(NativeError::HostIo {
                    what: "running iptables",
                    source: errno(libc::ENFILE),
                }),
                Code::ResourceExhausted,
            ),
            (
                native_network(NativeError::HostIo {
                    what: "running iptables",
                    source: errno(libc::ENOENT),
                }),
                Code::Internal,
            ),
            (
                runtime_core(berth_runtime_core::ContainerError::Io {
                    what: "create state dir",
                    path: "/run/berth/c1".into(),
                    source: errno(libc::EMFILE),
                }),
                Code::ResourceExhausted,
            ),
            (
                runtime_core(berth_runtime_core::ContainerError::Io {
                    what: "create state dir",
                    path: "/run/berth/c1".into(),
                    source: errno(libc::EIO),
                }),
                Code::Internal,
            ),
            (
                runtime_core(berth_runtime_core::ContainerError::InvalidSpec("x".into())),
                Code::Internal,
            ),
        ];
        for (i, (s, c)) in cases.into_iter().enumerate() {
            assert_eq!(s.code(), c, "case {i}: {}", s.message());
        }
        // The message is not looked at: a text that reads like an errno is not one.
        let s = Status::from(Error::Internal("running x: (os error 24)".into()));
        assert_eq!(s.code(), Code::Internal);
    }

    /// A module error reaches the plain kinds, the host errors and the task deaths
    /// through the crate-level error it carries (`Plain`): each gives the code and the
    /// message the crate-level error gives, also a container error inside a pod error.
    #[tokio::test]
    async fn module_errors_answer_plain_failures_like_the_crate_error() {
        type Make<E> = fn(String) -> E;
        type Case = (Make<Error>, Make<ContainerError>, Make<PodError>, Code);
        let kinds: [Case; 6] = [
            (
                Error::InvalidArgument,
                ContainerError::invalid_argument,
                PodError::invalid_argument,
                Code::InvalidArgument,
            ),
            (
                Error::NotFound,
                ContainerError::not_found,
                PodError::not_found,
                Code::NotFound,
            ),
            (
                Error::AlreadyExists,
                ContainerError::already_exists,
                PodError::already_exists,
                Code::AlreadyExists,
            ),
            (
                Error::FailedPrecondition,
                ContainerError::failed_precondition,
                PodError::failed_precondition,
                Code::FailedPrecondition,
            ),
            (
                Error::DeadlineExceeded,
                ContainerError::deadline_exceeded,
                PodError::deadline_exceeded,
                Code::DeadlineExceeded,
            ),
            (
                Error::Internal,
                ContainerError::internal,
                PodError::internal,
                Code::Internal,
            ),
        ];
        for (plain, container, pod, code) in kinds {
            let want = Status::from(plain("container \"c1\": x".into()));
            assert_eq!(want.code(), code);
            for s in [
                Status::from(container("container \"c1\": x".into())),
                Status::from(pod("container \"c1\": x".into())),
                Status::from(PodError::from(container("container \"c1\": x".into()))),
            ] {
                assert_eq!((s.code(), s.message()), (code, want.message()));
            }
        }
        assert_eq!(
            Status::from(Error::Internal("x".into())).message(),
            "internal error: x"
        );

        let errno = std::io::Error::from_raw_os_error;
        for (e, code) in [
            (libc::ENOSPC, Code::ResourceExhausted),
            (libc::ENOENT, Code::NotFound),
        ] {
            let want = Status::from(Error::io("writing /x", errno(e)));
            for s in [
                Status::from(ContainerError::io("writing /x", errno(e))),
                Status::from(PodError::io("writing /x", errno(e))),
            ] {
                assert_eq!((s.code(), s.message()), (code, want.message()));
            }
        }

        let cancelled = || async {
            let task = tokio::spawn(std::future::pending::<()>());
            task.abort();
            task.await.unwrap_err()
        };
        for s in [
            Status::from(Error::task("unpacking")(cancelled().await)),
            Status::from(ContainerError::task("unpacking")(cancelled().await)),
            Status::from(PodError::task("unpacking")(cancelled().await)),
        ] {
            assert_eq!(s.code(), Code::Internal);
            assert!(
                s.message().starts_with("unpacking task: ") && s.message().ends_with("cancelled"),
                "{}",
                s.message()
            );
        }
    }

    fn native_network(source: NativeError) -> Status {
        PodError::NativeNetwork {
            id: "p1".into(),
            source,
        }
        .into()
    }

    fn runtime_core(source: berth_runtime_core::ContainerError) -> Status {
        ContainerError::RuntimeCore {
            context: "creating container c1".into(),
            source,
        }
        .into()
    }

    fn cgroup_write(errno: i32) -> berth_runtime_core::cgroups::CgroupError {
        berth_runtime_core::cgroups::CgroupError::Write {
            path: "/sys/fs/cgroup/k/memory.max".into(),
            value: "1".into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn the_cause_chain_survives_to_the_message() {
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

        // Three layers: the container step, the host call, the errno.
        let e = ContainerError::io(
            "creating container c1: mounting /a",
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        let s = Status::from(e);
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message()
                .starts_with("creating container c1: mounting /a: ")
                && s.message().ends_with("(EACCES)")
                && !s.message().contains("os error"),
            "{}",
            s.message()
        );

        // A pod error wrapping a CNI error wrapping an io error: each layer once.
        let e = PodError::Network {
            id: "p1".into(),
            source: crate::cni::exec::CniError::Spawn {
                command: "ADD",
                plugin: "bridge".into(),
                binary: "/opt/cni/bin/bridge".into(),
                source: std::io::Error::from_raw_os_error(libc::EMFILE),
            },
        };
        let s = Status::from(e);
        assert_eq!(
            s.message(),
            "pod sandbox p1: pod network: CNI ADD of plugin \"bridge\": cannot run \
             /opt/cni/bin/bridge: Too many open files (EMFILE)"
        );
    }

    #[test]
    fn errnos_are_named_in_the_message() {
        let s = Status::from(Error::io(
            "mounting /x",
            std::io::Error::from_raw_os_error(libc::EPERM),
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(
            s.message().starts_with("mounting /x: ")
                && s.message().ends_with("(EPERM)")
                && !s.message().contains("os error"),
            "{}",
            s.message()
        );
    }
}
