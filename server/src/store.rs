//! Durable records: each written atomically (temp file → fsync → rename → fsync of
//! the directory), so a crash at any instant leaves either the old or the new record,
//! never a torn one. berthd rebuilds its in-memory index from these at start-up.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Writes `data` to `path` atomically and durably (mode 0600: records hold the
/// container's environment, secrets included). The one implementation is shared with
/// runtime-core, the monitor and the image store.
pub use berth_durable::write_atomic;

/// Mode of a directory only root may enter (a container's or a pod's own).
pub const PRIVATE_DIR: u32 = 0o700;
/// Mode of a directory others may pass through but not list: on the path to
/// something a process in a user namespace (host uid not 0) must still reach.
pub const TRAVERSE_ONLY_DIR: u32 = 0o711;

/// Creates `dir` (and missing parents, these with `mode` too) and sets `mode` on it
/// whatever the umask and whatever mode an older berthd left it with. A symlink or
/// non-directory at `dir` is refused.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates (or fixes) the own directory of a container or pod: root's alone
/// (0700), or, for one in a user namespace whose root is host gid `userns_root_gid`,
/// 0710 with that group, so that its set-up, running as that uid/gid, can still pass
/// through to its rootfs, bundle and files, and nobody else can.
pub fn ensure_owned_dir(dir: &Path, userns_root_gid: Option<u32>) -> io::Result<()> {
    ensure_dir(dir, PRIVATE_DIR)?;
    if let Some(gid) = userns_root_gid {
        std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
        ensure_dir(dir, 0o710)?;
    }
    Ok(())
}

/// Sets `mode` on `path` if it exists and is not a symlink (chmod follows links).
/// For start-up repairs of what older berthds created world-readable.
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(()),
        Ok(m) if m.permissions().mode() & 0o7777 == mode => Ok(()),
        Ok(_) => fs::set_permissions(path, fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// How long [`remove_dir_all_eventually`] keeps retrying.
const REMOVE_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes `dir` and everything below it. The rollback of a call that failed because
/// berthd ran out of fds runs out of them too (`privileged_fd_limit` found the
/// records of such pods and containers left behind); so when removal fails with
/// EMFILE/ENFILE it is retried in the background every second, for ten minutes,
/// until fds are free again. `what` names the owner in warnings. A missing `dir` is
/// not an error.
pub fn remove_dir_all_eventually(dir: PathBuf, what: String) {
    let out_of_fds = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) if out_of_fds(&e) => {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                tracing::warn!(%what, dir = %dir.display(), error = %e, "could not remove");
                return;
            };
            tracing::warn!(%what, dir = %dir.display(), error = %e, "out of fds; removing it once fds are free");
            rt.spawn(async move {
                let deadline = std::time::Instant::now() + REMOVE_RETRY_FOR;
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    match fs::remove_dir_all(&dir) {
                        Ok(()) => return,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                        Err(e) if out_of_fds(&e) && std::time::Instant::now() < deadline => {}
                        Err(e) => {
                            tracing::warn!(%what, dir = %dir.display(), error = %e, "could not remove");
                            return;
                        }
                    }
                }
            });
        }
        Err(e) => tracing::warn!(%what, dir = %dir.display(), error = %e, "could not remove"),
    }
}

/// Subdirectories of `dir` (one per record), skipping anything else. A missing `dir`
/// is an empty store.
pub fn record_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// A fresh object id: 64 hex characters from the kernel's CSPRNG, as containerd's.
pub fn new_id() -> io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Looks an object up by full id or unique id prefix (crictl abbreviates ids), in an
/// index keyed by id. `field` names the request field for the "required" error and
/// `what` the kind of object for the "ambiguous" one.
pub fn find_by_id_or_prefix<T>(
    index: &std::collections::HashMap<String, std::sync::Arc<T>>,
    id: &str,
    field: &str,
    what: &str,
) -> crate::error::Result<Option<std::sync::Arc<T>>> {
    use crate::error::Error;
    if id.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    if let Some(found) = index.get(id) {
        return Ok(Some(std::sync::Arc::clone(found)));
    }
    let mut found = index
        .iter()
        .filter(|(key, _)| key.starts_with(id))
        .map(|(_, v)| v);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(Some(std::sync::Arc::clone(one))),
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(Error::InvalidArgument(format!(
            "{what} id prefix {id:?} is ambiguous"
        ))),
    }
}

/// The in-memory index of one kind of record (pods, containers): id → record, plus
/// the reserved names → id. Both locks shrug off poisoning (a panicking request must
/// not take the index down with it). `field` names the request field and `kind` the
/// object in the errors of [`Self::find`] and [`Self::get`].
#[derive(Debug)]
pub struct Records<T> {
    by_id: RwLock<HashMap<String, Arc<T>>>,
    names: Mutex<HashMap<String, String>>,
    field: &'static str,
    kind: &'static str,
}

impl<T> Records<T> {
    /// An empty index; `field` is e.g. `"pod_sandbox_id"`, `kind` e.g. `"pod sandbox"`.
    pub fn new(field: &'static str, kind: &'static str) -> Self {
        Self {
            by_id: RwLock::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            field,
            kind,
        }
    }

