//! kube-proxy's iptables-mode restore payload for N ClusterIP Services × M
//! endpoints (../shared/reference/kube-proxy-reference.md §2.4–2.8), for the
//! side-by-side "time to program" baseline: the same table, loaded into the
//! kernel the way kube-proxy loads it (one `iptables-restore --noflush`).
//!
//! Chain names are unique per Service and endpoint as kube-proxy's hashes
//! are (the hashing itself is kube-proxy's CPU, not the kernel's). Past
//! 1000 endpoints kube-proxy runs in large-cluster mode and drops the
//! per-rule comments, so they are left out there too.
use std::fmt::Write as _;

/// Pod CIDR for the "not from a pod" masquerade rule.
const CLUSTER_CIDR: &str = "10.128.0.0/10";

/// ClusterIP of Service `i`: 10.96.0.0/12.
pub fn service_ip(i: usize) -> std::net::Ipv4Addr {
    let n = 0x0a60_0000u32 + 1 + i as u32;
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
