//! Pod addresses from the Node's `podCIDR` (host-local IPAM).
use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::{Result, bail};

/// Hands out the addresses of one IPv4 CIDR: `.2` upwards (`.0` is the
/// network, `.1` is left to the node, the last is the broadcast address).
#[derive(Debug)]
pub struct Ipam {
    base: u32,
    size: u32,
    used: HashSet<u32>,
}

impl Ipam {
    /// Parses `a.b.c.d/len` (len 8–30); an error names the text.
    pub fn new(cidr: &str) -> Result<Self> {
        let Some((ip, len)) = cidr.split_once('/') else {
            bail!("pod CIDR `{cidr}` is not ADDRESS/LENGTH");
        };
        let Ok(ip) = ip.parse::<Ipv4Addr>() else {
            bail!("pod CIDR `{cidr}`: `{ip}` is not an IPv4 address");
        };
        let len: u32 = match len.parse() {
            Ok(l) if (8..=30).contains(&l) => l,
            _ => bail!("pod CIDR `{cidr}`: prefix length must be 8 to 30"),
        };
        let size = 1u32 << (32 - len);
        Ok(Self {
            base: u32::from(ip) & !(size - 1),
            size,
            used: HashSet::new(),
        })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let a = u32::from(ip);
        a >= self.base && a < self.base + self.size
    }

    /// Marks `ip` taken (an address a pod already has); outside: ignored.
    pub fn mark(&mut self, ip: Ipv4Addr) {
        if self.contains(ip) {
            self.used.insert(u32::from(ip) - self.base);
        }
    }

    /// Gives `ip` back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        if self.contains(ip) {
            self.used.remove(&(u32::from(ip) - self.base));
        }
    }

    /// The lowest free address, or an error when the range is full.
    pub fn allocate(&mut self) -> Result<Ipv4Addr> {
        let Some(off) = (2..self.size - 1).find(|o| !self.used.contains(o)) else {
            bail!("no free pod address left in the node's podCIDR");
        };
        self.used.insert(off);
        Ok(Ipv4Addr::from(self.base + off))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_from_two_and_reuses_released() {
        let mut i = Ipam::new("10.244.1.0/24").unwrap();
        assert_eq!(i.allocate().unwrap(), Ipv4Addr::new(10, 244, 1, 2));
        i.mark(Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(i.allocate().unwrap(), Ipv4Addr::new(10, 244, 1, 4));
        i.release(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(i.allocate().unwrap(), Ipv4Addr::new(10, 244, 1, 2));
    }

    #[test]
    fn a_full_range_and_bad_text_are_errors() {
        let mut i = Ipam::new("10.0.0.0/30").unwrap();
        assert_eq!(i.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(i.allocate().is_err());
        assert!(
            Ipam::new("10.0.0.0")
                .unwrap_err()
                .to_string()
                .contains("10.0.0.0")
        );
        assert!(Ipam::new("10.0.0.0/31").is_err());
    }
}
