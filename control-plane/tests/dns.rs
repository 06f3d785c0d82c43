//! Cluster DNS end to end: a real `sy-apiserver` (both stores), `sy-dns`
//! on a free loopback port watching it, objects written with kubectl, and
//! queries from real clients — `dig` over UDP and TCP, and hickory's stub
//! resolver configured from the resolv.conf a pod would get. Tests are
//! named after upstream's DNS e2e tests (test/e2e/network/dns.go) where
//! they check the same thing. No query leaves 127.0.0.1.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Backend, Kubectl, Server, free_port, kubectl_dispatcher};

const NS: &str = "dns-e2e";

/// A running `sy-dns`, killed (by PID) on drop.
struct Dns {
    child: Child,
    addr: SocketAddr,
}

impl Dns {
    fn start(server: &Server, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sy-dns"))
            .env("RUST_LOG", "warn")
            .arg("--kubeconfig")
            .arg(server.kubeconfig())
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sy-dns");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("sy-dns said `{line}`"))
            .parse()
            .unwrap();
        Self { child, addr }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `dig` answer.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    /// (name, ttl, type, data) per section.
    answer: Vec<(String, u32, String, String)>,
    authority: Vec<(String, u32, String, String)>,
    additional: Vec<(String, u32, String, String)>,
}

impl Dig {
    fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.2 == rtype)
            .map(|r| r.3.clone())
            .collect();
        v.sort();
        v
    }

    fn has_soa_authority(&self) -> bool {
        self.authority.iter().any(|r| r.2 == "SOA")
    }
}

fn dig_at(addr: SocketAddr, transport: &str, name: &str, rtype: &str) -> Dig {
    let (dig, said) = query(addr, transport, name, rtype);
    assert!(
        !dig.status.is_empty(),
        "dig {name} {rtype} {transport} gave no answer:\n{said}"
    );
    dig
}

/// One `dig` run: the parsed answer (an empty status when none came within
/// its 2 s) and what dig printed.
fn query(addr: SocketAddr, transport: &str, name: &str, rtype: &str) -> (Dig, String) {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args(["+time=2", "+tries=1"])
        .args(transport.split_whitespace())
        .args([name, rtype])
        .output()
        .expect("dig (bind9-dnsutils, installed by scripts/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut dig = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split_once("status: ") {
            dig.status = rest.1.split(',').next().unwrap_or("").to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            dig.flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        } else if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = if line.contains("ANSWER") {
                "answer"
            } else if line.contains("AUTHORITY") {
                "authority"
            } else if line.contains("ADDITIONAL") {
                "additional"
            } else {
                ""
            };
        } else if line.trim().is_empty() || line.starts_with(';') {
            if line.trim().is_empty() {
                section = "";
            }
        } else if !section.is_empty() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                let rec = (
                    f[0].to_owned(),
                    f[1].parse().unwrap_or(0),
                    f[3].to_owned(),
                    f[4..].join(" "),
                );
                match section {
                    "answer" => dig.answer.push(rec),
                    "authority" => dig.authority.push(rec),
                    _ => dig.additional.push(rec),
                }
            }
        }
    }
    let said = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (dig, said)
}

/// Both transports must agree (upstream's tests query with `+notcp` and
/// `+tcp`); returns the UDP answer.
fn dig(dns: &Dns, name: &str, rtype: &str) -> Dig {
    let udp = dig_at(dns.addr, "+notcp", name, rtype);
    let tcp = dig_at(dns.addr, "+tcp", name, rtype);
    assert_eq!(udp.status, tcp.status, "{name} {rtype}: UDP and TCP differ");
    assert_eq!(
        udp.data(rtype),
        tcp.data(rtype),
        "{name} {rtype}: UDP and TCP differ"
    );
    udp
}

