//! The DNS server: hickory-server's UDP and TCP transports with a request
//! handler that answers cluster names from the current [`Snapshot`]
//! ([`super::lookup::resolve`]) and relays other names to `--upstream`
//! servers, if any.
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode},
        rr::{Name, Record, RecordType},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};
use tracing::{debug, warn};

use super::{
    lookup::{Resolution, Zone, resolve},
    snapshot::Snapshot,
};

/// The snapshot queries are answered from, replaced whole on changes.
pub type SharedSnapshot = Arc<RwLock<Arc<Snapshot>>>;

/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle TCP connections are closed after this (CoreDNS: 10 s read timeout).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The EDNS payload size we advertise at most (the DNS flag day's 1232).
const MAX_PAYLOAD: u16 = 1232;

/// Answers queries: the cluster zone and reverse zones from the snapshot,
/// the rest from upstream servers or REFUSED.
pub struct ClusterDnsHandler {
    zone: Zone,
    snapshot: SharedSnapshot,
    upstreams: Vec<SocketAddr>,
}

impl ClusterDnsHandler {
    /// A handler for `zone`, reading `snapshot`, relaying other names to
    /// `upstreams` in order (none: REFUSED).
    pub fn new(zone: Zone, snapshot: SharedSnapshot, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            zone,
            snapshot,
            upstreams,
        }
    }

    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The EDNS of our answer when the request had one (RFC 6891: echo it,
/// with our payload size).
fn response_edns(request: &Request) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().clamp(512, MAX_PAYLOAD));
        edns.set_version(0);
        edns
    })
}

#[async_trait::async_trait]
impl RequestHandler for ClusterDnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let edns = response_edns(request);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let send_error = |code: ResponseCode| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            m
        };
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            let m = send_error(ResponseCode::NotImp);
            return send(&mut response_handle, builder.build_no_records(m)).await;
        }
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                let m = send_error(ResponseCode::FormErr);
                return send(&mut response_handle, builder.build_no_records(m)).await;
            }
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let snap = self.current();
        let resolution = resolve(&snap, &self.zone, &qname, qtype);
        debug!(%qname, ?qtype, ?resolution, "query");
        metadata.recursion_available = !self.upstreams.is_empty();
        let empty: Vec<Record> = Vec::new();
        match resolution {
            Resolution::Answer {
                mut answers,
                additionals,
                chase,
            } => {
                metadata.authoritative = true;
                if let Some(target) = chase
                    && let Some(up) = self.ask_upstream(&target, qtype).await
                {
                    answers.extend(up.answers);
                }
                let response = builder.build(
                    metadata,
                    answers.iter(),
                    empty.iter(),
                    empty.iter(),
                    additionals.iter(),
                );
                send(&mut response_handle, response).await
            }
            Resolution::NoData { apex } => {
                metadata.authoritative = true;
                let soa = [self.zone.soa(&apex, snap.serial)];
                let response = builder.build(
                    metadata,
                    empty.iter(),
                    empty.iter(),
                    soa.iter(),
                    empty.iter(),
                );
                send(&mut response_handle, response).await
            }
            Resolution::NxDomain { apex } => {
                self.nxdomain(&mut response_handle, builder, metadata, &apex, snap.serial)
                    .await
            }
            Resolution::ServFail => {
                let m = send_error(ResponseCode::ServFail);
                send(&mut response_handle, builder.build_no_records(m)).await
            }
            Resolution::Refused => {
                let m = send_error(ResponseCode::Refused);
                send(&mut response_handle, builder.build_no_records(m)).await
            }
            Resolution::Outside | Resolution::UnknownReverse { .. } => {
                if !self.upstreams.is_empty() {
                    let Some(up) = self.relay(request).await else {
                        let m = send_error(ResponseCode::ServFail);
                        return send(&mut response_handle, builder.build_no_records(m)).await;
                    };
                    metadata.response_code = up.metadata.response_code;
                    metadata.authoritative = up.metadata.authoritative;
                    metadata.truncation = up.metadata.truncation;
                    let response = builder.build(
                        metadata,
                        up.answers.iter(),
                        up.authorities.iter(),
                        empty.iter(),
                        up.additionals.iter(),
                    );
                    return send(&mut response_handle, response).await;
                }
                if let Resolution::UnknownReverse { apex } = resolution {
                    return self
                        .nxdomain(&mut response_handle, builder, metadata, &apex, snap.serial)
                        .await;
                }
                let m = send_error(ResponseCode::Refused);
                send(&mut response_handle, builder.build_no_records(m)).await
            }
        }
    }
}

impl ClusterDnsHandler {
    async fn nxdomain<R: ResponseHandler>(
        &self,
        response_handle: &mut R,
        builder: MessageResponseBuilder<'_>,
        mut metadata: Metadata,
        apex: &Name,
        serial: u32,
    ) -> ResponseInfo {
        metadata.authoritative = true;
        metadata.response_code = ResponseCode::NXDomain;
        let soa = [self.zone.soa(apex, serial)];
        let empty: Vec<Record> = Vec::new();
        let response = builder.build(
            metadata,
            empty.iter(),
            empty.iter(),
            soa.iter(),
            empty.iter(),
        );
        send(response_handle, response).await
    }

