//! The node's local image store: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/…`) that OCI layouts and `docker save`
//! tarballs are imported into, and image root filesystems unpacked from
//! it once per manifest (layers in order, whiteouts applied). No registry
//! is ever contacted: a pod's image must have been imported.
use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, Read, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use serde_json::{Value, json};

/// The annotation naming an image in `index.json` (image-spec).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What a container takes from its image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `uid[:gid]` (only numeric users are supported).
    pub user: Option<String>,
}

/// A resolved image: where its root filesystem is unpacked, its config,
/// and its manifest digest (`sha256:…`, the `imageID`).
#[derive(Clone, Debug)]
pub struct Image {
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    pub digest: String,
}

/// An image store rooted at a directory (created on first use).
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The names an image reference may be stored under: as written, with
/// `:latest`, and without Docker Hub's `docker.io/` and `library/`.
pub fn candidate_names(image: &str) -> Vec<String> {
    let mut base = vec![image.to_owned()];
    for prefix in ["docker.io/library/", "docker.io/", "library/"] {
        if let Some(rest) = image.strip_prefix(prefix) {
            base.push(rest.to_owned());
        }
    }
    let mut out = Vec::new();
    for b in base {
        let last = b.rsplit('/').next().unwrap_or(&b);
        if !last.contains(':') && !b.contains('@') {
            out.push(format!("{b}:latest"));
        }
        out.push(b);
    }
    out
}