/// Polls until `check` holds for the UDP answer, at most `limit`.
fn wait_dig(
    dns: &Dns,
    name: &str,
    rtype: &str,
    limit: Duration,
    check: impl Fn(&Dig) -> bool,
) -> Dig {
    let start = Instant::now();
    loop {
        // A datagram lost or late under load is "not yet", as for a stub
        // resolver that retries.
        let (d, _) = query(dns.addr, "+notcp", name, rtype);
        if !d.status.is_empty() && check(&d) {
            return d;
        }
        assert!(
            start.elapsed() < limit,
            "{name} {rtype} still {d:?} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long a change may take to show in answers before a test fails: far
/// above the watch's usual delay (tens of milliseconds, printed by
/// `answers_follow_changes`), for a loaded 2-core CI machine running a
/// dozen API servers at once. Speed is `bench-dns`' business.
const PROPAGATION: Duration = Duration::from_secs(15);

fn fqdn(rel: &str) -> String {
    format!("{rel}.cluster.local.")
}

struct Cluster {
    _dir: tempfile::TempDir,
    server: Server,
    kubectl: Kubectl,
}

fn cluster(backend: Backend) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_on(backend, &dir.path().join("data"));
    let kubectl = Kubectl::new(kubectl_dispatcher(), &server, &dir.path().join("home"));
    kubectl.ok(&["create", "namespace", NS]);
    Cluster {
        _dir: dir,
        server,
        kubectl,
    }
}

/// The objects of upstream's "should provide DNS for services": a headless
/// Service with a named port and two ready endpoints (one with a
/// hostname, one not ready), and a ClusterIP Service `test-service-2`.
const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns-test-service, namespace: dns-e2e}
spec:
  clusterIP: None
  selector: {dns-test: "true"}
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-test-service-x1
  namespace: dns-e2e
  labels: {kubernetes.io/service-name: dns-test-service}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
- addresses: [10.244.1.11]
  hostname: dns-querier-1
  conditions: {ready: true}
- addresses: [10.244.1.12]
  conditions: {ready: true}
- addresses: [10.244.1.13]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: test-service-2, namespace: dns-e2e}
spec:
  clusterIP: 10.96.100.2
  selector: {dns-test: "true"}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
"#;

fn create_services(c: &Cluster) {
    c.kubectl.ok_stdin(&["create", "-f", "-"], SERVICES);
}

#[test]
fn should_provide_dns_for_services() {
    for backend in [Backend::Embedded, Backend::Etcd] {
        let c = cluster(backend);
        create_services(&c);
        let dns = Dns::start(&c.server, &[]);
        let headless = fqdn("dns-test-service.dns-e2e.svc");
        let d = wait_dig(&dns, &headless, "A", PROPAGATION, |d| d.status == "NOERROR");
        let d2 = dig(&dns, &headless, "A");
        assert_eq!(
            d2.data("A"),
            ["10.244.1.11", "10.244.1.12"],
            "{backend:?}: ready endpoints only"
        );
        assert!(
            d.flags.contains(&"aa".to_owned()),
            "authoritative: {:?}",
            d.flags
        );
        assert!(d.answer.iter().all(|r| r.1 == 5), "TTL 5 s: {:?}", d.answer);
        // SRV for the named port: headless gives one per endpoint, the
        // ClusterIP Service one naming itself, each target's address added.
        let srv = dig(
            &dns,
            &fqdn("_http._tcp.dns-test-service.dns-e2e.svc"),
            "SRV",
        );
        assert_eq!(
            srv.data("SRV"),
            [
                "0 50 80 10-244-1-12.dns-test-service.dns-e2e.svc.cluster.local.",
                "0 50 80 dns-querier-1.dns-test-service.dns-e2e.svc.cluster.local."
            ]
        );
        assert_eq!(srv.additional.iter().filter(|r| r.2 == "A").count(), 2);
        let srv2 = dig(&dns, &fqdn("_http._tcp.test-service-2.dns-e2e.svc"), "SRV");
        assert_eq!(
            srv2.data("SRV"),
            ["0 100 80 test-service-2.dns-e2e.svc.cluster.local."]
        );
        assert_eq!(
            srv2.additional
                .iter()
                .map(|r| r.3.as_str())
                .collect::<Vec<_>>(),
            ["10.96.100.2"]
        );
        assert_eq!(
            dig(&dns, &fqdn("test-service-2.dns-e2e.svc"), "A").data("A"),
            ["10.96.100.2"]
        );
        // PTR of the ClusterIP, and of a headless endpoint.
        let ptr = dig(&dns, "2.100.96.10.in-addr.arpa.", "PTR");
        assert_eq!(
            ptr.data("PTR"),
            ["test-service-2.dns-e2e.svc.cluster.local."]
        );
        let ptr = dig(&dns, "11.1.244.10.in-addr.arpa.", "PTR");
        assert_eq!(
            ptr.data("PTR"),
            ["dns-querier-1.dns-test-service.dns-e2e.svc.cluster.local."]
        );
        // The pod A record (`pods insecure`).
        let pod = dig(&dns, &fqdn("10-244-1-11.dns-e2e.pod"), "A");
        assert_eq!(pod.data("A"), ["10.244.1.11"]);
        // The schema version.
        assert_eq!(
            dig(&dns, "dns-version.cluster.local.", "TXT").data("TXT"),
            ["\"1.1.0\""]
        );
    }
}