    /// The request relayed as it came (same id and flags) to the first
    /// upstream that answers.
    async fn relay(&self, request: &Request) -> Option<Message> {
        let raw = request.as_slice();
        for up in &self.upstreams {
            match exchange(*up, raw).await {
                Ok(m) => return Some(m),
                Err(e) => warn!(upstream = %up, error = %format!("{e:#}"), "upstream failed"),
            }
        }
        None
    }

    /// A fresh recursive query for `name`/`qtype` to the upstreams (an
    /// ExternalName's target).
    async fn ask_upstream(&self, name: &Name, qtype: RecordType) -> Option<Message> {
        if self.upstreams.is_empty() {
            return None;
        }
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name.clone(), qtype));
        let raw = q.to_vec().ok()?;
        for up in &self.upstreams {
            if let Ok(m) = exchange(*up, &raw).await {
                return Some(m);
            }
        }
        None
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    let fallback = Metadata::new(response.metadata().id, MessageType::Response, OpCode::Query);
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            warn!(error = %e, "sending a response failed");
            let mut m = fallback;
            m.response_code = ResponseCode::ServFail;
            hickory_server::proto::op::Header {
                metadata: m,
                counts: Default::default(),
            }
            .into()
        }
    }
}

/// One exchange with an upstream: UDP, then TCP when the answer is
/// truncated. The answer must carry the query's id.
pub async fn exchange(upstream: SocketAddr, raw: &[u8]) -> Result<Message> {
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(raw).await?;
    let mut buf = vec![0u8; 65535];
    let msg = loop {
        let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
            .await
            .context("no answer over UDP")??;
        let m = Message::from_vec(&buf[..n]).context("a malformed answer")?;
        if m.metadata.id == id {
            break m;
        }
    };
    if !msg.metadata.truncation {
        return Ok(msg);
    }
    let mut stream = tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(upstream))
        .await
        .context("TCP connect timed out")??;
    let len = u16::try_from(raw.len()).context("query too long")?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(raw).await?;
    let read = async {
        let n = stream.read_u16().await? as usize;
        let mut body = vec![0u8; n];
        stream.read_exact(&mut body).await?;
        anyhow::Ok(body)
    };
    let body = tokio::time::timeout(UPSTREAM_TIMEOUT, read)
        .await
        .context("no answer over TCP")??;
    Message::from_vec(&body).context("a malformed answer over TCP")
}

/// Binds UDP and TCP on `listen` and serves `handler` until the future is
/// dropped. Returns the bound address (useful with port 0) and the server.
///
/// With port 0 the kernel picks the UDP port, and TCP must then take the
/// same number; that number may already be held by a TCP socket (any
/// process's outgoing connection uses the same ephemeral range), so a
/// refused TCP bind retries with a new UDP port, up to
/// [`PORT_0_ATTEMPTS`] times, holding the refused UDP sockets until the end
/// so the kernel cannot hand the same number out again. An explicit port is
/// tried once.
///
/// # Errors
/// The failing bind, naming the protocol and address.
pub async fn bind(
    listen: SocketAddr,
    handler: ClusterDnsHandler,
) -> Result<(SocketAddr, Server<ClusterDnsHandler>)> {
    let attempts = if listen.port() == 0 {
        PORT_0_ATTEMPTS as usize
    } else {
        1
    };
    let mut refused = Vec::new();
    let (udp, tcp, addr) = loop {
        let udp = UdpSocket::bind(listen)
            .await
            .with_context(|| format!("binding UDP {listen}"))?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, tcp, addr),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && refused.len() + 1 < attempts => {
                debug!(%addr, "TCP port taken; choosing another UDP port");
                refused.push(udp);
            }
            Err(e) => return Err(e).with_context(|| format!("binding TCP {addr}")),
        }
    };
    drop(refused);
    let mut server = Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64);
    Ok((addr, server))
}

/// How many kernel-chosen UDP ports [`bind`] tries before giving up on
/// finding the same number free for TCP.
pub const PORT_0_ATTEMPTS: u32 = 64;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};

    use super::*;
    use crate::dns::{lookup::Zone, snapshot::Snapshot};

    /// With a two-port ephemeral range and TCP holding one of the two, a
    /// port-0 bind must still come up (on the other port) every time: the
    /// kernel hands UDP the taken number about half the time. Runs in a
    /// network namespace of its own (needs root), so the range and the
    /// sockets touch nothing else.
    #[test]
    fn port_0_retries_when_the_udp_port_is_taken_over_tcp() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs root: run the test suite as root");
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40001")
                .expect("set this namespace's ephemeral range");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _held = TcpListener::bind("0.0.0.0:40000").await.unwrap();
                for _ in 0..20 {
                    let handler = ClusterDnsHandler::new(
                        Zone::new("cluster.local", 30).unwrap(),
                        Arc::new(RwLock::new(Arc::new(Snapshot::default()))),
                        vec![],
                    );
                    let (addr, mut server) = bind("0.0.0.0:0".parse().unwrap(), handler)
                        .await
                        .expect("bind with port 0");
                    assert_eq!(addr.port(), 40001);
                    server.shutdown_gracefully().await.unwrap();
                }
            });
        })
        .join()
        .unwrap();
    }
}
