//! Parsing of the headers the TC path needs, with bounds checks the verifier
//! can follow. Only what is read is parsed; writes go through helpers.
use aya_ebpf::programs::TcContext;
use proxy_common::proto;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offsets inside the IPv4 header.
pub const IP_CSUM_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;
/// Fragment offset and "more fragments" bits of `frag_off` (host order).
const IP_FRAG_MASK: u16 = 0x3fff;

/// Returns a pointer to a `T` at `off`, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// What the TC path knows about an IPv4 packet.
pub struct Ipv4 {
    /// Offset of the IPv4 header (after Ethernet).
    pub l3_off: usize,
    /// Offset of the transport header.
    pub l4_off: usize,
    pub proto: u8,
    pub saddr_be: u32,
    pub daddr_be: u32,
}

/// Ports of a TCP/UDP header, and whether it is a TCP SYN without ACK.
pub struct Ports {
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_syn_only: bool,
}

/// Parses Ethernet + IPv4. Returns `None` for anything that is not an
/// unfragmented IPv4 packet with a sane header: such packets are passed on
/// untouched (a fragment carries no ports to translate by).
#[inline(always)]
pub fn parse_ipv4(ctx: &TcContext) -> Option<Ipv4> {
    let eth_proto: *const u16 = ptr_at(ctx, 12)?;
    if u16::from_be(unsafe { *eth_proto }) != ETH_P_IP {
        return None;
    }
    let l3_off = ETH_HLEN;
    // Version/IHL, then the fixed 20-byte header.
    let hdr: *const [u8; 20] = ptr_at(ctx, l3_off)?;
    let hdr = unsafe { &*hdr };
    let (version, ihl) = (hdr[0] >> 4, usize::from(hdr[0] & 0x0f));
    if version != 4 || ihl < 5 {
        return None;
    }
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    if frag & IP_FRAG_MASK != 0 {
        return None;
    }
    let saddr_be = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let daddr_be = u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    Some(Ipv4 {
        l3_off,
        l4_off: l3_off + ihl * 4,
        proto: hdr[9],
        saddr_be,
        daddr_be,
    })
}

/// Reads the ports of a TCP or UDP header at `l4_off`; `None` when the
/// header is truncated.
#[inline(always)]
pub fn parse_ports(ctx: &TcContext, l4_off: usize, l4_proto: u8) -> Option<Ports> {
    if l4_proto == proto::TCP {
        // Ports, seq, ack, data offset and flags: the first 14 bytes.
        let h: *const [u8; 20] = ptr_at(ctx, l4_off)?;
        let h = unsafe { &*h };
        let flags = h[13];
        return Some(Ports {
            sport_be: u16::from_ne_bytes([h[0], h[1]]),
            dport_be: u16::from_ne_bytes([h[2], h[3]]),
            tcp_syn_only: flags & 0x12 == 0x02,
        });
    }
    let h: *const [u8; 8] = ptr_at(ctx, l4_off)?;
    let h = unsafe { &*h };
    Some(Ports {
        sport_be: u16::from_ne_bytes([h[0], h[1]]),
        dport_be: u16::from_ne_bytes([h[2], h[3]]),
        tcp_syn_only: false,
    })
}

/// Offset of the transport checksum inside the TCP or UDP header.
#[inline(always)]
pub const fn l4_csum_off(l4_proto: u8) -> usize {
    if l4_proto == proto::TCP { 16 } else { 6 }
}