    /// The records by id, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<T>>> {
        self.by_id.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records by id, for inserting and removing.
    pub fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<T>>> {
        self.by_id.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The reserved names → id.
    pub fn names(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves the unique `name` for record `id`. If another record holds it, its id
    /// is the error (the caller says which kind of name it was).
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<(), String> {
        let mut names = self.names();
        if let Some(holder) = names.get(name) {
            return Err(holder.clone());
        }
        names.insert(name.to_owned(), id.to_owned());
        Ok(())
    }

    /// By full id or unique id prefix (as crictl abbreviates them).
    pub fn find(&self, id: &str) -> crate::error::Result<Option<Arc<T>>> {
        find_by_id_or_prefix(&self.read(), id, self.field, self.kind)
    }

    /// Like [`Self::find`], but a missing record is `NotFound`.
    pub fn get(&self, id: &str) -> crate::error::Result<Arc<T>> {
        let kind = self.kind;
        self.find(id)?
            .ok_or_else(|| crate::error::Error::NotFound(format!("{kind} {id:?} not found")))
    }
}

/// Writes the record of a container or pod (`kind`) into its own directory `dir`, as
/// `record.json`, atomically and durably.
pub fn write_record(
    dir: &Path,
    record: &impl serde::Serialize,
    kind: &str,
) -> crate::error::Result<()> {
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| crate::error::Error::Internal(format!("encoding {kind} record: {e}")))?;
    write_atomic(&dir.join("record.json"), &bytes)
        .map_err(|e| crate::error::Error::io(format!("persisting the {kind} record"), e))
}

/// Reads back what the directory `dir` of a container or pod holds: its record
/// (`record.json`) and the CRI config it was created with (`config.pb`). The error
/// names the file that could not be read or decoded.
pub fn read_record<R, C>(dir: &Path) -> Result<(R, C), String>
where
    R: serde::de::DeserializeOwned,
    C: prost::Message + Default,
{
    let read = |name: &str| fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let record =
        serde_json::from_slice(&read("record.json")?).map_err(|e| format!("record.json: {e}"))?;
    let config = C::decode(read("config.pb")?.as_slice()).map_err(|e| format!("config.pb: {e}"))?;
    Ok((record, config))
}

/// The mutable state of one record (a container's, a sandbox's) behind a lock that,
/// like [`Records`], shrugs off poisoning: a request that panicked while holding it
/// must not make the record unreadable for every later one.
#[derive(Debug)]
pub struct StateCell<S>(Mutex<S>);

impl<S: Clone> StateCell<S> {
    /// A cell holding `state`.
    pub fn new(state: S) -> Self {
        Self(Mutex::new(state))
    }

    /// A copy of the current state.
    pub fn get(&self) -> S {
        self.lock().clone()
    }

    /// Reads part of the state without copying the rest.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the state in place; `f`'s result is returned, read under the same lock.
    pub fn update<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `id` is safe to use as a path component (ids come from clients).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_dir_fixes_the_mode_of_an_existing_dir_and_refuses_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("containers");
        fs::create_dir(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        ensure_dir(&dir, PRIVATE_DIR).expect("ensure");
        let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{mode:o}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        assert!(ensure_dir(&link, PRIVATE_DIR).is_err());
    }

    #[test]
    fn ids_are_unique_hex_and_valid() {
        let a = new_id().expect("id");
        let b = new_id().expect("id");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(is_valid_id(&a));
        for bad in ["", "../x", "a/b", "a b", "."] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn ids_resolve_in_full_or_by_unique_prefix() {
        use std::collections::HashMap;
        use std::sync::Arc;
        let index: HashMap<String, Arc<u8>> =
            HashMap::from([("abc1".into(), Arc::new(1)), ("abd2".into(), Arc::new(2))]);
        let find = |id| find_by_id_or_prefix(&index, id, "pod_sandbox_id", "pod sandbox");
        assert_eq!(find("abc1").expect("full").as_deref(), Some(&1));
        assert_eq!(find("abd").expect("prefix").as_deref(), Some(&2));
        assert!(find("zz").expect("missing").is_none());
        let e = find("ab").expect_err("ambiguous").to_string();
        assert!(
            e.contains("pod sandbox id prefix \"ab\" is ambiguous"),
            "{e}"
        );
        let e = find("").expect_err("empty").to_string();
        assert_eq!(e, "pod_sandbox_id is required");
    }

    #[test]
    fn records_find_get_and_reserve_names() {
        let records: Records<u8> = Records::new("container_id", "container");
        records
            .write()
            .insert("abc1".into(), std::sync::Arc::new(7));
        records.reserve_name("web", "abc1").expect("a free name");
        assert_eq!(records.reserve_name("web", "xyz9"), Err("abc1".to_owned()));
        assert_eq!(records.get("abc").expect("prefix").as_ref(), &7);
        assert!(records.find("zz").expect("missing").is_none());
        let e = records.get("zz").expect_err("missing");
        assert!(matches!(e, crate::error::Error::NotFound(_)), "{e:?}");
        assert_eq!(e.to_string(), "container \"zz\" not found");
        let e = records.find("").expect_err("empty").to_string();
        assert_eq!(e, "container_id is required");
        assert_eq!(records.names().get("web").map(String::as_str), Some("abc1"));
        assert_eq!(records.read().len(), 1);
    }

    #[test]
    fn missing_store_is_empty() {
        assert!(
            record_dirs(Path::new("/nonexistent/berth"))
                .expect("ok")
                .is_empty()
        );
    }
}
