//! A small rtnetlink client: just the link, address and route requests the native
//! built-in network needs (bridge, veth pair, addresses, default route, link up/down).
//!
//! Requests are built as byte buffers ([`Request`]) so their layout can be unit-tested
//! without privileges; [`Socket`] sends one at a time and waits for the kernel's ack.
//! A socket talks to the network namespace it was opened in, whatever namespace the
//! calling thread is in later.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;

const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_PROTINFO: u16 = 12;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_MODE: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;

const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_BRIDGE: u8 = 7;
const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, or send/recv failed.
    #[error("netlink socket: {0}")]
    Io(#[source] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Kernel {
        /// What the request was for.
        what: String,
        /// The errno the kernel answered with.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("netlink: malformed answer to {0}")]
    Malformed(String),
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One netlink request, built attribute by attribute.
#[derive(Debug, Clone)]
pub struct Request {
    buf: Vec<u8>,
    what: String,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Request {
    fn new(kind: u16, flags: u16, header: &[u8], what: String) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(header);
        buf.resize(align4(buf.len()), 0);
        Self { buf, what }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        // Attribute payloads here are names, addresses and nests of them: far below 64 KiB.
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn attr_str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    fn attr_u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_ne_bytes())
    }

    fn nest_start(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.attr(kind | NLA_F_NESTED, &[]);
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The message bytes with length and sequence number filled in.
    pub fn bytes(&self, seq: u32) -> Vec<u8> {
        let mut b = self.buf.clone();
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b
    }

    /// What the request does, for error messages.
    pub fn what(&self) -> &str {
        &self.what
    }
}

fn ifinfomsg(family: u8, index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = family;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// Creates a bridge named `name` (fails with EEXIST if the name is taken).
pub fn new_bridge(name: &str) -> Request {
    let mut r = Request::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(AF_UNSPEC, 0, 0, 0),
        format!("creating bridge {name}"),
    );
    r.attr_str(IFLA_IFNAME, name);
    let info = r.nest_start(IFLA_LINKINFO);
    r.attr_str(IFLA_INFO_KIND, "bridge");
    r.nest_end(info);
    r
}

/// Creates a veth pair: `host` (up, enslaved to the bridge with index `master`) in the
/// socket's namespace, and `peer` in the namespace `peer_netns_fd` refers to.
pub fn new_veth(host: &str, master: u32, peer: &str, peer_netns_fd: i32) -> Request {
    let mut r = Request::new(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        &ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP),
        format!("creating veth pair {host}/{peer}"),
    );
    r.attr_str(IFLA_IFNAME, host);
    r.attr_u32(IFLA_MASTER, master);
    let info = r.nest_start(IFLA_LINKINFO);
    r.attr_str(IFLA_INFO_KIND, "veth");
    let data = r.nest_start(IFLA_INFO_DATA);
    let peer_at = r.nest_start(VETH_INFO_PEER);
    // VETH_INFO_PEER carries the peer's ifinfomsg followed by its attributes.
    r.buf.extend_from_slice(&ifinfomsg(AF_UNSPEC, 0, 0, 0));
    r.attr_str(IFLA_IFNAME, peer);
    r.attr_u32(IFLA_NET_NS_FD, peer_netns_fd.cast_unsigned());
    r.nest_end(peer_at);
    r.nest_end(data);
    r.nest_end(info);
    r
}

/// Sets the link named `name` up.
pub fn link_up(name: &str) -> Request {
    let mut r = Request::new(
        RTM_NEWLINK,
        0,
        &ifinfomsg(AF_UNSPEC, 0, IFF_UP, IFF_UP),
        format!("setting {name} up"),
    );
    r.attr_str(IFLA_IFNAME, name);
    r
}

/// Deletes the link named `name`.
pub fn del_link(name: &str) -> Request {
    let mut r = Request::new(
        RTM_DELLINK,
        0,
        &ifinfomsg(AF_UNSPEC, 0, 0, 0),
        format!("deleting link {name}"),
    );
    r.attr_str(IFLA_IFNAME, name);
    r
}

/// Turns hairpin mode on for bridge port `index` (a pod can reach itself through a
/// hostPort).
pub fn hairpin_on(index: u32, name: &str) -> Request {
    let mut r = Request::new(
        RTM_SETLINK,
        0,
        &ifinfomsg(AF_BRIDGE, index.cast_signed(), 0, 0),
        format!("turning hairpin mode on for {name}"),
    );
    let prot = r.nest_start(IFLA_PROTINFO);
    r.attr(IFLA_BRPORT_MODE, &[1]);
    r.nest_end(prot);
    r
}

/// Adds `addr/prefix` to the link with index `index` (EEXIST if it has it).
pub fn add_addr(index: u32, addr: Ipv4Addr, prefix: u8, name: &str) -> Request {
    let mut h = [0u8; 8];
    h[0] = AF_INET;
    h[1] = prefix;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut r = Request::new(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_EXCL,
        &h,
        format!("adding {addr}/{prefix} to {name}"),
    );
    r.attr(IFA_LOCAL, &addr.octets());
    r.attr(IFA_ADDRESS, &addr.octets());
    r
}

/// Adds a default route via `gateway` out of link `index`.
pub fn add_default_route(index: u32, gateway: Ipv4Addr) -> Request {
    let mut h = [0u8; 12];
    h[0] = AF_INET;
    h[4] = RT_TABLE_MAIN;
    h[5] = RTPROT_BOOT;
    h[6] = RT_SCOPE_UNIVERSE;
    h[7] = RTN_UNICAST;
    let mut r = Request::new(
        RTM_NEWROUTE,
        NLM_F_CREATE | NLM_F_EXCL,
        &h,
        format!("adding the default route via {gateway}"),
    );
    r.attr(RTA_GATEWAY, &gateway.octets());
    r.attr_u32(RTA_OIF, index);
    r
}

