//! The cluster's credentials, made on first start under `<data-dir>/pki`:
//! a CA, the server's certificate (for the addresses it serves on), client
//! certificates for the admin and for each node, bearer tokens, the key
//! ServiceAccount tokens are signed with (`sa.key`), and one kubeconfig per
//! identity. Later starts reuse what exists.
//!
//! | identity | credential | kubeconfig |
//! |---|---|---|
//! | `admin` (group `system:masters`) | client certificate and token | `admin.kubeconfig` |
//! | `reader` (group `switchyard:readers`) | token | `reader.kubeconfig` |
//! | `system:node:<name>` (group `system:nodes`) | client certificate | `node-<name>.kubeconfig` |
use std::{
    collections::HashMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

pub const MASTERS: &str = "system:masters";
pub const READERS: &str = "switchyard:readers";
pub const NODES: &str = "system:nodes";
/// The identity the API server presents to node agents when it proxies
/// `pods/log` and `pods/exec` (kubeadm's `apiserver-kubelet-client`), by
/// bearer token; the agents check it with a TokenReview and a
/// SubjectAccessReview on `nodes/proxy`, as a kubelet in webhook mode does.
pub const KUBELET_CLIENT: &str = "kube-apiserver-kubelet-client";

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    /// Bearer token → identity.
    pub tokens: HashMap<String, Identity>,
    /// The key ServiceAccount tokens are signed with (PKCS#8 DER, P-256).
    pub service_account_key: Vec<u8>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "switchyard-ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn random_token() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode([a.as_bytes().as_slice(), b.as_bytes()].concat())
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Pki {
    /// Loads `<data-dir>/pki`, creating what is missing. `names` are the
    /// server certificate's subject alternative names (addresses and DNS
    /// names); `nodes` get client certificates and kubeconfigs.
    pub fn ensure(data_dir: &Path, names: &[String], nodes: &[String]) -> Result<Self> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir)?;
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !ca_cert.exists() || !ca_key.exists() {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem())?;
            fs::write(&ca_cert, cert.pem())?;
        }
        let ca_pem = fs::read_to_string(&ca_cert)?;
        let ca_key = KeyPair::from_pem(&fs::read_to_string(&ca_key)?)?;
        let issuer = Issuer::new(ca_params(), ca_key);

        // The server certificate is remade each start, for the addresses served now.
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for n in names
            .iter()
            .chain(["localhost".to_owned(), "127.0.0.1".to_owned()].iter())
        {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        let server_key = KeyPair::generate()?;
        let server_cert_pem = params.signed_by(&server_key, &issuer)?.pem();
        let server_key_pem = server_key.serialize_pem();

        let tokens_file = dir.join("tokens.csv");
        if !tokens_file.exists() {
            let rows = format!(
                "{},admin,{MASTERS}\n{},reader,{READERS}\n{},{KUBELET_CLIENT},{MASTERS}\n",
                random_token(),
                random_token(),
                random_token()
            );
            write_private(&tokens_file, &rows)?;
        }
        let mut tokens = parse_tokens(&fs::read_to_string(&tokens_file)?)?;
        if !tokens.values().any(|id| id.user == KUBELET_CLIENT) {
            // Data directories from before the agents checked who calls them.
            let mut rows = fs::read_to_string(&tokens_file)?;
            if !rows.is_empty() && !rows.ends_with('\n') {
                rows.push('\n');
            }
            rows.push_str(&format!("{},{KUBELET_CLIENT},{MASTERS}\n", random_token()));
            write_private(&tokens_file, &rows)?;
            tokens = parse_tokens(&rows)?;
        }

        let sa_key = dir.join("sa.key");
        if !sa_key.exists() {
            write_private(&sa_key, &KeyPair::generate()?.serialize_pem())?;
        }
        let service_account_key = KeyPair::from_pem(&fs::read_to_string(&sa_key)?)?.serialize_der();

        let pki = Self {
            dir,
            ca_pem,
            server_cert_pem,
            server_key_pem,
            tokens,
            service_account_key,
        };
        pki.client_cert("admin", &[MASTERS], &issuer)?;
        for node in nodes {
            pki.client_cert(&format!("system:node:{node}"), &[NODES], &issuer)?;
        }
        Ok(pki)
    }

    fn cert_paths(&self, user: &str) -> (PathBuf, PathBuf) {
        let file = user.replace(':', "-");
        (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        )
    }

    /// Issues a client certificate (CN = user, O = groups) unless one exists.
    fn client_cert(&self, user: &str, groups: &[&str], issuer: &Issuer<'_, KeyPair>) -> Result<()> {
        let (crt, key) = self.cert_paths(user);
        if crt.exists() && key.exists() {
            return Ok(());
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let k = KeyPair::generate()?;
        let cert = params.signed_by(&k, issuer)?;
        write_private(&key, &k.serialize_pem())?;
        fs::write(&crt, cert.pem())?;
        Ok(())
    }

    pub fn token_of(&self, user: &str) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(_, id)| id.user == user)
            .map(|(t, _)| t.as_str())
    }

    /// Writes the kubeconfigs of every identity for a server at `url`.
    pub fn write_kubeconfigs(&self, data_dir: &Path, url: &str, nodes: &[String]) -> Result<()> {
        let cert_user = |user: &str| -> Result<String> {
            let (crt, key) = self.cert_paths(user);
            Ok(format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64(&fs::read_to_string(crt)?),
                b64(&fs::read_to_string(key)?)
            ))
        };
        let token_user =
            |user: &str| format!("    token: {}\n", self.token_of(user).unwrap_or_default());
        let mut configs = vec![
            ("admin.kubeconfig".to_owned(), "admin", cert_user("admin")?),
            (
                "reader.kubeconfig".to_owned(),
                "reader",
                token_user("reader"),
            ),
        ];
        for node in nodes {
            let user = format!("system:node:{node}");
            configs.push((format!("node-{node}.kubeconfig"), "node", cert_user(&user)?));
        }
        for (file, name, user) in configs {
            let body = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: switchyard\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
                 users:\n- name: {name}\n  user:\n{user}contexts:\n- name: switchyard\n  context:\n    cluster: switchyard\n    user: {name}\n    namespace: default\n\
                 current-context: switchyard\n",
                ca = b64(&self.ca_pem)
            );
            write_private(&data_dir.join(file), &body)?;
        }
        Ok(())
    }
}

fn parse_tokens(csv: &str) -> Result<HashMap<String, Identity>> {
    csv.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(',');
            let (token, user) = (
                f.next().unwrap_or_default().trim(),
                f.next().context("tokens.csv: a row without a user")?.trim(),
            );
            Ok((
                token.to_owned(),
                Identity {
                    user: user.to_owned(),
                    groups: f.map(|g| g.trim().to_owned()).collect(),
                },
            ))
        })
        .collect()
}

/// The identity a verified client certificate names: CN is the user, each O a group.
pub fn identity_of_cert(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(Identity { user, groups })
}
