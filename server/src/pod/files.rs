//! Files every container of a pod shares: `/etc/resolv.conf`, `/etc/hosts`,
//! `/etc/hostname`, and the pod's `/dev/shm`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use berth_proto::v1::DnsConfig;

/// Size of a pod's /dev/shm, as Docker and containerd default it.
const SHM_SIZE: &str = "size=65536k";

/// The pod's resolv.conf: from kubelet's DNS config, else the host's.
pub fn resolv_conf(dns: Option<&DnsConfig>) -> io::Result<String> {
    let Some(dns) =
        dns.filter(|d| !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()))
    else {
        return match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        };
    };
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Ok(out)
}

/// The pod's /etc/hosts: loopback names, then the pod's IPs with its hostname.
pub fn hosts(hostname: &str, ips: &[String]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        for ip in ips {
            out.push_str(&format!("{ip}\t{hostname}\n"));
        }
    }
    out
}

/// Mounts a fresh tmpfs for the pod's /dev/shm at `dir`.
pub fn mount_shm(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let data = CString::new(format!("mode=1777,{SHM_SIZE}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: every pointer is a valid NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_kubelet_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.10.10.10".into()],
            searches: vec!["google.com".into()],
            options: vec!["ndots:8".into()],
        };
        let text = resolv_conf(Some(&dns)).expect("resolv.conf");
        assert_eq!(
            text,
            "search google.com\nnameserver 10.10.10.10\noptions ndots:8\n"
        );
    }

    #[test]
    fn hosts_names_the_pod_ip() {
        let h = hosts("web-0", &["10.88.0.7".into()]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.7\tweb-0\n"));
    }
}
