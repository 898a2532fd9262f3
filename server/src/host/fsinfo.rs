//! Filesystem usage for `ImageFsInfo` and container stats: bytes and inodes under a
//! directory, and the mount point of the filesystem that holds it (kubelet's image-fs
//! eviction uses both); [`UsageCache`] serves writable-layer usage seconds old.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime};

/// Usage of one directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated on disk (st_blocks × 512), hard links counted once.
    pub used_bytes: u64,
    /// Inodes: the directory itself and everything below it.
    pub inodes_used: u64,
}

/// Walks `dir` without following symlinks or crossing into other filesystems.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let root = std::fs::symlink_metadata(dir)?;
    let dev = root.dev();
    let mut seen_links = std::collections::HashSet::new();
    let mut total = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    add(&mut total, &root, &mut seen_links);
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Entries can vanish while we walk (a layer being removed): not an error.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != dev {
                continue;
            }
            add(&mut total, &meta, &mut seen_links);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

fn add(total: &mut Usage, meta: &std::fs::Metadata, seen: &mut std::collections::HashSet<u64>) {
    if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
        return;
    }
    total.used_bytes = total
        .used_bytes
        .saturating_add(meta.blocks().saturating_mul(512));
    total.inodes_used = total.inodes_used.saturating_add(1);
}

/// Writable-layer usage is served from this cache when it is younger than this: a
/// walk per container on every `ListContainerStats` made the call grow with the
/// number of containers times their files (kubelet polls every 10–15 s, and
/// cadvisor itself measures disk usage in the background, seconds old).
pub const USAGE_FRESH: Duration = Duration::from_secs(5);
/// The oldest usage ever served. Between [`USAGE_FRESH`] and this, the cached value
/// is answered and a background walk refreshes it; older than this (or never
/// measured), the caller walks the tree before answering.
pub const USAGE_MAX_AGE: Duration = Duration::from_secs(30);
/// The mount point of a directory is looked up again after this long: reading
/// /proc/self/mountinfo costs a line per mount, and berthd holds several per pod.
const MOUNTPOINT_MAX_AGE: Duration = Duration::from_secs(60);

/// `at` as nanoseconds since the Unix epoch (CRI timestamps).
pub fn nanos_since_epoch(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A usage and when it was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The usage.
    pub usage: Usage,
    /// When the walk that measured it started: the `timestamp` of CRI's
    /// `FilesystemUsage`, so a reader sees how old the figure is.
    pub at: SystemTime,
}

/// Directory usage measured at most [`USAGE_MAX_AGE`] ago, refreshed in the
/// background once older than [`USAGE_FRESH`]; and mount points, looked up once a
/// minute. Entries nobody asked about for a while (removed containers) are dropped.
#[derive(Debug)]
pub struct UsageCache {
    fresh: Duration,
    max_age: Duration,
    inner: Arc<Mutex<CacheState>>,
}

#[derive(Debug)]
struct CacheState {
    entries: HashMap<PathBuf, Entry>,
    mountpoints: HashMap<PathBuf, (Instant, PathBuf)>,
    /// Feeds the background refresher (started on first use).
    refresher: Option<mpsc::Sender<PathBuf>>,
    last_sweep: Instant,
}

#[derive(Debug)]
struct Entry {
    measured: Measured,
    /// When the walk started (monotonic), for the age checks.
    started: Instant,
    last_asked: Instant,
    refreshing: bool,
}

impl Default for UsageCache {
    fn default() -> Self {
        Self::new(USAGE_FRESH, USAGE_MAX_AGE)
    }
}