impl ImageStore {
    /// A store at `root` (`<root>/layout` is the OCI layout, `<root>/unpacked`
    /// the root filesystems).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    fn layout(&self) -> PathBuf {
        self.root.join("layout")
    }

    fn blob(&self, digest: &str) -> Result<PathBuf> {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            bail!("digest `{digest}` is not sha256");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("digest `{digest}` is malformed");
        }
        Ok(self.layout().join("blobs/sha256").join(hex))
    }

    fn init(&self) -> Result<()> {
        std::fs::create_dir_all(self.layout().join("blobs/sha256"))?;
        let ol = self.layout().join("oci-layout");
        if !ol.exists() {
            std::fs::write(&ol, r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let idx = self.layout().join("index.json");
        if !idx.exists() {
            std::fs::write(
                &idx,
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            )?;
        }
        Ok(())
    }

    fn read_index(&self) -> Result<Value> {
        let p = self.layout().join("index.json");
        Ok(serde_json::from_slice(
            &std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )?)
    }

    /// Adds (or moves) `name` to point at the manifest descriptor `desc`.
    fn tag(&self, name: &str, mut desc: Value) -> Result<()> {
        let mut idx = self.read_index()?;
        let list = idx["manifests"]
            .as_array_mut()
            .context("index.json has no manifests")?;
        list.retain(|d| d["annotations"][REF_NAME].as_str() != Some(name));
        desc["annotations"] = json!({ REF_NAME: name });
        list.push(desc);
        let tmp = self.layout().join("index.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&idx)?)?;
        std::fs::rename(tmp, self.layout().join("index.json"))?;
        Ok(())
    }

    fn put_blob(&self, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", sha256_hex(data));
        let p = self.blob(&digest)?;
        if !p.exists() {
            let tmp = p.with_extension("tmp");
            std::fs::write(&tmp, data)?;
            std::fs::rename(tmp, &p)?;
        }
        Ok(digest)
    }

    fn put_blob_from(&self, r: &mut dyn Read) -> Result<(String, u64)> {
        let tmp = self.layout().join("blobs/sha256/incoming.tmp");
        let mut f = File::create(&tmp)?;
        let n = std::io::copy(r, &mut f)?;
        drop(f);
        let digest = format!("sha256:{}", sha256_file(&tmp)?);
        std::fs::rename(&tmp, self.blob(&digest)?)?;
        Ok((digest, n))
    }

    /// Imports an OCI image layout directory, or a tarball: `docker save`'s
    /// format (`manifest.json`) or an OCI layout archive. Returns the names
    /// imported. Every blob's digest is verified.
    pub fn import(&self, path: &Path) -> Result<Vec<String>> {
        self.init()?;
        if path.is_dir() {
            return self.import_layout(path);
        }
        let tmp = tempdir_in(&self.root)?;
        let mut ar = tar::Archive::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        );
        ar.unpack(&tmp)
            .with_context(|| format!("unpacking {}", path.display()))?;
        let r = if tmp.join("oci-layout").exists() {
            self.import_layout(&tmp)
        } else if tmp.join("manifest.json").exists() {
            self.import_docker(&tmp)
        } else {
            Err(anyhow::anyhow!(
                "{} is neither an OCI layout nor a `docker save` archive (no oci-layout or manifest.json)",
                path.display()
            ))
        };
        let _ = std::fs::remove_dir_all(&tmp);
        r
    }

    fn import_layout(&self, dir: &Path) -> Result<Vec<String>> {
        let index = ImageIndex::from_file(dir.join("index.json"))
            .with_context(|| format!("{}: index.json", dir.display()))?;
        let mut names = Vec::new();
        for desc in index.manifests() {
            let name = desc
                .annotations()
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
                .with_context(|| format!("{}: a manifest without {REF_NAME}", dir.display()))?;
            let mdigest = desc.digest().to_string();
            let copy = |digest: &str| -> Result<()> {
                let hex = digest.strip_prefix("sha256:").context("not sha256")?;
                let src = dir.join("blobs/sha256").join(hex);
                let got = sha256_file(&src)
                    .with_context(|| format!("blob {digest} missing in {}", dir.display()))?;
                if got != hex {
                    bail!("blob {digest} in {} has digest sha256:{got}", dir.display());
                }
                let dst = self.blob(digest)?;
                if !dst.exists() {
                    std::fs::copy(&src, &dst)?;
                }
                Ok(())
            };
            copy(&mdigest)?;
            let m = ImageManifest::from_file(self.blob(&mdigest)?)?;
            copy(m.config().digest().as_ref())?;
            for l in m.layers() {
                copy(l.digest().as_ref())?;
            }
            self.tag(&name, serde_json::to_value(desc)?)?;
            names.push(name);
        }
        Ok(names)
    }

    fn import_docker(&self, dir: &Path) -> Result<Vec<String>> {
        let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
        let mut names = Vec::new();
        for entry in manifest.as_array().context("manifest.json is not a list")? {
            let cfg_path = entry["Config"]
                .as_str()
                .context("manifest.json: no Config")?;
            let cfg = std::fs::read(safe_join(dir, cfg_path)?)?;
            let cfg_digest = self.put_blob(&cfg)?;
            let mut layers = Vec::new();
            for l in entry["Layers"]
                .as_array()
                .context("manifest.json: no Layers")?
            {
                let p = safe_join(dir, l.as_str().context("a layer is not a path")?)?;
                let (digest, size) = self.put_blob_from(&mut File::open(&p)?)?;
                layers.push(json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest, "size": size }));
            }
            let m = json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cfg_digest, "size": cfg.len()},
                "layers": layers,
            });
            let mbytes = serde_json::to_vec(&m)?;
            let mdigest = self.put_blob(&mbytes)?;
            let desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": mdigest, "size": mbytes.len()});
            for t in entry["RepoTags"].as_array().into_iter().flatten() {
                let t = t.as_str().context("a RepoTag is not text")?;
                self.tag(t, desc.clone())?;
                names.push(t.to_owned());
            }
        }
        Ok(names)
    }

    /// The image named `image` (see [`candidate_names`]), unpacked. An
    /// image never imported is an error saying so (kubelet's
    /// `ErrImageNeverPull` situation).
    pub fn resolve(&self, image: &str) -> Result<Image> {
        self.init()?;
        let idx = self.read_index()?;
        let wanted = candidate_names(image);
        let list = idx["manifests"].as_array().cloned().unwrap_or_default();
        let by_name: HashMap<&str, &Value> = list
            .iter()
            .filter_map(|d| Some((d["annotations"][REF_NAME].as_str()?, d)))
            .collect();
        let Some(desc) = wanted.iter().find_map(|n| by_name.get(n.as_str())) else {
            bail!(
                "image {image:?} is not in the node's image store (import it with `sy-node-agent image import`)"
            );
        };
        let mdigest = desc["digest"]
            .as_str()
            .context("descriptor without digest")?
            .to_owned();
        let m = ImageManifest::from_file(self.blob(&mdigest)?)?;
        let cfg = ImageConfiguration::from_file(self.blob(m.config().digest().as_ref())?)?;
        let c = cfg.config().clone().unwrap_or_default();
        let config = ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
        };
        let hex = mdigest.trim_start_matches("sha256:");
        let rootfs = self.root.join("unpacked").join(hex);
        if !rootfs.exists() {
            let tmp = tempdir_in(&self.root)?;
            for l in m.layers() {
                if let Err(e) = self
                    .blob(l.digest().as_ref())
                    .and_then(|b| apply_layer(&b, &tmp))
                {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(e.context(format!("unpacking layer {} of {image}", l.digest())));
                }
            }
            std::fs::create_dir_all(self.root.join("unpacked"))?;
            std::fs::rename(&tmp, &rootfs)?;
        }
        Ok(Image {
            rootfs,
            config,
            digest: mdigest,
        })
    }
}