/// A NETLINK_ROUTE socket bound to the namespace of the thread that opened it.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// Sends `req` and waits for the kernel's ack; a refusal is [`NetlinkError::Kernel`].
    pub fn call(&mut self, req: &Request) -> Result<(), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = req.bytes(seq);
        // SAFETY: msg is a live buffer of msg.len() bytes; the kernel is the default
        // destination of an unbound-to-peer netlink socket.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(NetlinkError::Io(std::io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io(e));
            }
            let n = usize::try_from(n).unwrap_or(0);
            if let Some(done) = parse_ack(&buf[..n], seq, req.what())? {
                return done;
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

/// Looks for the ack of `seq` in a datagram: `Some(Ok)` for success, `Some(Err)` for a
/// refusal, `None` when the datagram holds no answer to `seq`.
fn parse_ack(
    mut b: &[u8],
    seq: u32,
    what: &str,
) -> Result<Option<Result<(), NetlinkError>>, NetlinkError> {
    let malformed = || NetlinkError::Malformed(what.to_owned());
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_at(b, 0).ok_or_else(malformed)? as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let msg_seq = u32_at(b, 8).ok_or_else(malformed)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(malformed());
        }
        if msg_seq == seq {
            match kind {
                NLMSG_ERROR => {
                    let code = u32_at(b, NLMSG_HDRLEN).ok_or_else(malformed)?.cast_signed();
                    return Ok(Some(if code == 0 {
                        Ok(())
                    } else {
                        Err(NetlinkError::Kernel {
                            what: what.to_owned(),
                            source: std::io::Error::from_raw_os_error(-code),
                        })
                    }));
                }
                NLMSG_DONE => return Ok(Some(Ok(()))),
                _ => {}
            }
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok(None)
}

/// The index of the link named `name` in the calling thread's network namespace.
pub fn index_of(name: &str) -> Result<u32, NetlinkError> {
    let c = std::ffi::CString::new(name).map_err(|_| NetlinkError::Kernel {
        what: format!("looking up link {name:?}"),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(NetlinkError::Kernel {
            what: format!("looking up link {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(mut b: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
            out.push((kind, b[4..len].to_vec()));
            b = &b[align4(len).min(b.len())..];
        }
        out
    }

    #[test]
    fn header_carries_length_type_flags_and_sequence() {
        let b = link_up("eth0").bytes(7);
        assert_eq!(u32_at(&b, 0).map(|l| l as usize), Some(b.len()));
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), RTM_NEWLINK);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_at(&b, 8), Some(7));
        // ifinfomsg: flags and change both IFF_UP.
        assert_eq!(u32_at(&b, 16 + 8), Some(IFF_UP));
        assert_eq!(u32_at(&b, 16 + 12), Some(IFF_UP));
        let a = attrs(&b[32..]);
        assert_eq!(a, vec![(IFLA_IFNAME, b"eth0\0".to_vec())]);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn veth_request_nests_the_peer_with_its_namespace() {
        let b = new_veth("bth0123456789ab", 42, "eth0", 9).bytes(1);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        assert_eq!(
            flags & (NLM_F_CREATE | NLM_F_EXCL),
            NLM_F_CREATE | NLM_F_EXCL
        );
        let top = attrs(&b[32..]);
        assert_eq!(top[0], (IFLA_IFNAME, b"bth0123456789ab\0".to_vec()));
        assert_eq!(top[1], (IFLA_MASTER, 42u32.to_ne_bytes().to_vec()));
        assert_eq!(top[2].0, IFLA_LINKINFO);
        let info = attrs(&top[2].1);
        assert_eq!(info[0], (IFLA_INFO_KIND, b"veth\0".to_vec()));
        let data = attrs(&info[1].1);
        assert_eq!(data[0].0, VETH_INFO_PEER);
        // The peer: an ifinfomsg, then its name and namespace fd.
        let peer = attrs(&data[0].1[16..]);
        assert_eq!(peer[0], (IFLA_IFNAME, b"eth0\0".to_vec()));
        assert_eq!(peer[1], (IFLA_NET_NS_FD, 9u32.to_ne_bytes().to_vec()));
    }

    #[test]
    fn address_and_route_requests_carry_ipv4_bytes() {
        let b = add_addr(3, Ipv4Addr::new(10, 88, 0, 2), 16, "eth0").bytes(1);
        assert_eq!(b[16], AF_INET);
        assert_eq!(b[17], 16);
        assert_eq!(u32_at(&b, 20), Some(3));
        let a = attrs(&b[24..]);
        assert_eq!(a[0], (IFA_LOCAL, vec![10, 88, 0, 2]));
        let r = add_default_route(3, Ipv4Addr::new(10, 88, 0, 1)).bytes(1);
        assert_eq!(r[16], AF_INET);
        assert_eq!(r[17], 0, "default route: dst_len 0");
        assert_eq!(r[20], RT_TABLE_MAIN);
        let a = attrs(&r[28..]);
        assert_eq!(a[0], (RTA_GATEWAY, vec![10, 88, 0, 1]));
        assert_eq!(a[1], (RTA_OIF, 3u32.to_ne_bytes().to_vec()));
    }

    #[test]
    fn acks_and_errors_are_told_apart_by_sequence() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert!(matches!(parse_ack(&ack, 5, "x"), Ok(Some(Ok(())))));
        assert!(matches!(parse_ack(&ack, 6, "x"), Ok(None)));
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let err = parse_ack(&ack, 5, "creating bridge b")
            .expect("parses")
            .expect("answer")
            .expect_err("refused");
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("creating bridge b"), "{err}");
        assert!(parse_ack(&ack[..20], 5, "x").is_err(), "truncated message");
    }
}
