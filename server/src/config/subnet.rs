//! The IPv4 subnet of `cni.builtin_subnet` (and of kubelet's pod CIDRs): parsed and
//! checked here, where the configuration is validated; the native network allocates
//! pod addresses from it.

use std::net::Ipv4Addr;

/// An IPv4 subnet, `a.b.c.d/len` with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length (8 to 30).
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/len`; the prefix must leave room for a gateway and a pod.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/len)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 CIDR (a.b.c.d/len)"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("{s:?}: the prefix length must be between 8 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    /// The gateway: the first host of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Pod addresses: after the gateway, before the broadcast address.
    pub(crate) fn pod_range(&self) -> (u32, u32) {
        let first = u32::from(self.network) + 2;
        let last = u32::from(self.network) + (1u32 << (32 - self.prefix)) - 2;
        (first, last)
    }

    /// Whether `ip` is a pod address of this subnet.
    pub fn holds(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.pod_range();
        (first..=last).contains(&u32::from(ip))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_parsing_clears_host_bits_and_bounds_the_prefix() {
        let s = Subnet::parse("10.88.7.9/16").expect("valid");
        assert_eq!(s.to_string(), "10.88.0.0/16");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert!(s.holds(Ipv4Addr::new(10, 88, 0, 2)));
        assert!(!s.holds(Ipv4Addr::new(10, 88, 0, 1)), "gateway");
        assert!(!s.holds(Ipv4Addr::new(10, 88, 255, 255)), "broadcast");
        assert!(Subnet::parse("10.88.0.0/31").is_err());
        assert!(Subnet::parse("10.88.0.0").is_err());
        assert!(Subnet::parse("fd00::/64").is_err());
    }
}