/// A tar header owned by root with a zero mtime (reproducible layers).
fn hdr() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn safe_join(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("path `{rel}` leaves the archive");
    }
    Ok(dir.join(p))
}

fn tempdir_in(root: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(root)?;
    let p = root.join(format!("tmp-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&p)?;
    Ok(p)
}

/// Applies one layer (tar, or gzip'd tar) onto `dest`: `.wh.<name>`
/// removes `<name>`, `.wh..wh..opq` empties its directory's lower content;
/// paths leaving `dest` are refused (the tar crate's `unpack_in`).
pub fn apply_layer(blob: &Path, dest: &Path) -> Result<()> {
    let mut f = File::open(blob)?;
    let mut magic = [0u8; 2];
    let gz = f.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    f.seek(SeekFrom::Start(0))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(BufReader::new(f)))
    } else {
        Box::new(BufReader::new(f))
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_overwrite(true);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = safe_join(
                dest,
                &path
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )?;
            if hidden == ".wh..opq" {
                if let Ok(rd) = std::fs::read_dir(&parent) {
                    for e in rd.flatten() {
                        let _ = remove_any(&e.path());
                    }
                }
            } else {
                let _ = remove_any(&parent.join(hidden));
            }
            continue;
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    }
}

/// Writes an OCI image layout at `out` holding one single-layer image
/// `name`: Debian's static busybox with its applets linked in `/bin`, plus
/// `extra` files (`(host path, path in the image)`) each with the shared
/// libraries `ldd` lists for it, so dynamically linked test servers run.
/// `entrypoint`/`cmd` go into the image config.
pub fn build_image(
    out: &Path,
    name: &str,
    busybox: &Path,
    extra: &[(PathBuf, String)],
    cmd: &[String],
) -> Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    layer.mode(tar::HeaderMode::Deterministic);
    let mut dirs = std::collections::BTreeSet::new();
    let mut add_dirs = |b: &mut tar::Builder<Vec<u8>>, path: &str| -> Result<()> {
        let mut acc = String::new();
        for part in Path::new(path).parent().into_iter().flat_map(|p| p.iter()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(&part.to_string_lossy());
            if dirs.insert(acc.clone()) {
                let mut h = hdr();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(if acc == "tmp" { 0o1777 } else { 0o755 });
                h.set_size(0);
                b.append_data(&mut h, format!("{acc}/"), std::io::empty())?;
            }
        }
        Ok(())
    };
    let add_file = |b: &mut tar::Builder<Vec<u8>>, host: &Path, inside: &str| -> Result<()> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mut h = hdr();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, inside, data.as_slice())?;
        Ok(())
    };
    for d in [
        "tmp/x",
        "etc/x",
        "proc/x",
        "sys/x",
        "dev/x",
        "root/x",
        "var/run/x",
    ] {
        add_dirs(&mut layer, d)?;
    }
    add_dirs(&mut layer, "bin/busybox")?;
    add_file(&mut layer, busybox, "bin/busybox")?;
    let list = std::process::Command::new(busybox).arg("--list").output()?;
    if !list.status.success() {
        bail!("{} --list failed", busybox.display());
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.is_empty() {
            continue;
        }
        let mut h = hdr();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let etc = |b: &mut tar::Builder<Vec<u8>>, path: &str, text: &str| -> Result<()> {
        let mut h = hdr();
        h.set_mode(0o644);
        h.set_size(text.len() as u64);
        b.append_data(&mut h, path, text.as_bytes())?;
        Ok(())
    };
    etc(
        &mut layer,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    etc(&mut layer, "etc/group", "root:x:0:\nnogroup:x:65534:\n")?;
    let mut libs = std::collections::BTreeSet::new();
    for (host, inside) in extra {
        add_dirs(&mut layer, inside)?;
        add_file(&mut layer, host, inside)?;
        let ldd = std::process::Command::new("ldd").arg(host).output()?;
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line
                .split("=>")
                .last()
                .unwrap_or("")
                .trim()
                .split(' ')
                .next()
                .unwrap_or("");
            if path.starts_with('/') {
                libs.insert(path.to_owned());
            }
        }
    }
    for lib in libs {
        let inside = lib.trim_start_matches('/').to_owned();
        add_dirs(&mut layer, &inside)?;
        // Follow symlinks: the image gets the library's bytes under the name.
        add_file(&mut layer, Path::new(&lib), &inside)?;
    }
    let layer = layer.into_inner()?;
    let tmp = out.join("blobs/sha256");
    std::fs::create_dir_all(&tmp)?;
    let put = |data: &[u8]| -> Result<String> {
        let hex = sha256_hex(data);
        std::fs::write(out.join("blobs/sha256").join(&hex), data)?;
        Ok(format!("sha256:{hex}"))
    };
    let layer_digest = put(&layer)?;
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = put(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))?;
    let manifest_digest = put(&manifest)?;
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(
        out.join("index.json"),
        serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": manifest.len(),
                           "annotations": {REF_NAME: name}}],
        }))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_docker_hub() {
        let c = candidate_names("docker.io/library/busybox");
        assert!(c.contains(&"busybox:latest".to_owned()));
        assert!(
            candidate_names("switchyard/testbed:1").contains(&"switchyard/testbed:1".to_owned())
        );
        assert!(
            !candidate_names("a/b:1")
                .iter()
                .any(|n| n.ends_with(":latest"))
        );
    }

    #[test]
    fn layers_apply_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |entries: &[(&str, &str)]| -> PathBuf {
            let mut b = tar::Builder::new(Vec::new());
            for (p, body) in entries {
                let mut h = hdr();
                h.set_mode(0o644);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, p, body.as_bytes()).unwrap();
            }
            let p = dir.path().join(format!("l{}", entries.len()));
            std::fs::write(&p, b.into_inner().unwrap()).unwrap();
            p
        };
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        apply_layer(&mk(&[("a/x", "1"), ("a/y", "2"), ("b/z", "3")]), &root).unwrap();
        apply_layer(
            &mk(&[
                ("a/.wh.x", ""),
                ("b/.wh..wh..opq", ""),
                ("b/n", "4"),
                ("c", "5"),
            ]),
            &root,
        )
        .unwrap();
        assert!(!root.join("a/x").exists());
        assert!(root.join("a/y").exists());
        assert!(!root.join("b/z").exists());
        assert_eq!(std::fs::read_to_string(root.join("b/n")).unwrap(), "4");
    }
}
