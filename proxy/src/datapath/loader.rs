//! Loading, attaching and pinning the eBPF object.
//!
//! Pin layout under a bpffs directory (`/sys/fs/bpf/switchyard` by default):
//!
//! ```text
//! <pin-root>/maps/SY_*              every map; a new process adopts them
//! <pin-root>/links/cgroup-<hook>    sock_addr links of the node cgroup
//! <pin-root>/links/tc-ingress-<if>, tc-egress-<if>
//!                                   tcx links of pod-facing interfaces
//! <pin-root>/links/tc-node-ingress-<if>, tc-node-egress-<if>
//!                                   tcx links of node-facing interfaces
//! <pin-root>/pinning/               a link on its way in (make-before-break)
//! ```
//!
//! Pinned links keep the programs attached after the process exits, so
//! neither `switchyard attach` nor a daemon restart interrupts traffic. A
//! re-attach is make-before-break: the new link is attached before the old
//! pin is removed.
use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as AyaHashMap, MapInfo, MapType},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
    },
};
use proxy_common::{config::DatapathConfig, global_names, map_names, program_names as progs};

use tracing::warn;

use super::{AyaLbMaps, MapError, MapSizes};

/// Where the daemon pins its state unless told otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/switchyard";

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Why loading, attaching, pinning or cleaning up failed; each names the
/// path, program or map concerned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds the pin root's lock.
    #[error(
        "pin root `{path}` is in use by another switchyard process (a daemon, attach, apply-file or cleanup): one writer at a time"
    )]
    PinRootBusy {
        /// The pin root.
        path: String,
    },
    /// The pin root is not on a bpffs.
    #[error("`{path}` is not on a bpf filesystem; mount one with `mount -t bpf bpf {path}`")]
    NotBpffs {
        /// The pin root.
        path: String,
    },
    /// A pin directory cannot be made or read.
    #[error("cannot create or read pin directory `{path}`")]
    PinDir {
        /// The directory.
        path: String,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// The object could not be loaded (maps created, relocations).
    #[error("failed to load the eBPF object")]
    Load(#[source] aya::EbpfError),
    /// The object lacks a program this version needs (a build problem).
    #[error("program `{name}` is missing from the eBPF object")]
    MissingProgram {
        /// The program's name.
        name: &'static str,
    },
    /// The kernel refused a program (the verifier's log is in the source).
    #[error("failed to load program `{name}` into the kernel")]
    LoadProgram {
        /// The program's name.
        name: &'static str,
        /// What the kernel said.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A program could not be attached.
    #[error("failed to attach `{name}` to {target}")]
    Attach {
        /// The program's name.
        name: &'static str,
        /// The cgroup or interface hook.
        target: String,
        /// What the kernel said.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The cgroup directory cannot be opened.
    #[error("cannot open cgroup `{path}`")]
    Cgroup {
        /// The cgroup directory.
        path: String,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// A link could not be pinned (the old one, if any, stays attached).
    #[error("failed to pin link at `{path}`")]
    PinLink {
        /// The pin's path.
        path: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A pinned map has another layout than this version's.
    #[error(
        "pinned map `{path}` is a {found} map; this version needs {expected}. \
         It was made by an incompatible version: run `switchyard cleanup` (this drops \
         tracked flows) or use another --pin-root"
    )]
    PinnedLayout {
        /// The map's pin.
        path: String,
        /// Its type, key and value sizes.
        found: String,
        /// This version's.
        expected: String,
    },
    /// A map operation failed.
    #[error(transparent)]
    Maps(#[from] MapError),
}

/// Result of loader operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The TC programs: pod-facing ingress, node-facing ingress and egress.
const TC_PROGRAMS: [&str; 3] = [progs::TC_INGRESS, progs::TC_NODE_INGRESS, progs::TC_EGRESS];

/// The sock_addr programs and the hook each attaches to.
const SOCK_PROGRAMS: [(&str, &str); 4] = [
    (progs::CONNECT4, "connect4"),
    (progs::SENDMSG4, "sendmsg4"),
    (progs::RECVMSG4, "recvmsg4"),
    (progs::GETPEERNAME4, "getpeername4"),
];

/// A loaded eBPF object, its maps pinned under `pin_root` if one is set.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_root: Option<PathBuf>,
    config: DatapathConfig,
    /// Links that could not be pinned, kept attached for our lifetime.
    unpinnable: Vec<Box<dyn std::any::Any + Send>>,
}

impl Dataplane {
    /// Loads the object and its programs with the default
    /// [`DatapathConfig`]. With a `pin_root`, maps already pinned there are
    /// adopted (their contents and sizes kept) and new ones are pinned;
    /// without, everything lives as long as this value.
    pub fn load(pin_root: Option<&Path>, sizes: &MapSizes) -> Result<Self> {
        Self::load_with(pin_root, sizes, &DatapathConfig::DEFAULT)
    }

    /// [`Self::load`] with conntrack lifetimes and the source-NAT port range
    /// of `config`, fixed for the programs' lifetime.
    pub fn load_with(
        pin_root: Option<&Path>,
        sizes: &MapSizes,
        config: &DatapathConfig,
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader.override_global(global_names::CONFIG, config, true);
        for (name, entries) in sizes.max_entries() {
            loader.map_max_entries(name, entries);
        }
        let map_paths: Vec<(&str, PathBuf)> = match pin_root {
            Some(root) => {
                let dir = root.join("maps");
                ensure_pin_dir(&dir)?;
                map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            check_pinned_layout(name, path, sizes)?;
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(crate::EBPF_OBJECT).map_err(Error::Load)?;
        for (name, _) in SOCK_PROGRAMS {
            program::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::LoadProgram { name, source })?;
        }
        for name in TC_PROGRAMS {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| Error::LoadProgram { name, source })?;
        }
        // An earlier version's maps, before any of our programs attaches.
        if let Some(root) = pin_root {
            let carried = super::migrate::carry_over(&root.join("maps"), config)?;
            if carried.any() {
                tracing::info!(
                    services = carried.services,
                    members = carried.members,
                    conntrack = carried.conntrack,
                    "carried an earlier version's maps over"
                );
            }
        }
        Ok(Self {
            ebpf,
            pin_root: pin_root.map(Path::to_path_buf),
            config: *config,
            unpinnable: Vec::new(),
        })
    }

    /// Attaches the four sock_addr programs to the cgroup v2 directory
    /// `cgroup`. Never give it the machine's root cgroup unless every
    /// connect on the machine should be load-balanced.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let fd = fs::File::open(cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        for (name, hook) in SOCK_PROGRAMS {
            let prog = program::<CgroupSockAddr>(&mut self.ebpf, name)?;
            let failed = |source| Error::Attach {
                name,
                target: format!("cgroup `{}`", cgroup.display()),
                source,
            };
            // bpf_link attachments (5.7+) always coexist with other programs
            // on the cgroup; the kernel refuses an explicit ALLOW_MULTI flag.
            let id = prog
                .attach(&fd, CgroupAttachMode::Single)
                .map_err(&failed)?;
            if self.pin_root.is_some() {
                let link = prog.take_link(id).map_err(&failed)?;
                // sock_addr links are bpf_links on every kernel we support (5.18+).
                self.pin(link, &format!("cgroup-{hook}"))?;
            }
        }
        Ok(())
    }

    /// Attaches the pod-facing programs to the egress and ingress of
    /// `iface` (in the calling thread's network namespace), with tcx where
    /// the kernel has it. Egress first: no flow is translated on the way in
    /// before its replies can be translated on the way back.
    pub fn attach_tc(&mut self, iface: &str) -> Result<()> {
        self.attach_tc_program(progs::TC_EGRESS, iface, TcAttachType::Egress, "tc-egress")?;
        self.attach_tc_program(
            progs::TC_INGRESS,
            iface,
            TcAttachType::Ingress,
            "tc-ingress",
        )
    }

    /// Makes [`map_names::IF_REDIRECT`] hold exactly `redirects`: for each
    /// pod interface that is a bridge port, its index → the bridge's index.
    /// Set before attaching to such an interface: its programs redirect
    /// replies there, and a bridge port cannot resolve the pod's address
    /// (ARP answers reach the bridge, never the port).
    pub fn set_if_redirects(&mut self, redirects: &BTreeMap<u32, u32>) -> Result<()> {
        let name = map_names::IF_REDIRECT;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(MapError::Missing { map: name })?;
        let mut map: AyaHashMap<_, u32, u32> =
            AyaHashMap::try_from(map).map_err(|source| MapError::Layout { map: name, source })?;
        let held: Vec<u32> = map.keys().filter_map(std::result::Result::ok).collect();
        for k in held.iter().filter(|k| !redirects.contains_key(k)) {
            let _ = map.remove(k);
        }
        for (k, v) in redirects {
            if map.get(k, 0).ok() != Some(*v) {
                map.insert(k, v, 0).map_err(|e| MapError::Write {
                    op: "update",
                    map: name,
                    key: k.to_string(),
                    source: super::aya_maps::io_error(e),
                })?;
            }
        }
        Ok(())
    }

    /// Detaches what [`Self::attach_tc`] (`node: false`) or
    /// [`Self::attach_node_iface`] (`node: true`) attached to `iface`, by
    /// removing the pins. An interface that is gone has lost its programs
    /// already; this removes the pins it left. Missing pins are fine.
    pub fn detach_iface(&self, iface: &str, node: bool) -> Result<()> {
        let Some(root) = &self.pin_root else {
            return Ok(());
        };
        let files: &[&str] = if node {
            &["tc-node-ingress", "tc-node-egress"]
        } else {
            &["tc-ingress", "tc-egress"]
        };
        for prefix in files {
            let path = root.join("links").join(format!("{prefix}-{iface}"));
            match PinnedLink::from_pin(&path) {
                Ok(link) => drop(link.unpin()),
                Err(_) => match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::PinDir {
                            path: path.display().to_string(),
                            source,
                        });
                    }
                },
            }
        }
        Ok(())
    }

    /// Attaches the node-facing programs to the ingress and egress of
    /// `iface`: an interface the node's NodePort addresses (and its traffic
    /// with other nodes) use.
    pub fn attach_node_iface(&mut self, iface: &str) -> Result<()> {
        self.attach_tc_program(
            progs::TC_EGRESS,
            iface,
            TcAttachType::Egress,
            "tc-node-egress",
        )?;
        self.attach_tc_program(
            progs::TC_NODE_INGRESS,
            iface,
            TcAttachType::Ingress,
            "tc-node-ingress",
        )
    }

    fn attach_tc_program(
        &mut self,
        name: &'static str,
        iface: &str,
        hook: TcAttachType,
        pin_prefix: &str,
    ) -> Result<()> {
        let prog = program::<SchedClassifier>(&mut self.ebpf, name)?;
        let failed = |source| Error::Attach {
            name,
            target: format!("{hook:?} of `{iface}`"),
            source,
        };
        // Kernels before 6.6 need the clsact qdisc (it may already exist);
        // tcx needs none, and creating one costs a netlink round trip and
        // an RCU grace period per interface, which a burst of new pods
        // waits for before their endpoints are written.
        if !tcx_supported() {
            let _ = aya::programs::tc::qdisc_add_clsact(iface);
        }
        let id = prog.attach(iface, hook).map_err(&failed)?;
        if self.pin_root.is_some() {
            let link = prog.take_link(id).map_err(&failed)?;
            // tcx links (6.6+) can be pinned; netlink filters before cannot.
            if <&FdLink>::try_from(&link).is_ok() {
                self.pin(link, &format!("{pin_prefix}-{iface}"))?;
            } else {
                warn!(
                    iface,
                    "kernel cannot pin a TC link before 6.6; it detaches when this process exits"
                );
                self.unpinnable.push(Box::new(link));
            }
        }
        Ok(())
    }

    /// Removes the pins of maps earlier versions used under other names
    /// (their layout changed): call once the new programs are attached, so
    /// nothing references them any more.
    pub fn remove_obsolete_maps(&self) -> Result<usize> {
        let Some(root) = &self.pin_root else {
            return Ok(0);
        };
        // Flows the old programs made until ours took over.
        super::migrate::carry_conntrack(&root.join("maps"), &self.config)?;
        let mut removed = 0;
        for name in map_names::OBSOLETE {
            let path = root.join("maps").join(name);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::PinDir {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }

    /// Pins `link` as `<pin-root>/links/<file>`, replacing what was pinned
    /// there: the old link detaches only once the new one is in place.
    fn pin<L>(&self, link: L, file: &str) -> Result<()>
    where
        FdLink: TryFrom<L>,
        <FdLink as TryFrom<L>>::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(root) = &self.pin_root else {
            return Ok(());
        };
        let path = root.join("links").join(file);
        let link = FdLink::try_from(link).map_err(|e| Error::PinLink {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        pin_replacing(link, &path)
    }

    /// The load-balancing maps, for the reconciler.
    pub fn lb_maps(&mut self) -> Result<AyaLbMaps> {
        match &self.pin_root {
            Some(root) => Ok(AyaLbMaps::from_pins(&root.join("maps"))?),
            None => Ok(AyaLbMaps::from_ebpf(&mut self.ebpf)?),
        }
    }

    /// The drop counters of the per-packet paths.
    pub fn drop_counters(&mut self) -> Result<super::drops::DropCounters> {
        let map = match &self.pin_root {
            Some(root) => super::open_pinned(&root.join("maps"), map_names::STATS4)?,
            None => self
                .ebpf
                .take_map(map_names::STATS4)
                .ok_or(MapError::Missing {
                    map: map_names::STATS4,
                })?,
        };
        Ok(super::drops::DropCounters::from_map(map)?)
    }

    /// The loaded object, e.g. to take the conntrack map or run programs.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Type, key size and value size of every map in this build.
fn layout(name: &str) -> Option<(MapType, usize, usize)> {
    use proxy_common::{config::*, ct::*, lb::*, sock::*};
    let l = match name {
        n if n == map_names::LB4_SERVICES => {
            (MapType::Hash, size_of::<Lb4Key>(), size_of::<Lb4Service>())
        }
        n if n == map_names::LB4_BACKENDS => {
            (MapType::Hash, size_of::<u32>(), size_of::<Lb4Backend>())
        }
        n if n == map_names::LB4_MEMBERS => {
            (MapType::Hash, size_of::<Lb4MemberKey>(), size_of::<u8>())
        }
        // The trie's key is the prefix length (u32) and the data.
        n if n == map_names::LB4_SOURCE_RANGES => (
            MapType::LpmTrie,
            4 + size_of::<Lb4SourceRangeKey>(),
            size_of::<u8>(),
        ),
        n if n == map_names::FRAG4 => (
            MapType::LruHash,
            size_of::<Frag4Key>(),
            size_of::<Frag4Value>(),
        ),
        n if n == map_names::NODE4 => (MapType::Array, 4, size_of::<Node4Config>()),
        n if n == map_names::STATS4 => (MapType::PerCpuArray, 4, size_of::<u64>()),
        n if n == map_names::IF_REDIRECT => (MapType::Hash, 4, 4),
        n if n == map_names::LB4_AFFINITY => (
            MapType::LruHash,
            size_of::<Lb4AffinityKey>(),
            size_of::<Lb4AffinityValue>(),
        ),
        n if n == map_names::CT4 => (MapType::LruHash, size_of::<Ct4Key>(), size_of::<Ct4Value>()),
        n if n == map_names::SOCK4_REVNAT => (
            MapType::LruHash,
            size_of::<Sock4RevNatKey>(),
            size_of::<Sock4RevNatValue>(),
        ),
        n if n == map_names::SOCK4_FWD => {
            (MapType::LruHash, size_of::<Sock4FwdKey>(), size_of::<u32>())
        }
        _ => return None,
    };
    Some(l)
}

/// Refuses to adopt a pinned map whose layout differs from this build's: the
/// programs would read its entries with the wrong meaning. A differing size
/// is only reported: pinned maps keep the size they were created with.
fn check_pinned_layout(name: &'static str, path: &Path, sizes: &MapSizes) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let (ty, key, value) = layout(name).ok_or(Error::MissingProgram { name })?;
    let describe =
        |t: &str, k: u32, v: u32| format!("{t} map with {k}-byte keys and {v}-byte values");
    let expected = describe(&format!("{ty:?}"), key as u32, value as u32);
    let info = MapInfo::from_pin(path).map_err(|e| Error::PinnedLayout {
        path: path.display().to_string(),
        found: format!("unreadable ({e})"),
        expected: expected.clone(),
    })?;
    let found_ty = info
        .map_type()
        .map_or_else(|e| format!("{e}"), |t| format!("{t:?}"));
    if found_ty != format!("{ty:?}")
        || info.key_size() as usize != key
        || info.value_size() as usize != value
    {
        return Err(Error::PinnedLayout {
            path: path.display().to_string(),
            found: describe(&found_ty, info.key_size(), info.value_size()),
            expected,
        });
    }
    let wanted = sizes
        .max_entries()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, e)| e);
    if wanted.is_some_and(|w| w != info.max_entries()) {
        warn!(
            map = name,
            pinned = info.max_entries(),
            configured = wanted,
            "pinned map keeps its size"
        );
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(Error::MissingProgram { name })
}

/// Pins `link` at `path`, make-before-break: it is pinned under the same
/// name in [`PINNING_DIR`] first, then renamed over the old pin (bpffs
/// renames atomically), so the hook always has a program: the old link
/// detaches only once the new one holds the name. If pinning fails, the old
/// pin stays, and the new link (dropped) detaches. (bpffs allows no `.` in
/// names, hence a directory rather than a suffix.)
fn pin_replacing(link: FdLink, path: &Path) -> Result<()> {
    let dir = path.parent().expect("link paths have a parent");
    ensure_pin_dir(dir)?;
    let staging = dir
        .parent()
        .expect("the links directory has a parent")
        .join(PINNING_DIR);
    ensure_pin_dir(&staging)?;
    let tmp = staging.join(path.file_name().expect("link paths have a file name"));
    // A pin a crashed predecessor left half-way is ours to replace.
    if let Ok(stale) = PinnedLink::from_pin(&tmp) {
        let _ = stale.unpin();
    }
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
        path: path.display().to_string(),
        source,
    };
    let pinned = link.pin(&tmp).map_err(|e| pin_err(Box::new(e)))?;
    if let Err(e) = fs::rename(&tmp, path) {
        // Leave the old pin as it was; the new link goes with `pinned`.
        let _ = pinned.unpin();
        return Err(pin_err(Box::new(e)));
    }
    Ok(())
}

/// Directory under the pin root where a link is pinned on its way in (see
/// `pin_replacing`).
pub const PINNING_DIR: &str = "pinning";

pub(super) fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let err = |source| Error::PinDir {
        path: dir.display().to_string(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let st = nix::sys::statfs::statfs(dir).map_err(|e| err(io::Error::from(e)))?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        return Err(Error::NotBpffs {
            path: dir.display().to_string(),
        });
    }
    Ok(())
}

/// What [`cleanup`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Link pins removed (programs detached).
    pub links: usize,
    /// Map pins removed.
    pub maps: usize,
}

