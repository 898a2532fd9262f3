//! One typed reading of a cgroup's statistics, v1 or v2 (modelled on youki's
//! `libcgroups::stats`): what the CRI container and pod stats and the cadvisor-style
//! metrics all derive from, so each number is read and computed in one place.
//!
//! Every field is optional: `None` means the file (or the key in it) is absent on this
//! host — a controller not mounted, a kernel too old, pressure stall information
//! turned off — never a made-up 0. Limits read as [`UNLIMITED`] when the cgroup sets
//! none (v2 `max`, v1's page-rounded `LLONG_MAX`). Times are nanoseconds, except the
//! pressure totals, which the kernel keeps in microseconds.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::Version;

/// A limit that is not set.
pub const UNLIMITED: u64 = u64::MAX;

/// How much of a cgroup to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The few files [`super::Stats`] needs (CPU usage, memory usage and working set,
    /// OOM kills, tasks), which `ListContainerStats` reads for every container: the
    /// other fields are left `None`, unread.
    Usage,
    /// Every file (the metrics).
    Full,
}

/// Everything Berth reads from one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    pub pressure: PressureStats,
    /// One entry per huge page size that has usage files, sorted by size name.
    pub hugetlb: Vec<HugetlbStats>,
}

/// CPU time and the CFS settings and throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Total CPU time (v1 `cpuacct.usage`, v2 `cpu.stat usage_usec`).
    pub usage_ns: Option<u64>,
    /// User time (v1 `cpuacct.usage_user`, else `cpuacct.stat` ticks; v2 `user_usec`).
    pub user_ns: Option<u64>,
    /// System time, likewise.
    pub system_ns: Option<u64>,
    /// Elapsed CFS enforcement periods.
    pub periods: Option<u64>,
    /// Periods in which the cgroup was throttled.
    pub throttled_periods: Option<u64>,
    /// Time throttled.
    pub throttled_ns: Option<u64>,
    /// CFS period (µs).
    pub period_us: Option<u64>,
    /// CFS quota (µs); `None` also when unlimited (v1 `-1`, v2 `max`).
    pub quota_us: Option<u64>,
    /// CPU shares (v2: converted back from `cpu.weight`, see [`weight_to_shares`]).
    pub shares: Option<u64>,
}

