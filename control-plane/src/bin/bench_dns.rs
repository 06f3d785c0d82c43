//! `bench-dns`: `sy-dns`'s query path next to a baseline taken in the same
//! run — the same hickory-server transport with a handler that answers
//! every query with one fixed A record, no lookup — so the ratio is the
//! cost of our name parsing, lookup and answer building. Also the time to
//! rebuild the snapshot from the watch caches' objects.
//!
//! Load: `--clients` UDP clients on loopback, each sending one query and
//! waiting for its answer, for `--seconds` per case. Client and server
//! share the machine's cores.
use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Result;
use clap::Parser;
use control_plane::dns::{
    lookup::{DEFAULT_TTL, Zone},
    server::{self, ClusterDnsHandler, SharedSnapshot},
    snapshot::Snapshot,
};
use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Message, Metadata, Query},
        rr::{Name, RData, Record, RecordType, rdata::A},
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};
use k8s_openapi::api::{
    core::v1::{Namespace, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::json;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Parser)]
struct Args {
    /// Services in the snapshot (half ClusterIP, half headless).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Ready endpoints per headless Service.
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// Concurrent UDP clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds per case.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

/// The baseline: one fixed A record for any question.
struct Fixed {
    record: Record,
}

#[async_trait::async_trait]
impl RequestHandler for Fixed {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let builder = MessageResponseBuilder::from_message_request(request);
        let answers = [self.record.clone()];
        let none: [Record; 0] = [];
        let response = builder.build(
            metadata,
            answers.iter(),
            none.iter(),
            none.iter(),
            none.iter(),
        );
        response_handle
            .send_response(response)
            .await
            .expect("sending the baseline answer")
    }
}

fn objects(n: usize, eps: usize) -> (Vec<Namespace>, Vec<Service>, Vec<EndpointSlice>) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "bench"}})).unwrap();
    let mut services = Vec::with_capacity(n);
    let mut slices = Vec::with_capacity(n);
    for i in 0..n {
        let headless = i % 2 == 1;
        let ip = format!("10.{}.{}.{}", 96 + (i >> 16), (i >> 8) & 255, i & 255);
        services.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                "spec": {
                    "clusterIP": if headless { "None".to_owned() } else { ip.clone() },
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                },
            }))
            .unwrap(),
        );
        let endpoints: Vec<_> = (0..eps)
            .map(|e| {
                json!({
                    "addresses": [format!("10.{}.{}.{}", 128 + (i >> 14), (i >> 6) & 255, ((i & 63) << 2) + e % 4)],
                    "conditions": {"ready": true},
                })
            })
            .collect();
        slices.push(
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("svc-{i}-x"), "namespace": "bench",
                    "labels": {"kubernetes.io/service-name": format!("svc-{i}")},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))
            .unwrap(),
        );
    }
    (vec![ns], services, slices)
}

/// Queries/s that `clients` lockstep clients get from `server` for `name`.
async fn load(server: SocketAddr, name: &str, qtype: RecordType, clients: usize, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let name = Name::from_ascii(name).unwrap();
        tasks.push(tokio::spawn(async move {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            sock.connect(server).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut done = 0u64;
            let mut id = (c as u16) << 12;
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                let mut q = Message::query();
                q.metadata.id = id;
                q.add_query(Query::query(name.clone(), qtype));
                sock.send(&q.to_vec().unwrap()).await.unwrap();
                match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => done += 1,
                    _ => {}
                }
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

async fn serve<H: RequestHandler>(handler: H) -> (SocketAddr, Server<H>) {
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let mut s = Server::new(handler);
    s.register_socket(udp);
    s.register_listener(tcp, Duration::from_secs(10), 64);
    (addr, s)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (ns, svcs, slices) = objects(args.services, args.endpoints);
    let mut builds = Vec::new();
    let mut snap = Snapshot::default();
    for _ in 0..5 {
        let t = Instant::now();
        snap = Snapshot::build(&ns, &svcs, &slices, 1);
        builds.push(t.elapsed());
    }
    builds.sort();
    let shared: SharedSnapshot = Arc::new(RwLock::new(Arc::new(snap)));
    let zone = Zone::new("cluster.local", DEFAULT_TTL).map_err(anyhow::Error::msg)?;
    let (ours, _ours) = server::bind(
        "127.0.0.1:0".parse()?,
        ClusterDnsHandler::new(zone, shared, vec![]),
    )
    .await?;
    let fixed = Fixed {
        record: Record::from_rdata(
            Name::from_ascii("svc-0.bench.svc.cluster.local.")?,
            DEFAULT_TTL,
            RData::A(A("10.96.0.0".parse()?)),
        ),
    };
    let (base, _base) = serve(fixed).await;

    let (c, s) = (args.clients, args.seconds);
    let last = args.services - 1;
    let baseline = load(base, "svc-0.bench.svc.cluster.local.", RecordType::A, c, s).await;
    let cases = [
        (
            "A, ClusterIP Service",
            format!("svc-{}.bench.svc.cluster.local.", last - 1),
            RecordType::A,
        ),
        (
            "A, headless Service",
            format!("svc-{last}.bench.svc.cluster.local."),
            RecordType::A,
        ),
        (
            "SRV, headless named port",
            format!("_http._tcp.svc-{last}.bench.svc.cluster.local."),
            RecordType::SRV,
        ),
        (
            "NXDOMAIN, missing Service",
            "nope.bench.svc.cluster.local.".to_owned(),
            RecordType::A,
        ),
        (
            "PTR, ClusterIP",
            "0.0.96.10.in-addr.arpa.".to_owned(),
            RecordType::PTR,
        ),
    ];
    println!(
        "{} Services ({} headless with {} ready endpoints each), {} UDP clients, {} s per case\n",
        args.services,
        args.services / 2,
        args.endpoints,
        c,
        s
    );
    println!("| case | queries/s | vs. baseline |");
    println!("|---|---|---|");
    println!("| baseline: fixed answer, no lookup | {baseline:.0} | 1.00 |");
    for (label, name, qtype) in cases {
        let qps = load(ours, &name, qtype, c, s).await;
        println!("| {label} | {qps:.0} | {:.2} |", qps / baseline);
    }
    println!(
        "\nsnapshot rebuild from {} Services and {} slices: median {:.1} ms (min {:.1}, max {:.1})",
        args.services,
        args.services,
        builds[2].as_secs_f64() * 1e3,
        builds[0].as_secs_f64() * 1e3,
        builds[4].as_secs_f64() * 1e3
    );
    Ok(())
}