/// Detaches every pinned link and removes every pinned map under
/// `pin_root`, then the directory itself. Missing pins are not an error.
pub fn cleanup(pin_root: &Path) -> Result<Removed> {
    let mut removed = Removed::default();
    let dir_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::PinDir { path, source }
    };
    for links in [pin_root.join("links"), pin_root.join(PINNING_DIR)] {
        if !links.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&links).map_err(dir_err(&links))? {
            let path = entry.map_err(dir_err(&links))?.path();
            match PinnedLink::from_pin(&path) {
                Ok(link) => drop(link.unpin()),
                Err(_) => fs::remove_file(&path).map_err(dir_err(&path))?,
            }
            removed.links += 1;
        }
        fs::remove_dir(&links).map_err(dir_err(&links))?;
    }
    let maps = pin_root.join("maps");
    if maps.is_dir() {
        for entry in fs::read_dir(&maps).map_err(dir_err(&maps))? {
            let path = entry.map_err(dir_err(&maps))?.path();
            fs::remove_file(&path).map_err(dir_err(&path))?;
            removed.maps += 1;
        }
        fs::remove_dir(&maps).map_err(dir_err(&maps))?;
    }
    if pin_root.is_dir() {
        fs::remove_dir(pin_root).map_err(dir_err(pin_root))?;
    }
    Ok(removed)
}

/// Whether the running kernel attaches TC programs with tcx (6.6+), which
/// is what aya picks there.
fn tcx_supported() -> bool {
    static TCX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TCX.get_or_init(|| {
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
    })
}
