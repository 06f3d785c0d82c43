//! Pod network namespaces and their veths, programmed over rtnetlink.
//!
//! The topology is the test bed's point-to-point one (Calico's and
//! Cilium's layout): each pod gets a named namespace under `/run/netns`,
//! an `eth0` holding its address as a /32, a link-scoped route to the
//! gateway `169.254.1.1` and a default route through it; the node end of the
//! veth (`veth<11 hex digits>`) gets a /32 route to the pod, and the node
//! answers ARP for the gateway because it holds `169.254.1.1/32` on `lo`.
//!
//! Every netlink socket is opened by a thread that entered the namespace it
//! programs (`setns` is per thread, and a socket stays in the namespace it
//! was made in), so the agent itself never changes namespace and never
//! touches the one it runs in unless that is the node's namespace.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use futures::TryStreamExt as _;
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// The pods' default gateway, held by the node on `lo` (link-local, so it
/// never collides with a cluster address).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Where named network namespaces live (iproute2's directory).
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a new thread inside the network namespace at `ns` (a file
/// such as `/run/netns/x` or `/proc/<pid>/ns/net`), with a current-thread
/// tokio runtime for netlink requests.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let file = File::open(&ns).with_context(|| format!("opening netns {}", ns.display()))?;
        setns(file, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering netns {}", ns.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        f(&rt)
    })
    .join()
    .map_err(|_| anyhow!("netns worker thread panicked"))?
}

/// A netlink handle for the calling thread's namespace (inside a runtime).
fn handle() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("rtnetlink connection")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates the named namespace `name` (loopback up) unless it exists.
pub fn create_netns(name: &str) -> Result<PathBuf> {
    let path = netns_path(name);
    if path.exists() && File::open(&path).is_ok_and(|f| is_netns(&f)) {
        return Ok(path);
    }
    std::fs::create_dir_all(NETNS_DIR)?;
    let target = path.clone();
    std::thread::spawn(move || -> Result<()> {
        File::create(&target).with_context(|| format!("creating {}", target.display()))?;
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the new netns on {}", target.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let h = handle()?;
            let lo = link_index(&h, "lo").await?.context("no lo")?;
            h.link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await?;
            Ok(())
        })
    })
    .join()
    .map_err(|_| anyhow!("netns creation thread panicked"))??;
    Ok(path)
}

fn is_netns(f: &File) -> bool {
    // A bind-mounted nsfs file, not the empty placeholder of a failed add.
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| s.filesystem_type().0 == 0x6e73_6673)
}

