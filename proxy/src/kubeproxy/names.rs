//! kube-proxy's object names: hashed iptables chain names
//! (`pkg/proxy/iptables/proxier.go`, `servicePortChainNameBase` and
//! `servicePortEndpointChainNameBase`) and nftables name bases
//! (`pkg/proxy/nftables/proxier.go`, `servicePortChainNameBase` and
//! `servicePortEndpointChainNameBase`).
//!
//! Both hash with SHA-256 and encode in base32 (RFC 4648, standard
//! alphabet, upper case); iptables keeps 16 characters, nftables 8.
use crate::{desired::ServicePort, model::BackendAddr};

/// The first `len` characters of base32(SHA-256(`input`)).
pub fn hash(input: &str, len: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, input.as_bytes());
    let mut s = data_encoding::BASE32.encode(digest.as_ref());
    s.truncate(len);
    s
}

/// The protocol as kube-proxy spells it in names and matches.
pub fn proto_lower(sp: &ServicePort) -> &'static str {
    match sp.proto {
        crate::model::Protocol::Tcp => "tcp",
        crate::model::Protocol::Udp => "udp",
        crate::model::Protocol::Sctp => "sctp",
    }
}

/// The 16-character hash every per-ServicePort iptables chain
/// (`KUBE-SVC-`, `KUBE-SVL-`, `KUBE-EXT-`, `KUBE-FW-`) shares:
/// h16(`ns/name:port` + protocol).
pub fn iptables_service_hash(sp: &ServicePort) -> String {
    hash(&format!("{}{}", sp.name, proto_lower(sp)), 16)
}

/// `KUBE-SEP-` + h16(`ns/name:port` + protocol + `IP:port`).
pub fn iptables_endpoint_chain(sp: &ServicePort, ep: &BackendAddr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash(
            &format!("{}{}{}:{}", sp.name, proto_lower(sp), ep.addr, ep.port),
            16
        )
    )
}

/// nftables' readable part of a ServicePort's names:
/// `ns/name/protocol/portname` (the port name empty when unnamed).
fn nft_service_readable(sp: &ServicePort) -> String {
    let (svc, port) = sp.name.split_once(':').unwrap_or((&sp.name, ""));
    format!("{svc}/{}/{port}", proto_lower(sp))
}

/// nftables' name base of a ServicePort: `HASH8-ns/name/protocol/portname`,
/// e.g. `ULMVA6XW-ns1/svc1/tcp/p80`.
pub fn nft_service_base(sp: &ServicePort) -> String {
    let readable = nft_service_readable(sp);
    truncate(format!("{}-{readable}", hash(&readable, 8)))
}

/// nftables' name base of an endpoint: `HASH8-ns/name/protocol/port__IP/port`,
/// e.g. `5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`.
pub fn nft_endpoint_base(sp: &ServicePort, ep: &BackendAddr) -> String {
    let readable = format!("{}__{}/{}", nft_service_readable(sp), ep.addr, ep.port);
    truncate(format!("{}-{readable}", hash(&readable, 8)))
}

/// nft names are limited to 256 bytes; kube-proxy keeps 240 (the longest
/// prefix is 16) and cuts longer ones to 237 plus `...`.
fn truncate(mut name: String) -> String {
    if name.len() > 240 {
        name.truncate(237);
        name.push_str("...");
    }
    name
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::Protocol;

    fn sp(name: &str) -> ServicePort {
        ServicePort {
            name: name.into(),
            proto: Protocol::Tcp,
            ..ServicePort::default()
        }
    }

    fn ep(a: [u8; 4], port: u16) -> BackendAddr {
        BackendAddr {
            addr: Ipv4Addr::from(a),
            port,
            proto: Protocol::Tcp,
        }
    }

    /// Vectors from kube-proxy's own tests and comments.
    #[test]
    fn iptables_names_match_kube_proxy() {
        assert_eq!(
            iptables_service_hash(&sp("ns1/svc1:p80")),
            "XPGD46QRK7WJZT7O"
        );
        assert_eq!(iptables_service_hash(&sp("ns1/svc1")), "AQI2S6QIMU7PVVRP");
        assert_eq!(
            iptables_service_hash(&sp("default/kubernetes:https")),
            "NPX46M4PTMTKRN6Y"
        );
        assert_eq!(
            iptables_endpoint_chain(&sp("ns1/svc1:p80"), &ep([10, 180, 0, 1], 80)),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            iptables_endpoint_chain(&sp("ns1/svc1:p80"), &ep([10, 180, 0, 2], 80)),
            "KUBE-SEP-LXVODXWDISEETFEF"
        );
    }

    #[test]
    fn nftables_names_match_kube_proxy() {
        assert_eq!(
            nft_service_base(&sp("ns1/svc1:p80")),
            "ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft_endpoint_base(&sp("ns1/svc1:p80"), &ep([10, 180, 0, 1], 80)),
            "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        let long = sp(&format!("ns/{}:p", "x".repeat(300)));
        let base = nft_service_base(&long);
        assert_eq!(base.len(), 240);
        assert!(base.ends_with("..."));
    }
}
