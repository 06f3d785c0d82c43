//! Connected UDP sockets whose backend has left. The socket path translates
//! a UDP socket once, at `connect()`; the socket then talks to that backend
//! for as long as it lives (a DNS resolver's socket black-holes once the
//! backend pod is gone). When a sync removes a backend from a frontend,
//! every socket the socket path connected from that frontend to that
//! backend is destroyed with sock_diag's `SOCK_DESTROY` (what `ss -K`
//! does; Cilium uses `bpf_sock_destroy` for the same): its owner gets
//! `ECONNABORTED` and reconnects through the frontend to a current backend.
//!
//! Only sockets [`map_names::SOCK4_REVNAT`] names — those the socket path
//! translated, by cookie, to that backend from that frontend — are touched:
//! a socket connected to the pod's address directly is left alone.
//!
//! Sockets live in the network namespaces of the processes in the hooked
//! cgroup (pods' and the node's); each namespace is visited through one of
//! its processes, and the sock_diag socket is opened inside it.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    AF_INET, IPPROTO_UDP, SockDiagDestroy, SockDiagMessage,
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use proxy_common::{
    map_names,
    sock::{Sock4RevNatKey, Sock4RevNatValue},
};

use crate::{
    model::{BackendAddr, FrontendId},
    netns::with_netns,
};

/// A backend that left a frontend: (frontend ID, backend).
pub type Departure = (FrontendId, BackendAddr);

/// What [`close_departed`] did.
#[derive(Debug, Default)]
pub struct Closed {
    /// Sockets destroyed.
    pub sockets: usize,
    /// Namespaces whose sockets could not be dumped or destroyed, with why
    /// (a process that exited meanwhile takes its namespace's path along).
    pub failed: Vec<(PathBuf, String)>,
}

/// Destroys the UDP sockets the socket path connected to a departed
/// backend through its frontend, in every network namespace of the
/// processes under `cgroup` (entering them needs `CAP_SYS_ADMIN` and the
/// host's PID namespace). A namespace that fails is reported in
/// [`Closed::failed`] and the others are still visited.
///
/// # Errors
/// The reverse-translation map cannot be read, or `cgroup` itself cannot
/// be listed.
pub fn close_departed(maps_dir: &Path, cgroup: &Path, departed: &[Departure]) -> Result<Closed> {
    let cookies = departed_cookies(maps_dir, departed)?;
    let mut closed = Closed::default();
    if cookies.is_empty() {
        return Ok(closed);
    }
    for ns in namespaces_of(cgroup)? {
        match with_netns(&ns.display().to_string(), || {
            destroy_in_current_netns(&cookies)
        }) {
            Ok(n) => closed.sockets += n,
            Err(e) => closed.failed.push((ns, format!("{e:#}"))),
        }
    }
    Ok(closed)
}

/// Socket cookies the socket path translated to a departed (frontend,
/// backend), with the backend each was sent to.
fn departed_cookies(
    maps_dir: &Path,
    departed: &[Departure],
) -> Result<BTreeMap<u64, (Ipv4Addr, u16)>> {
    let path = maps_dir.join(map_names::SOCK4_REVNAT);
    let data =
        MapData::from_pin(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let map: HashMap<_, Sock4RevNatKey, Sock4RevNatValue> =
        HashMap::try_from(aya::maps::Map::from_map_data(data)?)?;
    let wanted: BTreeSet<(u32, Ipv4Addr, u16)> = departed
        .iter()
        .map(|(id, b)| (id.0, b.addr, b.port))
        .collect();
    let mut out = BTreeMap::new();
    for entry in map.iter() {
        let (k, v) = entry?;
        let addr = crate::model::addr_from_be(k.addr_be);
        let port = u16::from_be(k.port_be);
        if wanted.contains(&(v.frontend_id, addr, port)) {
            out.insert(k.cookie, (addr, port));
        }
    }
    Ok(out)
}

/// One `/proc/<pid>/ns/net` per distinct network namespace among the
/// processes of `cgroup` and its descendants.
fn namespaces_of(cgroup: &Path) -> Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(p) => p,
            // A pod's cgroup removed while we walk.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != cgroup => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read {}/cgroup.procs", dir.display()));
            }
        };
        for pid in procs.lines().filter(|l| !l.is_empty()) {
            let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            // A process may exit between the listing and the stat.
            if let Ok(meta) = fs::metadata(&ns)
                && seen.insert((meta.dev(), meta.ino()))
            {
                out.push(ns);
            }
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(out)
}

/// Dumps the UDP sockets of the calling thread's network namespace and
/// destroys those whose cookie is in `cookies` and whose peer is still the
/// backend the cookie was translated to.
fn destroy_in_current_netns(cookies: &BTreeMap<u64, (Ipv4Addr, u16)>) -> Result<usize> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG).context("sock_diag socket")?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let mut victims = Vec::new();
    for id in dump_udp(&mut sock)? {
        let cookie = cookie_of(&id.cookie);
        let peer = match id.destination_address {
            IpAddr::V4(a) => (a, id.destination_port),
            IpAddr::V6(_) => continue,
        };
        if cookies.get(&cookie) == Some(&peer) {
            victims.push(id);
        }
    }
    let mut destroyed = 0;
    for id in victims {
        if destroy(&mut sock, id)? {
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// The kernel's `idiag_cookie[2]`, two host-order u32s, as the u64 that
/// `bpf_get_socket_cookie` returns.
fn cookie_of(c: &[u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
    u64::from(lo) | (u64::from(hi) << 32)
}

fn request(socket_id: SocketId) -> InetRequest {
    InetRequest {
        family: AF_INET,
        protocol: IPPROTO_UDP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::all(),
        socket_id,
    }
}

fn send<T: netlink_packet_core::NetlinkSerializable>(
    sock: &mut Socket,
    flags: u16,
    payload: T,
) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    sock.send(&buf, 0).context("sock_diag send")?;
    Ok(())
}

fn dump_udp(sock: &mut Socket) -> Result<Vec<SocketId>> {
    send(
        sock,
        NLM_F_REQUEST | NLM_F_DUMP,
        SockDiagMessage::InetRequest(request(SocketId::new_v4())),
    )?;
    let mut ids = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock
            .recv(&mut &mut buf[..], 0)
            .context("sock_diag receive")?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..n])
                .context("sock_diag answer")?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(ids),
                NetlinkPayload::Error(e) => return Err(e.to_io()).context("sock_diag dump"),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    ids.push(r.header.socket_id.clone());
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// `Ok(false)` when the socket was already gone.
fn destroy(sock: &mut Socket, id: SocketId) -> Result<bool> {
    send(
        sock,
        NLM_F_REQUEST | NLM_F_ACK,
        SockDiagDestroy::new(SockDiagMessage::InetRequest(request(id))),
    )?;
    let mut buf = vec![0u8; 8192];
    let n = sock
        .recv(&mut &mut buf[..], 0)
        .context("sock_diag receive")?;
    match NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n])
        .context("sock_diag answer")?
        .payload
    {
        NetlinkPayload::Error(e) if e.code.is_none() => Ok(true),
        NetlinkPayload::Error(e) if e.to_io().raw_os_error() == Some(libc::ENOENT) => Ok(false),
        NetlinkPayload::Error(e) => Err(e.to_io()).context("SOCK_DESTROY"),
        _ => Ok(true),
    }
}
