//! Pod volumes, made under the pod's directory and bind-mounted into its
//! containers: `emptyDir` (0777; `medium: Memory` on tmpfs), `configMap`
//! and `secret` (a file per key or per `items` entry, `defaultMode` 0644;
//! `optional` honoured), `hostPath` (with its `type` checks),
//! `downwardAPI` and `projected` (ServiceAccount tokens from TokenRequest,
//! bound to the pod, plus configMap/secret/downwardAPI sources).
//!
//! Files are written whole and renamed into place; configMap/secret
//! contents are read when the pod starts (upstream also refreshes them
//! about once a minute; here only tokens are refreshed).
use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::{
    ByteString,
    api::core::v1::{
        ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
    },
};
use kube::{Api, Client, api::PostParams};
use nix::mount::{MsFlags, mount};
use serde_json::json;

use super::{env::field_ref, runtime::BindMount};

/// A prepared volume: where it is on the node, and (for projected
/// ServiceAccount tokens) when it must be refreshed.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub path: PathBuf,
    pub refresh_at: Option<Instant>,
}

/// One file of a volume: path inside it, bytes, mode.
type File = (String, Vec<u8>, u32);

fn check_rel(p: &str, vol: &str) -> Result<()> {
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("volume {vol}: path `{p}` must be relative and stay inside the volume");
    }
    Ok(())
}

fn write_files(dir: &Path, files: &[File], vol: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (rel, data, mode) in files {
        check_rel(rel, vol)?;
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = p.with_file_name(format!(
            ".{}.tmp",
            p.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&tmp, data)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(*mode))?;
        std::fs::rename(&tmp, &p)?;
    }
    Ok(())
}

/// Files of a key → value map with `items` and modes applied. A key named
/// in `items` but absent is an error unless `optional`.
fn keyed_files(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<Vec<File>> {
    match items {
        None => Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), default_mode))
            .collect()),
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push((
                        it.path.clone(),
                        v.clone(),
                        it.mode.map_or(default_mode, |m| m as u32),
                    )),
                    None if optional => {}
                    None => bail!("configuration key {} of {what} not found", it.key),
                }
            }
            Ok(out)
        }
    }
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.map(|cm| {
        let mut m: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            m.insert(k, v.0);
        }
        m
    }))
}

async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.map(|s| {
        let mut m: BTreeMap<String, Vec<u8>> = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, ByteString(v))| (k, v))
            .collect();
        for (k, v) in s.string_data.unwrap_or_default() {
            m.insert(k, v.into_bytes());
        }
        m
    }))
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
    pod_ips: &[String],
    host_ip: &str,
) -> Result<Vec<File>> {
    let mut out = Vec::new();
    for it in items {
        let Some(f) = &it.field_ref else {
            bail!("downwardAPI {}: only fieldRef is supported", it.path);
        };
        let v = field_ref(pod, &f.field_path, pod_ips, host_ip)?;
        out.push((
            it.path.clone(),
            v.into_bytes(),
            it.mode.map_or(mode, |m| m as u32),
        ));
    }
    Ok(out)
}

/// A token for the pod's ServiceAccount, bound to the pod (TokenRequest).
/// Returns the token and its lifetime.
async fn token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration: i64,
) -> Result<(String, Duration)> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let mut spec = json!({
        "expirationSeconds": expiration,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                           "name": pod.metadata.name, "uid": pod.metadata.uid},
    });
    if let Some(a) = audience {
        spec["audiences"] = json!([a]);
    }
    let body = serde_json::to_vec(
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}),
    )?;
    let tr: serde_json::Value = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {ns}/{sa}"))?;
    let t = tr["status"]["token"]
        .as_str()
        .context("TokenRequest answered without a token")?;
    Ok((
        t.to_owned(),
        Duration::from_secs(expiration.max(600) as u64),
    ))
}