/// Memory use, its limits and the events of hitting them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in use, page cache included (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub usage: Option<u64>,
    /// Highest usage recorded (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub max_usage: Option<u64>,
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache: Option<u64>,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss: Option<u64>,
    /// Memory-mapped files (v1 `total_mapped_file`, v2 `file_mapped`).
    pub mapped_file: Option<u64>,
    /// Inactive page cache (v1 `total_inactive_file`, v2 `inactive_file`).
    pub inactive_file: Option<u64>,
    /// Kernel memory (v1 `memory.kmem.usage_in_bytes`; v2 `kernel`, or the parts it
    /// sums before Linux 5.18).
    pub kernel: Option<u64>,
    /// Swap in use (v1 memsw usage minus usage, else `total_swap`; v2 `memory.swap.current`).
    pub swap: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events max`).
    pub failcnt: Option<u64>,
    /// Processes the OOM killer killed (v1 `memory.oom_control`, v2 `memory.events`).
    pub oom_kills: Option<u64>,
    /// Page faults of this cgroup's own tasks.
    pub faults: PageFaults,
    /// Page faults of the whole subtree (v2 counts hierarchically: the same numbers).
    pub hierarchy_faults: PageFaults,
    /// Hard limit (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub limit: Option<u64>,
    /// Soft limit (v1 `memory.soft_limit_in_bytes`, v2 `memory.low`).
    pub reservation: Option<u64>,
    /// Swap limit (v1 `memory.memsw.limit_in_bytes`, v2 `memory.swap.max`).
    pub swap_limit: Option<u64>,
}

/// Minor and major page faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageFaults {
    pub pgfault: Option<u64>,
    pub pgmajfault: Option<u64>,
}

/// Tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsStats {
    /// `pids.current`.
    pub current: Option<u64>,
    /// `pids.max`.
    pub limit: Option<u64>,
}

/// A block device, `(major, minor)`.
pub type Device = (u32, u32);

/// Per device, per operation as v1 names them (`Read`, `Write`, `Sync`, `Total`...;
/// v2's `rbytes`/`wbytes`/`dbytes` become `Read`/`Write`/`Discard`), a count.
pub type DeviceCounts = BTreeMap<Device, BTreeMap<String, u64>>;

/// Block I/O (v1 `blkio.throttle.io_service*_recursive`, v2 `io.stat`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlkioStats {
    /// Bytes transferred.
    pub bytes: DeviceCounts,
    /// I/O operations completed.
    pub ios: DeviceCounts,
}

/// Pressure stall information: in every v2 cgroup; in v1 only with `psi=1` and the
/// cgroup1 PSI boot option, under `cpuacct`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PressureStats {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// The cumulative stall totals of one `*.pressure` file (µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// Time some tasks were stalled.
    pub some_total_us: Option<u64>,
    /// Time all non-idle tasks were stalled.
    pub full_total_us: Option<u64>,
}

/// Huge page usage of one page size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HugetlbStats {
    /// As the file names spell it (`2MB`, `1GB`).
    pub pagesize: String,
    /// v1 `usage_in_bytes`, v2 `current`.
    pub usage: Option<u64>,
    /// v1 `max_usage_in_bytes`; v2 keeps no maximum.
    pub max_usage: Option<u64>,
}

impl MemoryStats {
    /// Usage minus inactive page cache, as kubelet and cadvisor compute the working
    /// set: the one place Berth computes it.
    pub fn working_set(&self) -> Option<u64> {
        self.usage
            .map(|u| u.saturating_sub(self.inactive_file.unwrap_or(0)))
    }
}

/// The inverse of the cgroup v2 shares→weight mapping runc and crun use
/// ([`super::shares_to_weight`]).
pub fn weight_to_shares(weight: u64) -> u64 {
    if weight == 0 {
        return 0;
    }
    2 + (weight - 1) * 262_142 / 9_999
}

/// Reads the files of one cgroup (v1: one directory per controller).
pub(super) struct Files<'a> {
    pub detail: Detail,
    pub version: Version,
    pub root: &'a Path,
    pub rel: &'a Path,
}

impl Files<'_> {
    fn dir(&self, controller: &str) -> PathBuf {
        match self.version {
            Version::V1 => self.root.join(controller).join(self.rel),
            Version::V2 => self.root.join(self.rel),
        }
    }

    fn text(&self, controller: &str, file: &str) -> Option<String> {
        fs::read_to_string(self.dir(controller).join(file)).ok()
    }

    fn u64(&self, controller: &str, file: &str) -> Option<u64> {
        self.text(controller, file)?.trim().parse().ok()
    }

    fn limit(&self, controller: &str, file: &str) -> Option<u64> {
        parse_limit(&self.text(controller, file)?)
    }

    /// The one reading of the cgroup.
    pub fn read(&self) -> CgroupStats {
        let mut s = match self.version {
            Version::V1 => self.read_v1(),
            Version::V2 => self.read_v2(),
        };
        s.pids.current = self.u64("pids", "pids.current");
        if self.detail == Detail::Usage {
            return s;
        }
        let pressure = |res: &str| {
            self.text("cpuacct", &format!("{res}.pressure"))
                .map(|t| parse_pressure(&t))
        };
        s.pressure = PressureStats {
            cpu: pressure("cpu"),
            memory: pressure("memory"),
            io: pressure("io"),
        };
        s.pids.limit = self.limit("pids", "pids.max");
        s.hugetlb = self.read_hugetlb();
        s
    }

    fn read_v1(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        s.cpu.usage_ns = self.u64("cpuacct", "cpuacct.usage");
        let stat = self.text("memory", "memory.stat").unwrap_or_default();
        let m = &mut s.memory;
        m.usage = self.u64("memory", "memory.usage_in_bytes");
        m.inactive_file = keyed(&stat, "total_inactive_file");
        m.cache = keyed(&stat, "total_cache");
        m.rss = keyed(&stat, "total_rss");
        m.mapped_file = keyed(&stat, "total_mapped_file");
        m.faults = PageFaults {
            pgfault: keyed(&stat, "pgfault"),
            pgmajfault: keyed(&stat, "pgmajfault"),
        };
        m.hierarchy_faults = PageFaults {
            pgfault: keyed(&stat, "total_pgfault"),
            pgmajfault: keyed(&stat, "total_pgmajfault"),
        };
        m.oom_kills = self
            .text("memory", "memory.oom_control")
            .and_then(|t| keyed(&t, "oom_kill"));
        if self.detail == Detail::Usage {
            return s;
        }

        let c = &mut s.cpu;
        (c.user_ns, c.system_ns) = match (
            self.u64("cpuacct", "cpuacct.usage_user"),
            self.u64("cpuacct", "cpuacct.usage_sys"),
        ) {
            (Some(u), Some(s)) => (Some(u), Some(s)),
            _ => {
                // Older kernels: cpuacct.stat in USER_HZ ticks.
                let stat = self.text("cpuacct", "cpuacct.stat").unwrap_or_default();
                let tick_ns = 1_000_000_000 / clock_ticks();
                (
                    keyed(&stat, "user").map(|t| t * tick_ns),
                    keyed(&stat, "system").map(|t| t * tick_ns),
                )
            }
        };
        if let Some(stat) = self.text("cpu", "cpu.stat") {
            c.periods = keyed(&stat, "nr_periods");
            c.throttled_periods = keyed(&stat, "nr_throttled");
            c.throttled_ns = keyed(&stat, "throttled_time");
        }
        c.period_us = self.u64("cpu", "cpu.cfs_period_us");
        // -1 is "no quota", which does not parse as a u64.
        c.quota_us = self.u64("cpu", "cpu.cfs_quota_us");
        c.shares = self.u64("cpu", "cpu.shares");

        let m = &mut s.memory;
        // Swap: memory+swap usage minus memory usage (needs swap accounting).
        m.swap = match (self.u64("memory", "memory.memsw.usage_in_bytes"), m.usage) {
            (Some(memsw), Some(u)) => Some(memsw.saturating_sub(u)),
            _ => keyed(&stat, "total_swap"),
        };
        m.max_usage = self.u64("memory", "memory.max_usage_in_bytes");
        m.failcnt = self.u64("memory", "memory.failcnt");
        m.kernel = self.u64("memory", "memory.kmem.usage_in_bytes");
        m.limit = self.limit("memory", "memory.limit_in_bytes");
        m.reservation = self.limit("memory", "memory.soft_limit_in_bytes");
        m.swap_limit = self.limit("memory", "memory.memsw.limit_in_bytes");

        let blkio = |file| self.text("blkio", file).unwrap_or_default();
        s.blkio = BlkioStats {
            bytes: parse_blkio_v1(&blkio("blkio.throttle.io_service_bytes_recursive")),
            ios: parse_blkio_v1(&blkio("blkio.throttle.io_serviced_recursive")),
        };
        s
    }

    fn read_v2(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        let c = &mut s.cpu;
        if let Some(stat) = self.text("cpu", "cpu.stat") {
            let ns = |key| keyed(&stat, key).map(|us| us.saturating_mul(1000));
            c.usage_ns = ns("usage_usec");
            c.user_ns = ns("user_usec");
            c.system_ns = ns("system_usec");
            c.throttled_ns = ns("throttled_usec");
            c.periods = keyed(&stat, "nr_periods");
            c.throttled_periods = keyed(&stat, "nr_throttled");
        }

        let stat = self.text("memory", "memory.stat").unwrap_or_default();
        let m = &mut s.memory;
        m.usage = self.u64("memory", "memory.current");
        m.inactive_file = keyed(&stat, "inactive_file");
        m.cache = keyed(&stat, "file");
        m.rss = keyed(&stat, "anon");
        m.mapped_file = keyed(&stat, "file_mapped");
        // "kernel" exists since Linux 5.18; before, the parts it sums.
        m.kernel = keyed(&stat, "kernel").or_else(|| {
            let parts: Vec<u64> = ["kernel_stack", "pagetables", "percpu", "sock", "slab"]
                .iter()
                .filter_map(|k| keyed(&stat, k))
                .collect();
            (!parts.is_empty()).then(|| parts.iter().sum())
        });
        // v2 memory.stat is hierarchical: both scopes are the same counters.
        m.faults = PageFaults {
            pgfault: keyed(&stat, "pgfault"),
            pgmajfault: keyed(&stat, "pgmajfault"),
        };
        m.hierarchy_faults = m.faults;
        if let Some(ev) = self.text("memory", "memory.events") {
            m.failcnt = keyed(&ev, "max");
            m.oom_kills = keyed(&ev, "oom_kill");
        }
        if self.detail == Detail::Usage {
            return s;
        }

        m.swap = self.u64("memory", "memory.swap.current");
        m.max_usage = self.u64("memory", "memory.peak");
        m.limit = self.limit("memory", "memory.max");
        m.reservation = self.limit("memory", "memory.low");
        m.swap_limit = self.limit("memory", "memory.swap.max");

        let c = &mut s.cpu;
        if let Some(max) = self.text("cpu", "cpu.max") {
            let mut parts = max.split_whitespace();
            c.quota_us = parts.next().and_then(|q| q.parse().ok());
            c.period_us = parts.next().and_then(|p| p.parse().ok());
        }
        c.shares = self.u64("cpu", "cpu.weight").map(weight_to_shares);

        let (bytes, ios) = parse_io_stat_v2(&self.text("io", "io.stat").unwrap_or_default());
        s.blkio = BlkioStats { bytes, ios };
        s
    }

    /// `hugetlb.<size>.usage_in_bytes` / `max_usage_in_bytes` (v1) or
    /// `hugetlb.<size>.current` (v2).
    fn read_hugetlb(&self) -> Vec<HugetlbStats> {
        let dir = self.dir("hugetlb");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut by_size: BTreeMap<String, HugetlbStats> = BTreeMap::new();
        for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
            let Some((size, file)) = name
                .strip_prefix("hugetlb.")
                .and_then(|r| r.split_once('.'))
            else {
                continue;
            };
            let max = match (self.version, file) {
                (Version::V1, "usage_in_bytes") | (Version::V2, "current") => false,
                (Version::V1, "max_usage_in_bytes") => true,
                _ => continue,
            };
            let Some(v) = fs::read_to_string(dir.join(&name))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            else {
                continue;
            };
            let e = by_size
                .entry(size.to_owned())
                .or_insert_with(|| HugetlbStats {
                    pagesize: size.to_owned(),
                    ..HugetlbStats::default()
                });
            if max {
                e.max_usage = Some(v);
            } else {
                e.usage = Some(v);
            }
        }
        by_size.into_values().collect()
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf(3) only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Find `key value` in a flat-keyed file (memory.stat, cpu.stat, memory.events).
pub(super) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// "max", or v1's "no limit" (a page-rounded `LLONG_MAX`), reads as [`UNLIMITED`].
fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return Some(UNLIMITED);
    }
    let v: u64 = t.parse().ok()?;
    Some(if v >= 1 << 62 { UNLIMITED } else { v })
}

/// `some ... total=N` and `full ... total=N` of a `*.pressure` file (µs).
fn parse_pressure(text: &str) -> Pressure {
    let total = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("total="))?
            .parse()
            .ok()
    };
    Pressure {
        some_total_us: total("some "),
        full_total_us: total("full "),
    }
}

/// v1 `blkio.throttle.io_service_bytes_recursive` / `io_serviced_recursive`:
/// `8:0 Read 4096` lines and a closing `Total N`.
fn parse_blkio_v1(text: &str) -> DeviceCounts {
    let mut out = DeviceCounts::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, op, value] = f.as_slice() else {
            continue;
        };
        let (Some(dev), Ok(value)) = (parse_dev(dev), value.parse::<u64>()) else {
            continue;
        };
        out.entry(dev).or_default().insert((*op).to_owned(), value);
    }
    out
}

/// v2 `io.stat`: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6`, as bytes and
/// I/O counts per operation (named as v1 names them).
fn parse_io_stat_v2(text: &str) -> (DeviceCounts, DeviceCounts) {
    let mut bytes = DeviceCounts::new();
    let mut ios = DeviceCounts::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(dev) = f.next().and_then(parse_dev) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            let (map, op) = match k {
                "rbytes" => (&mut bytes, "Read"),
                "wbytes" => (&mut bytes, "Write"),
                "dbytes" => (&mut bytes, "Discard"),
                "rios" => (&mut ios, "Read"),
                "wios" => (&mut ios, "Write"),
                "dios" => (&mut ios, "Discard"),
                _ => continue,
            };
            map.entry(dev).or_default().insert(op.to_owned(), v);
        }
    }
    (bytes, ios)
}