#[test]
fn should_provide_dns_for_pods_for_hostname_and_subdomain() {
    let c = cluster(Backend::Embedded);
    // Upstream's pod with hostname dns-querier-2 and subdomain
    // dns-test-service-2: the EndpointSlice controller copies the hostname
    // into the endpoint of the headless Service named like the subdomain.
    c.kubectl.ok_stdin(
        &["create", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata: {name: dns-test-service-2, namespace: dns-e2e}
spec: {clusterIP: None, selector: {name: dns-querier-2}, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-test-service-2-a, namespace: dns-e2e, labels: {kubernetes.io/service-name: dns-test-service-2}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
- addresses: [10.244.2.21]
  hostname: dns-querier-2
  targetRef: {kind: Pod, name: dns-querier-2, namespace: dns-e2e}
"#,
    );
    let dns = Dns::start(&c.server, &[]);
    let pod_fqdn = fqdn("dns-querier-2.dns-test-service-2.dns-e2e.svc");
    wait_dig(&dns, &pod_fqdn, "A", PROPAGATION, |d| d.status == "NOERROR");
    assert_eq!(dig(&dns, &pod_fqdn, "A").data("A"), ["10.244.2.21"]);
    assert_eq!(
        dig(&dns, &fqdn("dns-test-service-2.dns-e2e.svc"), "A").data("A"),
        ["10.244.2.21"]
    );
    assert_eq!(
        dig(&dns, "21.2.244.10.in-addr.arpa.", "PTR").data("PTR"),
        std::slice::from_ref(&pod_fqdn)
    );
    // The same hostname under another Service does not exist.
    assert_eq!(
        dig(&dns, &fqdn("dns-querier-2.other.dns-e2e.svc"), "A").status,
        "NXDOMAIN"
    );
    assert_eq!(
        dig(
            &dns,
            &fqdn("dns-querier-3.dns-test-service-2.dns-e2e.svc"),
            "A"
        )
        .status,
        "NXDOMAIN"
    );
}

#[test]
fn should_provide_dns_for_external_name_services() {
    let c = cluster(Backend::Embedded);
    c.kubectl.ok(&[
        "create",
        "service",
        "externalname",
        "dns-test-service-3",
        "-n",
        NS,
        "--external-name",
        "foo.example.com",
    ]);
    let dns = Dns::start(&c.server, &[]);
    let name = fqdn("dns-test-service-3.dns-e2e.svc");
    wait_dig(&dns, &name, "CNAME", PROPAGATION, |d| d.status == "NOERROR");
    assert_eq!(
        dig(&dns, &name, "CNAME").data("CNAME"),
        ["foo.example.com."]
    );
    // An A query gets the CNAME (no upstream to chase it with).
    assert_eq!(dig(&dns, &name, "A").data("CNAME"), ["foo.example.com."]);
    // Updated to another name: followed.
    c.kubectl.ok(&[
        "patch",
        "service",
        "dns-test-service-3",
        "-n",
        NS,
        "-p",
        r#"{"spec":{"externalName":"bar.example.com"}}"#,
    ]);
    wait_dig(&dns, &name, "CNAME", PROPAGATION, |d| {
        d.data("CNAME") == ["bar.example.com."]
    });
    // Switched to ClusterIP: an A record.
    c.kubectl.ok(&[
        "patch", "service", "dns-test-service-3", "-n", NS, "--type=merge", "-p",
        r#"{"spec":{"type":"ClusterIP","externalName":null,"clusterIP":"10.96.100.3","ports":[{"name":"http","port":80}]}}"#,
    ]);
    let d = wait_dig(&dns, &name, "A", PROPAGATION, |d| !d.data("A").is_empty());
    assert_eq!(d.data("A"), ["10.96.100.3"]);
    assert!(d.data("CNAME").is_empty());
}

#[test]
fn nxdomain_for_missing_names_nodata_for_missing_types() {
    let c = cluster(Backend::Embedded);
    create_services(&c);
    let dns = Dns::start(&c.server, &[]);
    wait_dig(
        &dns,
        &fqdn("test-service-2.dns-e2e.svc"),
        "A",
        PROPAGATION,
        |d| d.status == "NOERROR",
    );
    let cases = [
        // (name, type, status, has answers)
        (fqdn("missing.dns-e2e.svc"), "A", "NXDOMAIN"),
        (fqdn("test-service-2.missing-ns.svc"), "A", "NXDOMAIN"),
        (fqdn("test-service-2.dns-e2e.svc"), "AAAA", "NOERROR"),
        (fqdn("test-service-2.dns-e2e.svc"), "TXT", "NOERROR"),
        (fqdn("dns-e2e.svc"), "A", "NOERROR"),
        (fqdn("svc"), "A", "NOERROR"),
        (
            fqdn("_http._udp.test-service-2.dns-e2e.svc"),
            "SRV",
            "NXDOMAIN",
        ),
        (
            fqdn("10-244-1-13.dns-test-service.dns-e2e.svc"),
            "A",
            "NXDOMAIN",
        ),
        (fqdn("not-an-ip.dns-e2e.pod"), "A", "NXDOMAIN"),
    ];
    for (name, rtype, status) in cases {
        let d = dig(&dns, &name, rtype);
        assert_eq!(d.status, status, "{name} {rtype}");
        assert!(d.answer.is_empty(), "{name} {rtype}: {:?}", d.answer);
        // Negative answers carry the zone's SOA (negative caching, RFC 2308).
        assert!(
            d.has_soa_authority(),
            "{name} {rtype}: no SOA in {:?}",
            d.authority
        );
        assert!(d.flags.contains(&"aa".to_owned()));
    }
    let soa = dig(&dns, "cluster.local.", "SOA");
    assert_eq!(soa.answer.len(), 1);
    assert!(
        soa.answer[0]
            .3
            .starts_with("ns.dns.cluster.local. hostmaster.cluster.local. "),
        "{:?}",
        soa.answer
    );
    // Names outside the cluster domain without an upstream: REFUSED.
    assert_eq!(dig(&dns, "example.com.", "A").status, "REFUSED");
    // A reverse name of nothing in the cluster: NXDOMAIN.
    assert_eq!(
        dig(&dns, "9.9.96.10.in-addr.arpa.", "PTR").status,
        "NXDOMAIN"
    );
}

/// Deleting a Service and changing endpoints show in answers (the watch's
/// delay, printed), on both stores.
#[test]
fn answers_follow_changes() {
    for backend in [Backend::Embedded, Backend::Etcd] {
        let c = cluster(backend);
        create_services(&c);
        let dns = Dns::start(&c.server, &[]);
        let name = fqdn("test-service-2.dns-e2e.svc");
        wait_dig(&dns, &name, "A", PROPAGATION, |d| d.status == "NOERROR");
        c.kubectl
            .ok(&["delete", "service", "test-service-2", "-n", NS]);
        let start = Instant::now();
        wait_dig(&dns, &name, "A", PROPAGATION, |d| d.status == "NXDOMAIN");
        let deleted_after = start.elapsed();
        c.kubectl.ok(&[
            "create",
            "service",
            "clusterip",
            "test-service-2",
            "-n",
            NS,
            "--tcp=80:8080",
        ]);
        let start = Instant::now();
        wait_dig(&dns, &name, "A", PROPAGATION, |d| {
            d.status == "NOERROR" && d.data("A").len() == 1
        });
        let created_after = start.elapsed();
        // An endpoint turning ready joins the headless answer.
        c.kubectl.ok(&[
            "patch",
            "endpointslice",
            "dns-test-service-x1",
            "-n",
            NS,
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/endpoints/2/conditions/ready","value":true}]"#,
        ]);
        wait_dig(
            &dns,
            &fqdn("dns-test-service.dns-e2e.svc"),
            "A",
            PROPAGATION,
            |d| d.data("A") == ["10.244.1.11", "10.244.1.12", "10.244.1.13"],
        );
        // The slice deleted: a headless Service without endpoints is NXDOMAIN.
        c.kubectl
            .ok(&["delete", "endpointslice", "dns-test-service-x1", "-n", NS]);
        wait_dig(
            &dns,
            &fqdn("dns-test-service.dns-e2e.svc"),
            "A",
            PROPAGATION,
            |d| d.status == "NXDOMAIN",
        );
        eprintln!(
            "{backend:?}: deletion seen after {deleted_after:?}, creation after {created_after:?}"
        );
    }
}

/// Upstream's "should resolve DNS of partial qualified names for services":
/// short names resolved through the search list of the resolv.conf the
/// node agent writes (`dns::resolv_conf`), by a real stub resolver.
#[test]
fn should_resolve_dns_of_partial_qualified_names_for_services() {
    use hickory_resolver::{
        Resolver,
        config::{ConnectionConfig, NameServerConfig, ResolverConfig},
        net::runtime::TokioRuntimeProvider,
        proto::rr::RecordType,
        system_conf::parse_resolv_conf,
    };

    let c = cluster(Backend::Embedded);
    create_services(&c);
    let dns = Dns::start(&c.server, &[]);
    wait_dig(
        &dns,
        &fqdn("test-service-2.dns-e2e.svc"),
        "A",
        PROPAGATION,
        |d| d.status == "NOERROR",
    );

    let dns_ip: [IpAddr; 1] = ["10.96.0.10".parse().unwrap()];
    let conf = control_plane::dns::resolv_conf(&control_plane::dns::PodDnsInput {
        namespace: NS,
        cluster_domain: "cluster.local",
        cluster_dns: &dns_ip,
        dns_policy: Some("ClusterFirst"),
        host_network: false,
        dns_config: None,
        host_resolv_conf: "",
    })
    .unwrap();
    let text = conf.render();
    assert_eq!(
        text,
        "search dns-e2e.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    // The pod's resolver, as the file configures it; only the server's
    // address is ours (the test has no 10.96.0.10).
    let (parsed, opts) = parse_resolv_conf(&text).unwrap();
    assert_eq!(opts.ndots, 5);
    let mut conn = ConnectionConfig::udp();
    conn.port = dns.addr.port();
    let server = NameServerConfig::new(dns.addr.ip(), true, vec![conn]);
    let config = ResolverConfig::from_parts(None, parsed.search().to_vec(), vec![server]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .unwrap();
        for short in [
            "test-service-2",
            "test-service-2.dns-e2e",
            "test-service-2.dns-e2e.svc",
        ] {
            let found = resolver
                .lookup(short, RecordType::A)
                .await
                .unwrap_or_else(|e| panic!("{short}: {e}"));
            assert_eq!(
                found.query().name().to_string(),
                "test-service-2.dns-e2e.svc.cluster.local.",
                "{short}"
            );
            let ips: Vec<String> = found.answers().iter().map(|r| r.data.to_string()).collect();
            assert_eq!(ips, ["10.96.100.2"], "{short}");
        }
        let srv = resolver
            .lookup("_http._tcp.dns-test-service", RecordType::SRV)
            .await
            .unwrap();
        assert_eq!(srv.answers().len(), 2);
        let headless = resolver
            .lookup("dns-test-service", RecordType::A)
            .await
            .unwrap();
        assert_eq!(headless.answers().len(), 2);
        assert!(
            resolver
                .lookup("no-such-service", RecordType::A)
                .await
                .is_err()
        );
    });
}

/// Names outside the cluster domain go to `--upstream` (here a second
/// `sy-dns` serving another domain on loopback), answers and errors
/// relayed; an ExternalName's outside target is resolved there too.
#[test]
fn other_names_are_forwarded_to_the_upstream() {
    let c = cluster(Backend::Embedded);
    create_services(&c);
    c.kubectl.ok(&[
        "create",
        "service",
        "externalname",
        "elsewhere",
        "-n",
        NS,
        "--external-name",
        "test-service-2.dns-e2e.svc.upstream.test",
    ]);
    let upstream = Dns::start(&c.server, &["--cluster-domain", "upstream.test"]);
    let up = upstream.addr.to_string();
    let dns = Dns::start(&c.server, &["--upstream", &up]);
    let outside = "test-service-2.dns-e2e.svc.upstream.test.";
    let d = wait_dig(&dns, outside, "A", PROPAGATION, |d| d.status == "NOERROR");
    assert_eq!(d.data("A"), ["10.96.100.2"]);
    // Relayed as the upstream answered (CoreDNS' forward does the same):
    // authoritative there, and recursion is available here.
    assert!(d.flags.contains(&"aa".to_owned()), "{:?}", d.flags);
    assert!(d.flags.contains(&"ra".to_owned()));
    assert_eq!(
        dig(&dns, "missing.dns-e2e.svc.upstream.test.", "A").status,
        "NXDOMAIN"
    );
    // Over TCP too.
    assert_eq!(
        dig_at(dns.addr, "+tcp", outside, "A").data("A"),
        ["10.96.100.2"]
    );
    // CNAME to outside, chased upstream.
    let ext = dig(&dns, &fqdn("elsewhere.dns-e2e.svc"), "A");
    assert_eq!(
        ext.data("CNAME"),
        ["test-service-2.dns-e2e.svc.upstream.test."]
    );
    assert_eq!(ext.data("A"), ["10.96.100.2"]);
    // Cluster names are still ours.
    assert_eq!(
        dig(&dns, &fqdn("test-service-2.dns-e2e.svc"), "A").data("A"),
        ["10.96.100.2"]
    );
}

fn http_get(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn health_and_readiness_endpoints() {
    let c = cluster(Backend::Embedded);
    let (h, r) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // Started only once synced (not after the default 5 s wait), so
    // /ready must say 200 on a loaded machine too.
    let _dns = Dns::start(
        &c.server,
        &[
            "--health-listen",
            &h,
            "--ready-listen",
            &r,
            "--startup-timeout",
            "60s",
        ],
    );
    assert_eq!(http_get(&h, "/health"), Some(200));
    assert_eq!(http_get(&r, "/ready"), Some(200));
    assert_eq!(http_get(&r, "/nope"), Some(404));
}

#[test]
fn bad_flags_are_named() {
    let c = cluster(Backend::Embedded);
    let out = Command::new(env!("CARGO_BIN_EXE_sy-dns"))
        .arg("--kubeconfig")
        .arg(c.server.kubeconfig())
        .args(["--listen", "127.0.0.1:0", "--upstream", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--upstream \"not-an-address\""), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sy-dns"))
        .arg("--kubeconfig")
        .arg(Path::new("/nonexistent/kubeconfig"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubeconfig"));
}

/// `deploy/dns/` applies as written: the Service at 10.96.0.10 with
/// kube-dns' ports, the Deployment's flags accepted by `sy-dns`, and its
/// ServiceAccount allowed exactly the watches it makes.
#[test]
fn deploy_manifest_applies_and_grants_the_watches() {
    let c = cluster(Backend::Embedded);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/dns");
    c.kubectl.ok(&["apply", "-f", dir]);
    let svc = c.kubectl.json(&[
        "get",
        "service",
        "kube-dns",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    let ports: Vec<String> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p["name"].as_str().unwrap(),
                p["port"],
                p["protocol"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ports, ["dns/53/UDP", "dns-tcp/53/TCP"]);
    let sa = "system:serviceaccount:kube-system:sy-dns";
    for (verb, resource, want) in [
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("list", "services", "yes"),
        ("watch", "namespaces", "yes"),
        ("list", "pods", "no"),
        ("update", "services", "no"),
    ] {
        let out = c.kubectl.run(&[
            "auth",
            "can-i",
            verb,
            resource,
            "--all-namespaces",
            "--as",
            sa,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want,
            "{verb} {resource}"
        );
    }
    // The container's arguments, as sy-dns parses them (only the listen
    // addresses moved to loopback): it starts and answers.
    let deploy = c.kubectl.json(&[
        "get",
        "deployment",
        "sy-dns",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    let args: Vec<String> = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .filter(|a| {
            !a.starts_with("--listen")
                && !a.starts_with("--health-listen")
                && !a.starts_with("--ready-listen")
        })
        .collect();
    // The node's resolv.conf stands in for the pod's (`dnsPolicy: Default`),
    // on loopback: nothing here is forwarded anyway.
    let resolv = c._dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let flag = format!("--upstream-resolv-conf={}", resolv.display());
    let args: Vec<&str> = args
        .iter()
        .map(|a| {
            if a.starts_with("--upstream-resolv-conf=") {
                flag.as_str()
            } else {
                a.as_str()
            }
        })
        .collect();
    assert!(args.contains(&flag.as_str()), "{args:?}");
    let dns = Dns::start(&c.server, &args);
    let d = wait_dig(
        &dns,
        "kube-dns.kube-system.svc.cluster.local.",
        "A",
        PROPAGATION,
        |d| d.status == "NOERROR",
    );
    assert_eq!(d.data("A"), ["10.96.0.10"]);
    assert_eq!(
        dig(&dns, "cluster.local.", "NS").data("NS"),
        ["ns.dns.cluster.local."]
    );
    assert_eq!(
        dig(&dns, "ns.dns.cluster.local.", "A").data("A"),
        ["10.96.0.10"]
    );
}

/// Upstream's "should provide DNS for the cluster": the API server's own
/// Service by name over UDP and TCP, its SRV and PTR, and a pod A record.
#[test]
fn should_provide_dns_for_the_cluster() {
    let c = cluster(Backend::Embedded);
    let dns = Dns::start(&c.server, &[]);
    let name = "kubernetes.default.svc.cluster.local.";
    let d = wait_dig(&dns, name, "A", PROPAGATION, |d| d.status == "NOERROR");
    assert_eq!(d.data("A"), ["10.96.0.1"]);
    assert_eq!(dig(&dns, name, "A").data("A"), ["10.96.0.1"]);
    assert_eq!(
        dig(
            &dns,
            "_https._tcp.kubernetes.default.svc.cluster.local.",
            "SRV"
        )
        .data("SRV"),
        ["0 100 443 kubernetes.default.svc.cluster.local."]
    );
    assert_eq!(
        dig(&dns, "1.0.96.10.in-addr.arpa.", "PTR").data("PTR"),
        [name]
    );
    assert_eq!(
        dig(&dns, &fqdn("10-244-0-5.default.pod"), "A").data("A"),
        ["10.244.0.5"]
    );
}

/// An answer too large for a 512-byte datagram (a headless Service with
/// 60 endpoints, no EDNS) comes truncated over UDP, with the TC flag, and
/// whole over TCP, as resolvers expect to retry.
#[test]
fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let c = cluster(Backend::Embedded);
    let endpoints: String = (1..=60)
        .map(|i| format!("- addresses: [10.244.3.{i}]\n"))
        .collect();
    c.kubectl.ok_stdin(
        &["create", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: dns-e2e}}\nspec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-a, namespace: dns-e2e, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{endpoints}"
        ),
    );
    let dns = Dns::start(&c.server, &[]);
    let name = fqdn("big.dns-e2e.svc");
    wait_dig(&dns, &name, "A", PROPAGATION, |d| d.status == "NOERROR");
    let udp = dig_at(dns.addr, "+notcp +noedns +ignore", &name, "A");
    assert!(udp.flags.contains(&"tc".to_owned()), "{:?}", udp.flags);
    assert!(udp.answer.len() < 60, "{}", udp.answer.len());
    let tcp = dig_at(dns.addr, "+tcp", &name, "A");
    assert_eq!(tcp.data("A").len(), 60);
    assert!(!tcp.flags.contains(&"tc".to_owned()));
    // dig's default EDNS buffer (1232) holds them all over UDP.
    assert_eq!(dig_at(dns.addr, "+notcp", &name, "A").data("A").len(), 60);
}

/// Before its caches have listed (here: the API server is gone), `sy-dns`
/// still starts after `--startup-timeout`, answers SERVFAIL where it
/// would say NXDOMAIN — never denying a name it may not know yet — and
/// reports not ready while staying live.
#[test]
fn unsynced_caches_answer_servfail_and_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let kubeconfig = server.kubeconfig();
    server.kill();
    let (h, r) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_sy-dns"))
        .env("RUST_LOG", "error")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--listen", "127.0.0.1:0", "--startup-timeout", "1s"])
        .args(["--health-listen", &h, "--ready-listen", &r])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let dns = Dns {
        addr: line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .parse()
            .unwrap(),
        child,
    };
    assert_eq!(dig(&dns, &fqdn("web.default.svc"), "A").status, "SERVFAIL");
    assert_eq!(dig(&dns, "example.com.", "A").status, "REFUSED");
    assert_eq!(http_get(&h, "/health"), Some(200));
    assert_eq!(http_get(&r, "/ready"), Some(503));
}
