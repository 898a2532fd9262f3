//! The systemd cgroup driver's naming: kubelet gives a pod's cgroup parent as a slice
//! unit name (`kubepods-burstable-pod<uid>.slice`), which lives in the cgroup tree at
//! `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice` (each
//! `-` opens a nested slice), and each container is a scope unit `berth-<id>.scope`
//! inside it.
//!
//! Berth does not talk to systemd over D-Bus. Where systemd is not the init system
//! (no `/run/systemd/system`), the driver cannot work and berthd refuses pods with a
//! `FailedPrecondition` saying so (as runc/containerd and CRI-O fail when systemd is
//! absent), and warns at start-up.

use std::path::Path;

use crate::error::Error;

/// Where systemd, when it is the init system, says so (`sd_booted(3)`).
pub const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";
/// Container scope units are `<SCOPE_PREFIX>-<id>.scope`.
pub const SCOPE_PREFIX: &str = "berth";

/// A cgroup parent that is not a valid systemd slice name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    /// No `.slice` suffix.
    #[error("{0:?} is not a systemd slice name (it must end in \".slice\")")]
    NotASlice(String),
    /// A path was given where a unit name was expected.
    #[error(
        "{0:?} is a path; the systemd driver takes a slice unit name like kubepods-burstable-pod<uid>.slice"
    )]
    Path(String),
    /// A dash at either end, or two in a row: no parent slice could be named.
    #[error(
        "{0:?} is not a valid slice name: \"-\" separates parent slices and may not start, end or repeat"
    )]
    BadDash(String),
    /// Characters systemd does not allow in unit names.
    #[error(
        "{0:?} is not a valid slice name: only ASCII letters, digits and \":_.\\-\" are allowed"
    )]
    BadChar(String),
}

/// Whether systemd runs as the init system here.
pub fn systemd_running() -> bool {
    Path::new(SYSTEMD_RUNTIME_DIR).is_dir()
}

/// The message berthd gives when the systemd driver is configured without systemd.
pub fn needs_systemd_message() -> String {
    format!(
        "cgroup_driver = \"systemd\" needs systemd as the init system, but it is not running on this host \
         ({SYSTEMD_RUNTIME_DIR} is missing); set cgroup_driver = \"cgroupfs\" in berthd's config \
         and cgroupDriver: cgroupfs in kubelet's"
    )
}

/// The cgroup path of a slice unit: `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`;
/// the root slice `-.slice` is `/`.
pub fn expand_slice(slice: &str) -> Result<String, SliceError> {
    if slice.contains('/') {
        return Err(SliceError::Path(slice.to_owned()));
    }
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(SliceError::NotASlice(slice.to_owned()));
    };
    if stem == "-" {
        return Ok("/".to_owned());
    }
    if stem.is_empty() {
        return Err(SliceError::NotASlice(slice.to_owned()));
    }
    if !stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '\\'))
    {
        return Err(SliceError::BadChar(slice.to_owned()));
    }
    if stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err(SliceError::BadDash(slice.to_owned()));
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Ok(path)
}

/// RunPodSandbox's check of a pod's cgroup parent under the systemd driver:
/// `FailedPrecondition` when systemd is not running (whatever the parent), else
/// `InvalidArgument` when the parent is not a valid slice name.
pub fn validate_pod_slice(parent: &str, systemd_running: bool) -> Result<(), Error> {
    if !systemd_running {
        return Err(Error::FailedPrecondition(needs_systemd_message()));
    }
    if parent.is_empty() {
        return Ok(());
    }
    expand_slice(parent)
        .map(drop)
        .map_err(|e| Error::InvalidArgument(format!("linux.cgroup_parent: {e}")))
}

/// A container's scope unit name.
pub fn scope_name(id: &str) -> String {
    format!("{SCOPE_PREFIX}-{id}.scope")
}

/// A container's cgroup path under the systemd driver: its scope inside the pod's
/// slice (`system.slice` when the pod has no cgroup parent).
pub fn container_cgroup_path(pod_slice: &str, id: &str) -> Result<String, SliceError> {
    let slice = if pod_slice.is_empty() {
        "system.slice"
    } else {
        pod_slice
    };
    let mut path = expand_slice(slice)?;
    if !path.ends_with('/') {
        path.push('/');
    }
    path.push_str(&scope_name(id));
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_pod_slices_expand_to_nested_paths() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1234_5678.slice").expect("valid"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_5678.slice"
        );
        assert_eq!(
            expand_slice("kubepods-podabc.slice").expect("valid"),
            "/kubepods.slice/kubepods-podabc.slice"
        );
        assert_eq!(
            expand_slice("kubepods.slice").expect("valid"),
            "/kubepods.slice"
        );
        assert_eq!(expand_slice("-.slice").expect("root"), "/");
    }

    #[test]
    fn invalid_slice_names_are_refused() {
        for (bad, kind) in [
            ("-kubepods.slice", "dash"),
            ("kubepods-.slice", "dash"),
            ("kubepods--pod1.slice", "dash"),
            ("kubepods-pod1", "suffix"),
            ("kubepods-pod1.scope", "suffix"),
            (".slice", "suffix"),
            ("", "suffix"),
            ("/kubepods.slice/kubepods-pod1.slice", "path"),
            ("kube pods.slice", "char"),
        ] {
            let e = expand_slice(bad).expect_err(bad);
            let ok = match kind {
                "dash" => matches!(e, SliceError::BadDash(_)),
                "suffix" => matches!(e, SliceError::NotASlice(_)),
                "path" => matches!(e, SliceError::Path(_)),
                _ => matches!(e, SliceError::BadChar(_)),
            };
            assert!(ok, "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn containers_are_scopes_in_the_pod_slice() {
        assert_eq!(
            container_cgroup_path("kubepods-besteffort-podu1.slice", "abc").expect("valid"),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podu1.slice/berth-abc.scope"
        );
        assert_eq!(
            container_cgroup_path("", "abc").expect("valid"),
            "/system.slice/berth-abc.scope"
        );
        assert_eq!(
            container_cgroup_path("-.slice", "abc").expect("valid"),
            "/berth-abc.scope"
        );
        assert!(container_cgroup_path("a--b.slice", "abc").is_err());
    }

    #[test]
    fn pods_need_systemd_then_a_valid_slice() {
        let e = validate_pod_slice("kubepods-pod1.slice", false).expect_err("no systemd");
        assert!(
            matches!(&e, Error::FailedPrecondition(m) if m.contains("needs systemd")),
            "{e}"
        );
        let e = validate_pod_slice("", false).expect_err("no systemd, no parent");
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        validate_pod_slice("kubepods-pod1.slice", true).expect("valid");
        validate_pod_slice("", true).expect("no parent");
        let e = validate_pod_slice("/kubepods/pod1", true).expect_err("a path");
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("linux.cgroup_parent")),
            "{e}"
        );
        let e = validate_pod_slice("kubepods--pod1.slice", true).expect_err("--");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn the_message_names_the_fix() {
        let m = needs_systemd_message();
        assert!(m.contains("needs systemd"), "{m}");
        assert!(m.contains(SYSTEMD_RUNTIME_DIR), "{m}");
        assert!(m.contains("cgroup_driver = \"cgroupfs\""), "{m}");
    }
}