/// Removes the named namespace (its links go with it).
pub fn delete_netns(name: &str) -> Result<()> {
    let path = netns_path(name);
    if !path.exists() {
        return Ok(());
    }
    let _ = umount2(&path, MntFlags::MNT_DETACH);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// The node end of a pod's veth: `veth` + 11 hex digits of the pod UID's
/// hash (15 characters, the kernel's limit).
pub fn host_if_name(pod_uid: &str) -> String {
    // FNV-1a: stable across runs and releases (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod_uid.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

/// Wires a pod namespace to the node: the veth, the pod's address and
/// routes, the node's route and gateway address. Idempotent (a half-made
/// veth from a crash is replaced).
pub fn wire_pod(node_ns: &Path, pod_ns: &Path, host_if: &str, ip: Ipv4Addr) -> Result<()> {
    let peer = format!("{}p", &host_if[..host_if.len().min(14)]);
    let pod_ns_file =
        File::open(pod_ns).with_context(|| format!("opening {}", pod_ns.display()))?;
    let (host_if2, peer2) = (host_if.to_owned(), peer.clone());
    in_netns(node_ns, move |rt| {
        rt.block_on(async move {
            let h = handle()?;
            if let Some(old) = link_index(&h, &host_if2).await? {
                h.link().del(old).execute().await?;
            }
            h.link()
                .add(LinkVeth::new(&host_if2, &peer2).build())
                .execute()
                .await
                .with_context(|| format!("adding veth {host_if2}"))?;
            let p = link_index(&h, &peer2)
                .await?
                .context("veth peer vanished")?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(p)
                        .setns_by_fd(pod_ns_file.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .context("moving the veth peer into the pod's netns")?;
            let hi = link_index(&h, &host_if2).await?.context("veth vanished")?;
            h.link()
                .set(LinkUnspec::new_with_index(hi).up().build())
                .execute()
                .await?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(ip, 32)
                        .output_interface(hi)
                        .build(),
                )
                .replace()
                .execute()
                .await
                .with_context(|| format!("route to {ip} via {host_if2}"))?;
            // The gateway the pods route through, on the node's lo.
            let lo = link_index(&h, "lo").await?.context("no lo")?;
            if let Err(e) = h.address().add(lo, IpAddr::V4(GATEWAY), 32).execute().await
                && !matches!(&e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
            {
                return Err(anyhow::Error::from(e).context("adding the pod gateway to lo"));
            }
            Ok(())
        })
    })?;
    in_netns(pod_ns, move |rt| {
        rt.block_on(async move {
            let h = handle()?;
            let i = link_index(&h, &peer)
                .await?
                .context("veth peer not in the pod")?;
            h.link()
                .set(LinkUnspec::new_with_index(i).name("eth0").build())
                .execute()
                .await?;
            h.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await?;
            h.address()
                .add(i, IpAddr::V4(ip), 32)
                .execute()
                .await
                .with_context(|| format!("adding {ip}/32 to the pod's eth0"))?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .destination_prefix(GATEWAY, 32)
                        .output_interface(i)
                        .scope(netlink_packet_route::route::RouteScope::Link)
                        .build(),
                )
                .execute()
                .await?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(GATEWAY)
                        .output_interface(i)
                        .build(),
                )
                .execute()
                .await
                .context("the pod's default route")?;
            Ok(())
        })
    })
}

/// Removes the node end of a pod's veth (the pair goes with it) and its
/// route; a missing veth is fine.
pub fn unwire_pod(node_ns: &Path, host_if: &str) -> Result<()> {
    let host_if = host_if.to_owned();
    in_netns(node_ns, move |rt| {
        rt.block_on(async move {
            let h = handle()?;
            if let Some(i) = link_index(&h, &host_if).await? {
                h.link().del(i).execute().await?;
            }
            Ok(())
        })
    })
}

/// The IPv4 addresses of the namespace at `ns`, but loopback and
/// link-local ones (the node's `InternalIP`s).
pub fn node_addresses(ns: &Path) -> Result<Vec<Ipv4Addr>> {
    in_netns(ns, |rt| {
        rt.block_on(async {
            use netlink_packet_route::address::AddressAttribute;
            let h = handle()?;
            let mut out = Vec::new();
            let mut addrs = h.address().get().execute();
            while let Some(a) = addrs.try_next().await? {
                for attr in &a.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(v4)) = attr
                        && !v4.is_loopback()
                        && !v4.is_link_local()
                        && a.header.prefix_len < 32
                    {
                        out.push(*v4);
                    }
                }
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
    })
}

/// Fails unless `path` is a network namespace file.
pub fn check_netns(path: &Path) -> Result<()> {
    let f =
        File::open(path).with_context(|| format!("no network namespace at {}", path.display()))?;
    if path.starts_with("/proc") || is_netns(&f) {
        Ok(())
    } else {
        bail!("{} is not a network namespace", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_if_names_fit_the_kernel_limit_and_differ() {
        let a = host_if_name("0b9c1a5e-1111-4e8e-9d7b-3f6c5c2d0a01");
        let b = host_if_name("0b9c1a5e-1111-4e8e-9d7b-3f6c5c2d0a02");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, b);
        assert_eq!(a, host_if_name("0b9c1a5e-1111-4e8e-9d7b-3f6c5c2d0a01"));
    }
}