impl UsageCache {
    /// A cache serving usage younger than `fresh` as is, refreshing older entries in
    /// the background, and never serving usage older than `max_age`.
    pub fn new(fresh: Duration, max_age: Duration) -> Self {
        Self {
            fresh,
            max_age: max_age.max(fresh),
            inner: Arc::new(Mutex::new(CacheState {
                entries: HashMap::new(),
                mountpoints: HashMap::new(),
                refresher: None,
                last_sweep: Instant::now(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        lock(&self.inner)
    }

    /// The usage of `dir`, at most `max_age` old (blocking: may walk `dir`).
    pub fn usage(&self, dir: &Path) -> io::Result<Measured> {
        let now = Instant::now();
        {
            let mut st = self.lock();
            if now.duration_since(st.last_sweep) > self.max_age {
                let keep = self.max_age * 2;
                st.entries
                    .retain(|_, e| now.duration_since(e.last_asked) <= keep);
                st.last_sweep = now;
            }
            let mut kick = false;
            if let Some(e) = st.entries.get_mut(dir) {
                e.last_asked = now;
                let age = now.duration_since(e.started);
                if age < self.max_age {
                    if age >= self.fresh && !e.refreshing {
                        e.refreshing = true;
                        kick = true;
                    }
                    let measured = e.measured;
                    if kick {
                        self.refresh_later(&mut st, dir);
                    }
                    return Ok(measured);
                }
            }
        }
        let measured = measure(dir);
        let mut st = self.lock();
        match measured {
            Ok((m, started)) => {
                st.entries.insert(
                    dir.to_path_buf(),
                    Entry {
                        measured: m,
                        started,
                        last_asked: now,
                        refreshing: false,
                    },
                );
                Ok(m)
            }
            Err(e) => {
                st.entries.remove(dir);
                Err(e)
            }
        }
    }

    /// Forgets `dir` (its container is gone).
    pub fn forget(&self, dir: &Path) {
        self.lock().entries.remove(dir);
    }

    /// The mount point of the filesystem holding `path`, looked up at most once a
    /// minute.
    pub fn mountpoint(&self, path: &Path) -> io::Result<PathBuf> {
        let now = Instant::now();
        if let Some((at, m)) = self.lock().mountpoints.get(path)
            && now.duration_since(*at) < MOUNTPOINT_MAX_AGE
        {
            return Ok(m.clone());
        }
        let m = mountpoint_of(path)?;
        self.lock()
            .mountpoints
            .insert(path.to_path_buf(), (now, m.clone()));
        Ok(m)
    }

    /// Queues `dir` for the background refresher, starting it if needed.
    fn refresh_later(&self, st: &mut CacheState, dir: &Path) {
        let sent = st
            .refresher
            .as_ref()
            .is_some_and(|tx| tx.send(dir.to_path_buf()).is_ok());
        if sent {
            return;
        }
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("layer-usage".to_owned())
            .spawn(move || refresher(&weak, &rx));
        match spawned {
            Ok(_) => {
                // The receiver is alive: the thread owns it.
                let _ = tx.send(dir.to_path_buf());
                st.refresher = Some(tx);
            }
            Err(_) => {
                // No thread: the entry ages out and the next caller walks it.
                if let Some(e) = st.entries.get_mut(dir) {
                    e.refreshing = false;
                }
            }
        }
    }
}

fn lock(m: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Walks `dir`, returning the usage and when the walk started.
fn measure(dir: &Path) -> io::Result<(Measured, Instant)> {
    let started = Instant::now();
    let at = SystemTime::now();
    let usage = usage(dir)?;
    Ok((Measured { usage, at }, started))
}

/// The background refresher: walks the directories it is sent until the cache is
/// dropped (the sender goes with it).
fn refresher(cache: &Weak<Mutex<CacheState>>, rx: &mpsc::Receiver<PathBuf>) {
    while let Ok(dir) = rx.recv() {
        let measured = measure(&dir);
        let Some(inner) = cache.upgrade() else { return };
        let mut st = lock(&inner);
        match measured {
            Ok((m, started)) => {
                if let Some(e) = st.entries.get_mut(&dir) {
                    e.measured = m;
                    e.started = started;
                    e.refreshing = false;
                }
            }
            Err(_) => {
                st.entries.remove(&dir);
            }
        }
    }
}

/// The mount point of the filesystem holding `path`, from /proc/self/mountinfo.
pub fn mountpoint_of(path: &Path) -> io::Result<PathBuf> {
    let path = std::fs::canonicalize(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    berth_runtime_core::rootfs::containing_mount(&mountinfo, &path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no mount in /proc/self/mountinfo holds {}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_files_and_dirs() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("sub/f"), vec![7u8; 64 * 1024]).expect("write");
        let u = usage(d.path()).expect("usage");
        assert_eq!(u.inodes_used, 3, "root, sub, f");
        assert!(u.used_bytes >= 64 * 1024, "{u:?}");
    }

    #[test]
    fn cache_serves_fresh_usage_without_walking() {
        let d = tempfile::tempdir().expect("tempdir");
        let cache = UsageCache::new(Duration::from_secs(600), Duration::from_secs(600));
        let first = cache.usage(d.path()).expect("usage");
        std::fs::write(d.path().join("f"), vec![7u8; 64 * 1024]).expect("write");
        assert_eq!(
            cache.usage(d.path()).expect("usage"),
            first,
            "served from cache"
        );
        cache.forget(d.path());
        let walked = cache.usage(d.path()).expect("usage");
        assert_eq!(walked.usage.inodes_used, first.usage.inodes_used + 1);
        assert!(walked.at >= first.at);
    }

    #[test]
    fn cache_never_serves_usage_older_than_max_age() {
        let d = tempfile::tempdir().expect("tempdir");
        let cache = UsageCache::new(Duration::ZERO, Duration::ZERO);
        let first = cache.usage(d.path()).expect("usage");
        std::fs::write(d.path().join("f"), vec![7u8; 64 * 1024]).expect("write");
        let second = cache.usage(d.path()).expect("usage");
        assert!(second.usage.used_bytes >= first.usage.used_bytes + 64 * 1024);
    }

    #[test]
    fn stale_usage_is_refreshed_in_the_background() {
        let d = tempfile::tempdir().expect("tempdir");
        let cache = UsageCache::new(Duration::from_millis(1), Duration::from_secs(600));
        let first = cache.usage(d.path()).expect("usage");
        std::fs::write(d.path().join("f"), vec![7u8; 64 * 1024]).expect("write");
        std::thread::sleep(Duration::from_millis(5));
        // Stale but within max_age: the old figure now, a new one soon after.
        assert_eq!(cache.usage(d.path()).expect("usage"), first);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = cache.usage(d.path()).expect("usage");
            if now.usage.inodes_used == first.usage.inodes_used + 1 {
                assert!(now.at > first.at, "the refreshed figure is newer");
                break;
            }
            assert!(Instant::now() < deadline, "never refreshed: {now:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn cache_reports_a_missing_dir_and_keeps_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let cache = UsageCache::default();
        let gone = d.path().join("gone");
        assert!(cache.usage(&gone).is_err());
        std::fs::create_dir(&gone).expect("mkdir");
        assert_eq!(cache.usage(&gone).expect("usage").usage.inodes_used, 1);
        assert_eq!(
            cache.mountpoint(Path::new("/")).expect("mountpoint"),
            PathBuf::from("/")
        );
    }

    #[test]
    fn hard_links_are_counted_once() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("a"), vec![1u8; 32 * 1024]).expect("write");
        let one = usage(d.path()).expect("usage");
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).expect("link");
        assert_eq!(usage(d.path()).expect("usage"), one);
    }

    #[test]
    fn mountpoint_of_root_is_root() {
        assert_eq!(
            mountpoint_of(Path::new("/")).expect("mount"),
            PathBuf::from("/")
        );
    }
}
