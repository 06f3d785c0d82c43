//! kube-proxy's iptables-mode restore payloads, for the side-by-side
//! baselines: N ClusterIP Services × M endpoints (the "time to program"
//! baseline: the same table, loaded the way kube-proxy loads it, one
//! `iptables-restore --noflush`), and a Service's NodePorts (the NodePort
//! benchmark). Layouts follow kube-proxy's proxier: KUBE-SERVICES capture
//! rules, per-Service KUBE-SVC/-SVL/-EXT chains, per-endpoint KUBE-SEP
//! chains, the masquerade mark and KUBE-POSTROUTING.
//!
//! Chain names are unique per Service and endpoint as kube-proxy's hashes
//! are (the hashing itself is kube-proxy's CPU, not the kernel's). Past
//! 1000 endpoints kube-proxy runs in large-cluster mode and drops the
//! per-rule comments, so they are left out there too.
use std::fmt::Write as _;

/// Pod CIDR for the "not from a pod" masquerade rule.
const CLUSTER_CIDR: &str = "10.128.0.0/10";

/// ClusterIP of Service `i`: from 10.96.1.0 up, clear of 10.96.0.1 (the
/// `kubernetes` Service's, which the API server allocates itself).
pub fn service_ip(i: usize) -> std::net::Ipv4Addr {
    let n = 0x0a60_0100u32 + i as u32;
    n.into()
}

/// Address of endpoint `j` of Service `i`: unique across the table, in
/// 10.128.0.0/10.
pub fn endpoint_ip(i: usize, j: usize, per_service: usize) -> std::net::Ipv4Addr {
    let n = 0x0a80_0000u32 + 1 + (i * per_service + j) as u32;
    n.into()
}

pub fn restore_payload(services: usize, endpoints: usize, port: u16, target: u16) -> String {
    let large = services * endpoints > 1000;
    let comment = |c: &str| {
        if large {
            String::new()
        } else {
            format!("-m comment --comment \"{c}\" ")
        }
    };
    let mut chains = String::new();
    let mut rules = String::new();
    for i in 0..services {
        let spn = format!("bench/svc-{i}:http");
        let svc = format!("KUBE-SVC-{i:016X}");
        let vip = service_ip(i);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES {}-m tcp -p tcp -d {vip} --dport {port} -j {svc}",
            comment(&format!("{spn} cluster IP"))
        );
        let _ = writeln!(
            rules,
            "-A {svc} {}-m tcp -p tcp -d {vip} --dport {port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            comment(&format!("{spn} cluster IP"))
        );
        for j in 0..endpoints {
            let sep = format!("KUBE-SEP-{:016X}", i * endpoints + j);
            let ep = endpoint_ip(i, j, endpoints);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let left = endpoints - j;
            let pick = if left > 1 {
                format!(
                    "-m statistic --mode random --probability {:.10} ",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                rules,
                "-A {svc} {}{pick}-j {sep}",
                comment(&format!("{spn} -> {ep}:{target}"))
            );
            let _ = writeln!(rules, "-A {sep} {}-s {ep} -j KUBE-MARK-MASQ", comment(&spn));
            let _ = writeln!(
                rules,
                "-A {sep} {}-m tcp -p tcp -j DNAT --to-destination {ep}:{target}",
                comment(&spn)
            );
        }
    }
    format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n{chains}\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n{rules}COMMIT\n"
    )
}

/// kube-proxy's nat rules for one Service's NodePorts — `ports` as
/// (nodePort, targetPort) — with one endpoint `backend`, under
/// `externalTrafficPolicy: Local` (`local`) or `Cluster`: the capture rule
/// at the end of KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXT (masquerading for
/// Cluster; the pod and local-source short-circuits, then KUBE-SVL, for
/// Local), the endpoint chains, and KUBE-POSTROUTING's MASQUERADE.
/// The hook jumps (PREROUTING/OUTPUT → KUBE-SERVICES, POSTROUTING →
/// KUBE-POSTROUTING) are the caller's, as kube-proxy adds them outside
/// the restore.
pub fn nodeport_payload(ports: &[(u16, u16)], backend: std::net::Ipv4Addr, local: bool) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for (i, (node_port, target)) in ports.iter().enumerate() {
        let spn = format!("bench/np-{i}:http");
        let (svc, ext, sep) = (
            format!("KUBE-SVC-NP{i:014X}"),
            format!("KUBE-EXT-NP{i:014X}"),
            format!("KUBE-SEP-NP{i:014X}"),
        );
        let svl = format!("KUBE-SVL-NP{i:014X}");
        for c in [&svc, &ext, &sep, &svl] {
            let _ = writeln!(chains, ":{c} - [0:0]");
        }
        let _ = writeln!(
            rules,
            "-A KUBE-NODEPORTS -m comment --comment {spn} -m tcp -p tcp --dport {node_port} -j {ext}"
        );
        if local {
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"pod traffic for {spn} external destinations\" -s {CLUSTER_CIDR} -j {svc}"
            );
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"route LOCAL traffic for {spn} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
            );
            let _ = writeln!(rules, "-A {ext} -j {svl}");
            let _ = writeln!(
                rules,
                "-A {svl} -m comment --comment \"{spn} -> {backend}:{target}\" -j {sep}"
            );
        } else {
            let _ = writeln!(
                rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {spn} external destinations\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(rules, "-A {ext} -j {svc}");
        }
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment \"{spn} -> {backend}:{target}\" -j {sep}"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {spn} -s {backend} -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {spn} -m tcp -p tcp -j DNAT --to-destination {backend}:{target}"
        );
    }
    format!(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n{chains}\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n{rules}\
-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn payload_has_kube_proxys_rule_count() {
        // Per Service: capture + masquerade + N jumps + 2N SEP rules.
        let p = super::restore_payload(3, 4, 80, 8080);
        let rules = p.lines().filter(|l| l.starts_with("-A KUBE-S")).count();
        assert_eq!(rules, 3 * (2 + 4 + 2 * 4));
        assert!(p.contains("--probability 0.2500000000 -j KUBE-SEP-0000000000000000"));
    }
}
