//! Crafted Ethernet/IPv4 packets for BPF_PROG_TEST_RUN, and checks of what
//! the program made of them (addresses, ports, checksums).
use std::net::{Ipv4Addr, SocketAddrV4};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A packet under construction: Ethernet + IPv4 (+ options) + L4 bytes.
pub struct Builder {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ip_options: Vec<u8>,
    pub frag: u16,
    pub payload: Vec<u8>,
}

impl Builder {
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self {
            src,
            dst,
            proto: TCP,
            tcp_flags: flags,
            ip_options: Vec::new(),
            frag: 0,
            payload: b"hello".to_vec(),
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Self {
        Self {
            proto: UDP,
            ..Self::tcp(src, dst, 0)
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4 = match self.proto {
            TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&self.src.port().to_be_bytes());
                h[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
                h[4..8].copy_from_slice(&1000u32.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = self.tcp_flags;
                h[14..16].copy_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
            _ => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&self.src.port().to_be_bytes());
                h[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
                h[4..6].copy_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&self.payload);
                h
            }
        };
        ipv4(
            *self.src.ip(),
            *self.dst.ip(),
            self.proto,
            &self.ip_options,
            self.frag,
            l4,
            true,
        )
    }
}

/// Ethernet + IPv4 around `l4`, with the L4 checksum filled in when `fill`.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag: u16,
    mut l4: Vec<u8>,
    fill: bool,
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    if fill {
        let off = match proto {
            TCP => Some(16),
            UDP => Some(6),
            ICMP => Some(2),
            _ => None,
        };
        if let Some(off) = off {
            l4[off..off + 2].fill(0);
            let c = if proto == ICMP {
                checksum(&l4)
            } else {
                checksum(&[pseudo(src, dst, proto, l4.len()), l4.clone()].concat())
            };
            l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    let ihl = 20 + options.len();
    let mut ip = vec![0u8; ihl];
    ip[0] = 0x40 | (ihl / 4) as u8;
    ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    ip[20..].copy_from_slice(options);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut pkt = Vec::with_capacity(14 + ip.len() + l4.len());
    pkt.extend_from_slice(&NODE_MAC);
    pkt.extend_from_slice(&CLIENT_MAC);
    pkt.extend_from_slice(&0x0800u16.to_be_bytes());
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(&l4);
    pkt
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

/// A parsed view of an Ethernet/IPv4 packet.
#[derive(Debug)]
pub struct View<'a> {
    pub pkt: &'a [u8],
    pub ihl: usize,
}

impl<'a> View<'a> {
    pub fn new(pkt: &'a [u8]) -> Self {
        let ihl = usize::from(pkt[14] & 0x0f) * 4;
        Self { pkt, ihl }
    }
    pub fn ip(&self) -> &[u8] {
        &self.pkt[14..14 + self.ihl]
    }
    pub fn l4(&self) -> &[u8] {
        let total = usize::from(u16::from_be_bytes([self.pkt[16], self.pkt[17]]));
        &self.pkt[14 + self.ihl..14 + total]
    }
    pub fn proto(&self) -> u8 {
        self.pkt[23]
    }
    pub fn src(&self) -> SocketAddrV4 {
        let ip = self.ip();
        let l4 = self.l4();
        SocketAddrV4::new(
            Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            u16::from_be_bytes([l4[0], l4[1]]),
        )
    }
    pub fn dst(&self) -> SocketAddrV4 {
        let ip = self.ip();
        let l4 = self.l4();
        SocketAddrV4::new(
            Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    }
    pub fn src_ip(&self) -> Ipv4Addr {
        let ip = self.ip();
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])
    }
    pub fn dst_ip(&self) -> Ipv4Addr {
        let ip = self.ip();
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])
    }
    pub fn ip_checksum_ok(&self) -> bool {
        checksum(self.ip()) == 0
    }
    /// TCP/UDP checksum over the pseudo-header; ICMP over its message.
    pub fn l4_checksum_ok(&self) -> bool {
        let l4 = self.l4();
        match self.proto() {
            ICMP => checksum(l4) == 0,
            UDP if l4[6..8] == [0, 0] => true,
            p => {
                checksum(
                    &[
                        pseudo(self.src_ip(), self.dst_ip(), p, l4.len()),
                        l4.to_vec(),
                    ]
                    .concat(),
                ) == 0
            }
        }
    }
}

/// Splits a built packet into two IPv4 fragments with identification `id`:
/// the first carries `first_len` bytes of the transport header and payload
/// (a multiple of 8), the second the rest.
pub fn fragments(pkt: &[u8], id: u16, first_len: usize) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_len % 8, 0, "fragment offsets count 8-byte units");
    let ihl = usize::from(pkt[14] & 0x0f) * 4;
    let (head, l4) = pkt.split_at(14 + ihl);
    let make = |part: &[u8], offset: usize, more: bool| {
        let mut f = head.to_vec();
        f.extend_from_slice(part);
        let ip = &mut f[14..14 + ihl];
        ip[2..4].copy_from_slice(&((ihl + part.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[10..12].fill(0);
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f
    };
    (
        make(&l4[..first_len], 0, true),
        make(&l4[first_len..], first_len, false),
    )
}

/// The transport checksum of a datagram whose fragments are `frags`, in
/// order, checked over the pseudo-header of the first: whether the whole
/// reassembled datagram is intact.
pub fn reassembled_checksum_ok(frags: &[&[u8]]) -> bool {
    let first = View::new(frags[0]);
    let mut l4 = Vec::new();
    for f in frags {
        let v = View::new(f);
        l4.extend_from_slice(v.l4());
    }
    checksum(
        &[
            pseudo(first.src_ip(), first.dst_ip(), first.proto(), l4.len()),
            l4,
        ]
        .concat(),
    ) == 0
}
