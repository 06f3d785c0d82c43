//! ServiceAccount tokens as upstream issues them through TokenRequest: JWTs
//! (here ES256, signed with `<data-dir>/pki/sa.key`) whose claims name the
//! account and, for bound tokens, the Pod or Secret they live and die with:
//!
//! ```text
//! {"iss": ISSUER, "sub": "system:serviceaccount:<ns>:<name>", "aud": [..],
//!  "exp": .., "iat": .., "nbf": .., "jti": uuid,
//!  "kubernetes.io": {"namespace": ns, "serviceaccount": {"name", "uid"},
//!                    "pod": {"name", "uid"}?, "secret": {"name", "uid"}?}}
//! ```
//!
//! This module signs and checks a token's form, signature, issuer,
//! audience and times; whether the account and bound object still exist is
//! the caller's question ([`super::auth`]).
use base64::Engine as _;
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};
use serde_json::{Value, json};

/// The issuer (`iss`) of every token, and the audience the API server
/// accepts tokens for when a request names none (upstream's kubeadm default).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Upstream's default and shortest `expirationSeconds`.
pub const DEFAULT_EXPIRATION_S: i64 = 3600;
pub const MIN_EXPIRATION_S: i64 = 600;
/// Clock skew tolerated on `nbf` and `exp`, as upstream's validator.
const LEEWAY_S: i64 = 60;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// A bound object (`Pod` or `Secret`) of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundObject {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub audiences: Vec<String>,
    /// Seconds since the epoch.
    pub issued_at: i64,
    pub expires: i64,
    pub bound: Option<BoundObject>,
}

impl Claims {
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    fn to_json(&self) -> Value {
        let mut k8s = json!({
            "namespace": self.namespace,
            "serviceaccount": {"name": self.service_account, "uid": self.service_account_uid},
        });
        if let Some(b) = &self.bound {
            k8s[b.kind.to_lowercase()] = json!({"name": b.name, "uid": b.uid});
        }
        json!({
            "iss": ISSUER,
            "sub": self.username(),
            "aud": self.audiences,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "exp": self.expires,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
        })
    }

    fn from_json(v: &Value) -> Option<Claims> {
        let k8s = v.get("kubernetes.io")?;
        let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let bound = ["pod", "secret"].iter().find_map(|kind| {
            let b = k8s.get(*kind)?;
            Some(BoundObject {
                kind: if *kind == "pod" { "Pod" } else { "Secret" }.to_owned(),
                name: s(b, "/name")?,
                uid: s(b, "/uid").unwrap_or_default(),
            })
        });
        let audiences = match v.get("aud")? {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => return None,
        };
        Some(Claims {
            namespace: s(k8s, "/namespace")?,
            service_account: s(k8s, "/serviceaccount/name")?,
            service_account_uid: s(k8s, "/serviceaccount/uid").unwrap_or_default(),
            audiences,
            issued_at: v.get("iat").and_then(Value::as_i64).unwrap_or_default(),
            expires: v.get("exp")?.as_i64()?,
            bound,
        })
    }
}

/// Signs and checks tokens with one P-256 key.
pub struct Signer {
    key: EcdsaKeyPair,
    /// The key's id (`kid`): its public key hashed, as upstream derives it.
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From a PKCS#8 (DER) ECDSA P-256 private key.
    pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("service-account key: {e}"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        Ok(Self {
            kid: b64(digest.as_ref()),
            key,
        })
    }

    /// A signed token of `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_json().to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("ECDSA signing with the system RNG");
        format!("{signing_input}.{}", b64(sig.as_ref()))
    }

    /// The claims of a token this signer issued, checked for signature,
    /// issuer, one of `audiences` and time (`now`, seconds since the epoch).
    /// `None` for what is not this server's token at all (another
    /// authenticator may know it); `Some(Err)` for a token of ours that is
    /// invalid, with upstream's wording.
    pub fn verify(
        &self,
        token: &str,
        audiences: &[&str],
        now: i64,
    ) -> Option<Result<Claims, String>> {
        let mut parts = token.split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&unb64(h)?).ok()?;
        let payload: Value = serde_json::from_slice(&unb64(p)?).ok()?;
        if payload.get("iss").and_then(Value::as_str) != Some(ISSUER) {
            return None;
        }
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Some(Err("invalid signature".into()));
        }
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        if public
            .verify(format!("{h}.{p}").as_bytes(), &unb64(s)?)
            .is_err()
        {
            return Some(Err("invalid signature".into()));
        }
        let Some(claims) = Claims::from_json(&payload) else {
            return Some(Err("invalid claims".into()));
        };
        if !claims
            .audiences
            .iter()
            .any(|a| audiences.contains(&a.as_str()))
        {
            return Some(Err(format!(
                "token audiences {} is invalid for the target audiences {}",
                go_list(&claims.audiences),
                go_list(
                    &audiences
                        .iter()
                        .map(|a| (*a).to_owned())
                        .collect::<Vec<_>>()
                )
            )));
        }
        if claims.expires + LEEWAY_S < now {
            return Some(Err("service account token has expired".into()));
        }
        if payload
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| nbf - LEEWAY_S > now)
        {
            return Some(Err("service account token is not valid yet".into()));
        }
        Some(Ok(claims))
    }
}

/// Go's `%q` of a string slice.
fn go_list(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| super::validation::quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate().unwrap();
        Signer::from_pkcs8(&key.serialize_der()).unwrap()
    }

    fn claims(now: i64) -> Claims {
        Claims {
            namespace: "default".into(),
            service_account: "bot".into(),
            service_account_uid: "u-1".into(),
            audiences: vec![ISSUER.into()],
            issued_at: now,
            expires: now + 3600,
            bound: Some(BoundObject {
                kind: "Pod".into(),
                name: "p".into(),
                uid: "u-2".into(),
            }),
        }
    }

    #[test]
    fn tokens_verify_with_their_key_audience_and_time_only() {
        let (s, now) = (signer(), 1_800_000_000);
        let token = s.issue(&claims(now));
        assert_eq!(s.verify(&token, &[ISSUER], now), Some(Ok(claims(now))));
        assert_eq!(
            s.verify(&token, &[ISSUER], now + 3600 + 61),
            Some(Err("service account token has expired".into()))
        );
        assert_eq!(
            s.verify(&token, &["vault"], now),
            Some(Err(format!(
                "token audiences [\"{ISSUER}\"] is invalid for the target audiences [\"vault\"]"
            )))
        );
        // Another key's token, or a changed payload, does not verify.
        assert_eq!(
            signer().verify(&token, &[ISSUER], now),
            Some(Err("invalid signature".into()))
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims(now);
        forged.service_account = "admin".into();
        let payload = b64(forged.to_json().to_string().as_bytes());
        parts[1] = &payload;
        assert_eq!(
            s.verify(&parts.join("."), &[ISSUER], now),
            Some(Err("invalid signature".into()))
        );
        // Not a JWT of ours at all: someone else's question.
        assert_eq!(s.verify("abc", &[ISSUER], now), None);
    }
}