/// Makes (or refreshes) volume `v` of `pod` under `pod_dir/volumes`.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    v: &Volume,
    pod_dir: &Path,
    pod_ips: &[String],
    host_ip: &str,
) -> Result<Prepared> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let dir = pod_dir.join("volumes").join(&v.name);
    let done = |p: PathBuf| {
        Ok(Prepared {
            path: p,
            refresh_at: None,
        })
    };
    if let Some(e) = &v.empty_dir {
        std::fs::create_dir_all(&dir)?;
        if e.medium.as_deref() == Some("Memory") && !super::runtime::is_mountpoint(&dir) {
            let size = e.size_limit.as_ref().map(|q| format!("size={}", q.0));
            mount(
                Some("tmpfs"),
                &dir,
                Some("tmpfs"),
                MsFlags::empty(),
                size.as_deref(),
            )
            .with_context(|| format!("volume {}: mounting tmpfs", v.name))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        return done(dir);
    }
    if let Some(h) = &v.host_path {
        let p = PathBuf::from(&h.path);
        let ty = h.type_.as_deref().unwrap_or("");
        let meta = std::fs::metadata(&p);
        use std::os::unix::fs::FileTypeExt as _;
        match ty {
            "" => {}
            "DirectoryOrCreate" => {
                if meta.is_err() {
                    std::fs::create_dir_all(&p)?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
                }
            }
            "FileOrCreate" => {
                if meta.is_err() {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(&p, b"")?;
                }
            }
            "Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice" => {
                let m = meta.with_context(|| {
                    format!("volume {}: hostPath {} does not exist", v.name, h.path)
                })?;
                let ft = m.file_type();
                let ok = match ty {
                    "Directory" => ft.is_dir(),
                    "File" => ft.is_file(),
                    "Socket" => ft.is_socket(),
                    "CharDevice" => ft.is_char_device(),
                    _ => ft.is_block_device(),
                };
                if !ok {
                    bail!("volume {}: hostPath {} is not a {ty}", v.name, h.path);
                }
            }
            other => bail!("volume {}: unknown hostPath type {other}", v.name),
        }
        return done(p);
    }
    if let Some(c) = &v.config_map {
        let mode = c.default_mode.map_or(0o644, |m| m as u32);
        let optional = c.optional == Some(true);
        let data = match config_map(client, &ns, &c.name).await? {
            Some(d) => d,
            None if optional => BTreeMap::new(),
            None => bail!("configmap \"{}\" not found", c.name),
        };
        let files = keyed_files(
            &data,
            c.items.as_ref(),
            mode,
            &format!("configmap {}", c.name),
            optional,
        )?;
        write_files(&dir, &files, &v.name)?;
        return done(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let mode = s.default_mode.map_or(0o644, |m| m as u32);
        let optional = s.optional == Some(true);
        let data = match secret(client, &ns, &name).await? {
            Some(d) => d,
            None if optional => BTreeMap::new(),
            None => bail!("secret \"{name}\" not found"),
        };
        let files = keyed_files(
            &data,
            s.items.as_ref(),
            mode,
            &format!("secret {name}"),
            optional,
        )?;
        write_files(&dir, &files, &v.name)?;
        return done(dir);
    }
    if let Some(d) = &v.downward_api {
        let mode = d.default_mode.map_or(0o644, |m| m as u32);
        let files = downward_files(
            pod,
            d.items.as_deref().unwrap_or_default(),
            mode,
            pod_ips,
            host_ip,
        )?;
        write_files(&dir, &files, &v.name)?;
        return done(dir);
    }
    if let Some(p) = &v.projected {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        let mut files = Vec::new();
        let mut refresh: Option<Instant> = None;
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let exp = t.expiration_seconds.unwrap_or(3607);
                let (tok, ttl) = token(client, pod, t.audience.as_deref(), exp).await?;
                // Upstream rotates past 80 % of the lifetime.
                let at = Instant::now() + ttl.mul_f64(0.8);
                refresh = Some(refresh.map_or(at, |r| r.min(at)));
                files.push((t.path.clone(), tok.into_bytes(), mode));
            }
            if let Some(c) = &src.config_map {
                let optional = c.optional == Some(true);
                match config_map(client, &ns, &c.name).await? {
                    Some(d) => files.extend(keyed_files(
                        &d,
                        c.items.as_ref(),
                        mode,
                        &format!("configmap {}", c.name),
                        optional,
                    )?),
                    None if optional => {}
                    None => bail!("configmap \"{}\" not found", c.name),
                }
            }
            if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                match secret(client, &ns, &s.name).await? {
                    Some(d) => files.extend(keyed_files(
                        &d,
                        s.items.as_ref(),
                        mode,
                        &format!("secret {}", s.name),
                        optional,
                    )?),
                    None if optional => {}
                    None => bail!("secret \"{}\" not found", s.name),
                }
            }
            if let Some(d) = &src.downward_api {
                files.extend(downward_files(
                    pod,
                    d.items.as_deref().unwrap_or_default(),
                    mode,
                    pod_ips,
                    host_ip,
                )?);
            }
        }
        write_files(&dir, &files, &v.name)?;
        return Ok(Prepared {
            path: dir,
            refresh_at: refresh,
        });
    }
    bail!(
        "volume {}: this volume type is not supported by the node agent",
        v.name
    )
}

/// The bind mounts of container `c` from prepared volumes (`subPath`
/// joined; a mount of an unknown volume is an error naming it).
pub fn container_mounts(
    c: &Container,
    prepared: &BTreeMap<String, Prepared>,
) -> Result<Vec<BindMount>> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let Some(p) = prepared.get(&m.name) else {
            bail!(
                "container {}: volumeMount {} names no volume of the pod",
                c.name,
                m.name
            );
        };
        let mut source = p.path.clone();
        if let Some(sp) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            check_rel(sp, &m.name)?;
            source = source.join(sp);
            if !source.exists() {
                std::fs::create_dir_all(&source)?;
            }
        }
        out.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only == Some(true),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_pick_keys_and_modes() {
        let data: BTreeMap<String, Vec<u8>> =
            [("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())].into();
        let all = keyed_files(&data, None, 0o644, "cm", false).unwrap();
        assert_eq!(all.len(), 2);
        let items = vec![KeyToPath {
            key: "b".into(),
            path: "dir/b.txt".into(),
            mode: Some(0o400),
        }];
        let some = keyed_files(&data, Some(&items), 0o644, "cm", false).unwrap();
        assert_eq!(some, vec![("dir/b.txt".to_owned(), b"2".to_vec(), 0o400)]);
        let missing = vec![KeyToPath {
            key: "z".into(),
            path: "z".into(),
            mode: None,
        }];
        assert!(keyed_files(&data, Some(&missing), 0o644, "cm", false).is_err());
        assert!(
            keyed_files(&data, Some(&missing), 0o644, "cm", true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn paths_stay_inside() {
        assert!(check_rel("../x", "v").is_err());
        assert!(check_rel("/x", "v").is_err());
        assert!(check_rel("a/b", "v").is_ok());
    }
}