fn parse_dev(s: &str) -> Option<Device> {
    let (ma, mi) = s.split_once(':')?;
    Some((ma.parse().ok()?, mi.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    fn read(version: Version, root: &Path, rel: &str) -> CgroupStats {
        Files {
            detail: Detail::Full,
            version,
            root,
            rel: Path::new(rel),
        }
        .read()
    }

    #[test]
    fn v1_tree_reads_into_every_field() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        let c = "kubepods/pod1/ctr";
        let w = |file: &str, text: &str| write(r, file, text);
        w(&format!("cpuacct/{c}/cpuacct.usage"), "3500000000\n");
        w(&format!("cpuacct/{c}/cpuacct.usage_user"), "2100000000\n");
        w(&format!("cpuacct/{c}/cpuacct.usage_sys"), "1400000000\n");
        w(
            &format!("cpu/{c}/cpu.stat"),
            "nr_periods 40\nnr_throttled 7\nthrottled_time 2500000000\n",
        );
        w(&format!("cpu/{c}/cpu.cfs_period_us"), "100000\n");
        w(&format!("cpu/{c}/cpu.cfs_quota_us"), "-1\n");
        w(&format!("cpu/{c}/cpu.shares"), "1024\n");
        w(
            &format!("memory/{c}/memory.stat"),
            "cache 1\nrss 2\ntotal_cache 4096\ntotal_rss 8192\ntotal_mapped_file 1024\n\
             total_inactive_file 2048\npgfault 10\npgmajfault 1\ntotal_pgfault 12\ntotal_pgmajfault 2\n",
        );
        w(&format!("memory/{c}/memory.usage_in_bytes"), "20480\n");
        w(
            &format!("memory/{c}/memory.memsw.usage_in_bytes"),
            "24576\n",
        );
        w(&format!("memory/{c}/memory.max_usage_in_bytes"), "30000\n");
        w(&format!("memory/{c}/memory.failcnt"), "3\n");
        w(&format!("memory/{c}/memory.kmem.usage_in_bytes"), "512\n");
        w(
            &format!("memory/{c}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        w(&format!("memory/{c}/memory.limit_in_bytes"), "67108864\n");
        w(
            &format!("memory/{c}/memory.soft_limit_in_bytes"),
            "9223372036854771712\n",
        );
        w(
            &format!("memory/{c}/memory.memsw.limit_in_bytes"),
            "67108864\n",
        );
        w(&format!("pids/{c}/pids.current"), "5\n");
        w(&format!("pids/{c}/pids.max"), "max\n");
        w(
            &format!("blkio/{c}/blkio.throttle.io_service_bytes_recursive"),
            "254:0 Read 8192\n254:0 Write 4096\n254:0 Sync 0\n254:0 Total 12288\nTotal 12288\n",
        );
        w(
            &format!("blkio/{c}/blkio.throttle.io_serviced_recursive"),
            "254:0 Read 2\n254:0 Write 1\nTotal 3\n",
        );
        w(&format!("hugetlb/{c}/hugetlb.2MB.usage_in_bytes"), "4096\n");
        w(
            &format!("hugetlb/{c}/hugetlb.2MB.max_usage_in_bytes"),
            "8192\n",
        );
        w(&format!("hugetlb/{c}/hugetlb.2MB.limit_in_bytes"), "0\n");
        let s = read(Version::V1, r, c);
        assert_eq!(
            s.cpu,
            CpuStats {
                usage_ns: Some(3_500_000_000),
                user_ns: Some(2_100_000_000),
                system_ns: Some(1_400_000_000),
                periods: Some(40),
                throttled_periods: Some(7),
                throttled_ns: Some(2_500_000_000),
                period_us: Some(100_000),
                quota_us: None,
                shares: Some(1024),
            }
        );
        let m = &s.memory;
        assert_eq!(m.usage, Some(20480));
        assert_eq!(m.working_set(), Some(18432));
        assert_eq!(
            (m.cache, m.rss, m.mapped_file),
            (Some(4096), Some(8192), Some(1024))
        );
        assert_eq!(m.swap, Some(4096), "memsw usage minus usage");
        assert_eq!(
            (m.max_usage, m.failcnt, m.kernel),
            (Some(30000), Some(3), Some(512))
        );
        assert_eq!(m.oom_kills, Some(2));
        assert_eq!(m.faults.pgfault, Some(10));
        assert_eq!(m.hierarchy_faults.pgmajfault, Some(2));
        assert_eq!(m.limit, Some(67_108_864));
        assert_eq!(m.reservation, Some(UNLIMITED), "page-rounded LLONG_MAX");
        assert_eq!(
            s.pids,
            PidsStats {
                current: Some(5),
                limit: Some(UNLIMITED)
            }
        );
        assert_eq!(s.blkio.bytes[&(254, 0)]["Read"], 8192);
        assert_eq!(
            s.blkio.bytes[&(254, 0)].len(),
            4,
            "Read, Write, Sync, Total"
        );
        assert_eq!(s.blkio.ios[&(254, 0)]["Write"], 1);
        assert_eq!(
            s.hugetlb,
            [HugetlbStats {
                pagesize: "2MB".into(),
                usage: Some(4096),
                max_usage: Some(8192)
            }]
        );
        // No pressure files in this tree: absent, not zero.
        assert_eq!(s.pressure, PressureStats::default());
    }

    #[test]
    fn v1_cpuacct_stat_ticks_when_usage_user_is_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(
            tmp.path(),
            "cpuacct/c/cpuacct.stat",
            "user 250\nsystem 100\n",
        );
        let s = read(Version::V1, tmp.path(), "c");
        let tick = 1_000_000_000 / clock_ticks();
        assert_eq!(s.cpu.user_ns, Some(250 * tick));
        assert_eq!(s.cpu.system_ns, Some(100 * tick));
        assert_eq!(s.cpu.usage_ns, None);
    }

    #[test]
    fn v2_tree_reads_into_every_field() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        let c = "kubepods.slice/ctr";
        let w = |file: &str, text: &str| write(r, &format!("{c}/{file}"), text);
        w(
            "cpu.stat",
            "usage_usec 4200000\nuser_usec 3100000\nsystem_usec 1100000\nnr_periods 9\n\
             nr_throttled 4\nthrottled_usec 1500000\n",
        );
        w("cpu.max", "20000 100000\n");
        w("cpu.weight", "100\n");
        w(
            "memory.stat",
            "anon 8192\nfile 4096\nkernel 700\nfile_mapped 1024\ninactive_file 1000\npgfault 33\npgmajfault 3\n",
        );
        w("memory.current", "16000\n");
        w("memory.peak", "17000\n");
        w("memory.swap.current", "0\n");
        w("memory.events", "low 0\nhigh 0\nmax 6\noom 1\noom_kill 1\n");
        w("memory.max", "max\n");
        w("memory.low", "1048576\n");
        w("memory.swap.max", "max\n");
        w("pids.current", "3\n");
        w("pids.max", "1024\n");
        w(
            "io.stat",
            "8:0 rbytes=1000 wbytes=2000 rios=10 wios=20 dbytes=0 dios=0\n",
        );
        w(
            "cpu.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=3000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n",
        );
        w(
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        w("hugetlb.2MB.current", "2097152\n");
        w("hugetlb.2MB.max", "max\n");
        w("hugetlb.2MB.rsvd.current", "0\n");
        let s = read(Version::V2, r, c);
        assert_eq!(
            s.cpu,
            CpuStats {
                usage_ns: Some(4_200_000_000),
                user_ns: Some(3_100_000_000),
                system_ns: Some(1_100_000_000),
                periods: Some(9),
                throttled_periods: Some(4),
                throttled_ns: Some(1_500_000_000),
                period_us: Some(100_000),
                quota_us: Some(20_000),
                shares: Some(2 + 99 * 262_142 / 9_999),
            }
        );
        let m = &s.memory;
        assert_eq!(m.working_set(), Some(15000));
        assert_eq!(
            (m.rss, m.cache, m.kernel),
            (Some(8192), Some(4096), Some(700))
        );
        assert_eq!((m.max_usage, m.swap), (Some(17000), Some(0)));
        assert_eq!((m.failcnt, m.oom_kills), (Some(6), Some(1)));
        assert_eq!(m.faults, m.hierarchy_faults, "v2 counts hierarchically");
        assert_eq!(m.faults.pgfault, Some(33));
        assert_eq!(m.limit, Some(UNLIMITED));
        assert_eq!(m.reservation, Some(1_048_576));
        assert_eq!(
            s.pids,
            PidsStats {
                current: Some(3),
                limit: Some(1024)
            }
        );
        assert_eq!(s.blkio.bytes[&(8, 0)]["Write"], 2000);
        assert_eq!(s.blkio.ios[&(8, 0)]["Read"], 10);
        assert_eq!(
            s.pressure.cpu,
            Some(Pressure {
                some_total_us: Some(3_000_000),
                full_total_us: Some(1_000_000)
            })
        );
        assert!(s.pressure.memory.is_some());
        assert_eq!(s.pressure.io, None);
        assert_eq!(
            s.hugetlb,
            [HugetlbStats {
                pagesize: "2MB".into(),
                usage: Some(2_097_152),
                max_usage: None
            }],
            "v2 keeps no maximum; rsvd files are not usage"
        );
    }

    #[test]
    fn missing_files_read_as_absent_not_zero() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(tmp.path().join("c")).expect("mkdir");
        // Only memory.current: a host with just the memory controller delegated.
        write(tmp.path(), "c/memory.current", "4096\n");
        let s = read(Version::V2, tmp.path(), "c");
        assert_eq!(s.memory.usage, Some(4096));
        assert_eq!(
            s.memory.working_set(),
            Some(4096),
            "no stat: nothing inactive"
        );
        assert_eq!(s.cpu, CpuStats::default());
        assert_eq!(s.pids, PidsStats::default());
        assert_eq!(s.blkio, BlkioStats::default());
        assert!(s.hugetlb.is_empty());
        // A v1 host where the cgroup does not exist at all.
        let s = read(Version::V1, tmp.path(), "gone");
        assert_eq!(s, CgroupStats::default());
        assert_eq!(s.memory.working_set(), None);
        // Malformed content is absent too, never a panic.
        write(tmp.path(), "d/cpu.max", "garbage\n");
        write(tmp.path(), "d/memory.events", "max\noom_kill x\n");
        let s = read(Version::V2, tmp.path(), "d");
        assert_eq!((s.cpu.quota_us, s.cpu.period_us), (None, None));
        assert_eq!((s.memory.failcnt, s.memory.oom_kills), (None, None));
    }

    #[test]
    fn limits_and_weights_parse() {
        assert_eq!(parse_limit("max\n"), Some(UNLIMITED));
        assert_eq!(parse_limit("9223372036854771712"), Some(UNLIMITED));
        assert_eq!(parse_limit("1024"), Some(1024));
        assert_eq!(parse_limit("junk"), None);
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
    }

    /// `Usage` reads only what the small `Stats` needs, and that agrees with the full
    /// reading: container stats and metrics show the same working set.
    #[test]
    fn usage_reads_the_summary_files_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = tmp.path();
        let w = |file: &str, text: &str| write(r, &format!("c/{file}"), text);
        w("cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
        w("cpu.max", "max 100000\n");
        w("memory.current", "1000000\n");
        w("memory.stat", "anon 10\ninactive_file 250000\n");
        w("memory.events", "max 3\noom_kill 1\n");
        w("memory.max", "2000000\n");
        w("pids.current", "7\n");
        w("pids.max", "9\n");
        let files = |detail| {
            Files {
                detail,
                version: Version::V2,
                root: r,
                rel: Path::new("c"),
            }
            .read()
        };
        let (usage, full) = (files(Detail::Usage), files(Detail::Full));
        assert_eq!(usage.memory.working_set(), Some(750_000));
        assert_eq!(usage.memory.working_set(), full.memory.working_set());
        assert_eq!(
            (usage.cpu.usage_ns, usage.pids.current),
            (Some(1_500_000), Some(7))
        );
        assert_eq!(usage.memory.oom_kills, Some(1));
        assert_eq!(
            (usage.cpu.period_us, usage.memory.limit, usage.pids.limit),
            (None, None, None)
        );
        assert_eq!(
            (full.cpu.period_us, full.memory.limit, full.pids.limit),
            (Some(100_000), Some(2_000_000), Some(9))
        );
    }
}
