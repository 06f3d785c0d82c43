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
/// "More fragments" bit and fragment offset of `frag_off` (host order).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

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

/// Where a packet stands in a fragmented datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    No,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment: no transport header, only payload.
    Later,
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
    /// Identification field, network order (names a fragmented datagram).
    pub id_be: u16,
    pub fragment: Fragment,
}

/// Ports and TCP flags of a TCP/UDP header.
#[derive(Clone, Copy)]
pub struct Ports {
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags; 0 for UDP and for later fragments (no header to read).
    pub tcp_flags: u8,
}

impl Ports {
    /// A TCP SYN without ACK: the first packet of a connection.
    #[inline(always)]
    pub fn syn_only(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// Parses Ethernet + IPv4. Returns `None` for anything that is not IPv4
/// with a sane header: such packets are passed on untouched.
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
    let fragment = if frag & IP_OFFSET != 0 {
        Fragment::Later
    } else if frag & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::No
    };
    Some(Ipv4 {
        l3_off,
        l4_off: l3_off + ihl * 4,
        proto: hdr[9],
        saddr_be: u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]),
        daddr_be: u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]),
        id_be: u16::from_ne_bytes([hdr[4], hdr[5]]),
        fragment,
    })
}

/// Reads the ports (and TCP flags) of a TCP or UDP header at `l4_off`;
/// `None` when the header is truncated.
#[inline(always)]
pub fn parse_ports(ctx: &TcContext, l4_off: usize, l4_proto: u8) -> Option<Ports> {
    if l4_proto == proto::TCP {
        // Ports, seq, ack, data offset and flags: the first 14 bytes.
        let h: *const [u8; 20] = ptr_at(ctx, l4_off)?;
        let h = unsafe { &*h };
        return Some(Ports {
            sport_be: u16::from_ne_bytes([h[0], h[1]]),
            dport_be: u16::from_ne_bytes([h[2], h[3]]),
            tcp_flags: h[13],
        });
    }
    let h: *const [u8; 8] = ptr_at(ctx, l4_off)?;
    let h = unsafe { &*h };
    Some(Ports {
        sport_be: u16::from_ne_bytes([h[0], h[1]]),
        dport_be: u16::from_ne_bytes([h[2], h[3]]),
        tcp_flags: 0,
    })
}

/// Offset of the transport checksum inside the TCP or UDP header.
#[inline(always)]
pub const fn l4_csum_off(l4_proto: u8) -> usize {
    if l4_proto == proto::TCP { 16 } else { 6 }
}
