//! `bench-apiserver`: the API server's costs, each next to a baseline taken
//! in the same run — the same operation on the store directly, without HTTP,
//! JSON handling or validation — so the ratio is the API layer's overhead.
//!
//! - create and update: writes/s and p50/p99 latency, 8 concurrent clients;
//! - list of 10k Services;
//! - one change delivered to 100 concurrent watchers: p50/p99 delay.
//!
//! `--backend embedded` (default) or `--backend etcd` (an etcd from Debian's
//! `etcd-server` is started for the run on loopback ports).
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use control_plane::{
    api::{ApiServer, Settings, auth::Auth},
    local_etcd::LocalEtcd,
    store::{AnyStore, EmbeddedStore, EtcdStore, Store, WatchItem},
};
use futures::StreamExt as _;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

#[derive(Parser)]
struct Args {
    /// Writes per measurement.
    #[arg(long, default_value_t = 2000)]
    writes: usize,
    /// Concurrent clients for writes.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Services in the list measurement.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Changes delivered to the watchers.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// `embedded` or `etcd`.
    #[arg(long, default_value = "embedded")]
    backend: String,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Self> {
        Ok(Self {
            r: BufReader::new(TcpStream::connect(addr).await?),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        ct: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>)> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: b\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.r.get_mut().write_all(req.as_bytes()).await?;
        let (code, len) = self.head().await?;
        let mut buf = vec![0; len.context("response without content-length")?];
        self.r.read_exact(&mut buf).await?;
        Ok((code, buf))
    }

    async fn head(&mut self) -> Result<(u16, Option<usize>)> {
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let code = line.split(' ').nth(1).context("status line")?.parse()?;
        let mut len = None;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                return Ok((code, len));
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = Some(v.trim().parse()?);
            }
        }
    }
}

struct Stats {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn stats(mut lat: Vec<Duration>, total: Duration) -> Stats {
    lat.sort();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    Stats {
        per_sec: lat.len() as f64 / total.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Runs `n` operations over `clients` tasks; `op(i)` returns the latency.
async fn concurrent<F, Fut>(n: usize, clients: usize, op: F) -> Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Duration>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let op = Arc::clone(&op);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in (c..n).step_by(clients) {
                    lat.push(op(i).await?);
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(stats(all, started.elapsed()))
}

async fn http_writes(addr: &str, n: usize, clients: usize, update: bool) -> Result<Stats> {
    let conns: Vec<_> =
        futures::future::try_join_all((0..clients).map(|_| Conn::open(addr))).await?;
    let conns: Arc<Vec<tokio::sync::Mutex<Conn>>> =
        Arc::new(conns.into_iter().map(tokio::sync::Mutex::new).collect());
    concurrent(n, clients, move |i| {
        let conns = Arc::clone(&conns);
        async move {
            let mut c = conns[i % conns.len()].lock().await;
            let t = Instant::now();
            let (code, body) = if update {
                let patch = json!({"data": {"v": i.to_string()}}).to_string();
                c.request(
                    "PATCH",
                    &format!("/api/v1/namespaces/default/configmaps/cm-{i}"),
                    "application/merge-patch+json",
                    &patch,
                )
                .await?
            } else {
                let obj = json!({"metadata": {"name": format!("cm-{i}")}, "data": {"v": "0"}})
                    .to_string();
                c.request(
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    "application/json",
                    &obj,
                )
                .await?
            };
            if code >= 300 {
                bail!("HTTP {code}: {}", String::from_utf8_lossy(&body));
            }
            Ok(t.elapsed())
        }
    })
    .await
}

async fn store_writes(
    store: Arc<AnyStore>,
    n: usize,
    clients: usize,
    update: bool,
) -> Result<Stats> {
    concurrent(n, clients, move |i| {
        let store = Arc::clone(&store);
        async move {
            let t = Instant::now();
            let key = format!("/bench/configmaps/default/cm-{i}");
            let value =
                json!({"metadata": {"name": format!("cm-{i}")}, "data": {"v": i.to_string()}})
                    .to_string()
                    .into_bytes();
            if update {
                store.update(&key, value, None).await?;
            } else {
                store.create(&key, value).await?;
            }
            Ok(t.elapsed())
        }
    })
    .await
}

fn row(what: &str, ours: String, base: String, ratio: f64) {
    println!("| {what} | {ours} | {base} | {ratio:.2}x |");
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("sy-bench-apiserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(args: &Args, dir: &std::path::Path) -> Result<()> {
    let etcd = match args.backend.as_str() {
        "embedded" => None,
        "etcd" => Some(LocalEtcd::start()?),
        other => bail!("--backend `{other}`: expected embedded or etcd"),
    };
    // The API server's store and the baseline's, apart so neither sees the other's keys.
    let open = |name: &'static str| {
        let etcd = etcd.as_ref().map(|e| e.endpoint.clone());
        async move {
            Ok::<_, anyhow::Error>(Arc::new(match etcd {
                None => AnyStore::Embedded(EmbeddedStore::open(&dir.join(format!("{name}.redb")))?),
                Some(endpoint) => AnyStore::Etcd(Box::new(
                    EtcdStore::connect(&[endpoint], &format!("/{name}")).await?,
                )),
            }))
        }
    };
    let store = open("api").await?;
    // Plain HTTP without authentication: this measures the API layer, not TLS.
    let api = ApiServer::new(Arc::clone(&store), Settings::default(), Auth::Disabled);
    api.bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(axum::serve(listener, api.router()).into_future());
    let raw = open("raw").await?;

    println!("Backend: {}", args.backend);
    println!("| measurement | API server | baseline: store alone | ratio |");
    println!("|---|---|---|---|");
    for (name, update) in [("create", false), ("update", true)] {
        let ours = http_writes(&addr, args.writes, args.clients, update).await?;
        let base = store_writes(Arc::clone(&raw), args.writes, args.clients, update).await?;
        row(
            &format!("{name}: writes/s ({} clients)", args.clients),
            format!("{:.0}", ours.per_sec),
            format!("{:.0}", base.per_sec),
            ours.per_sec / base.per_sec,
        );
        row(
            &format!("{name}: p50 / p99 latency (ms)"),
            format!("{:.2} / {:.2}", ours.p50_ms, ours.p99_ms),
            format!("{:.2} / {:.2}", base.p50_ms, base.p99_ms),
            ours.p99_ms / base.p99_ms,
        );
    }

    // 10k Services, created through the API (allocation included).
    let svc_addr = addr.clone();
    concurrent(args.services, args.clients, move |i| {
        let addr = svc_addr.clone();
        async move {
            let mut c = Conn::open(&addr).await?;
            let t = Instant::now();
            let body = json!({"metadata": {"name": format!("svc-{i}"), "labels": {"app": format!("a{}", i % 10)}}, "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}).to_string();
            let (code, b) = c.request("POST", "/api/v1/namespaces/default/services", "application/json", &body).await?;
            if code != 201 {
                bail!("HTTP {code}: {}", String::from_utf8_lossy(&b));
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    let mut c = Conn::open(&addr).await?;
    let (mut api_ms, mut store_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let (code, body) = c
            .request("GET", "/api/v1/services", "application/json", "")
            .await?;
        api_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let items = serde_json::from_slice::<serde_json::Value>(&body)?["items"]
            .as_array()
            .map_or(0, Vec::len);
        if code != 200 || items < args.services {
            bail!("list returned {code} with {items} items");
        }
        let t = Instant::now();
        let page = store.list("/core/services/", None, None).await?;
        store_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if page.items.len() < args.services {
            bail!("store list returned {} items", page.items.len());
        }
    }
    api_ms.sort_by(f64::total_cmp);
    store_ms.sort_by(f64::total_cmp);
    row(
        &format!("list {} Services (ms, median of 5)", args.services),
        format!("{:.1}", api_ms[2]),
        format!("{:.1}", store_ms[2]),
        api_ms[2] / store_ms[2],
    );

    // One change, many watchers.
    let (api_delay, store_delay) = watch_fanout(&addr, &store, args).await?;
    row(
        &format!("change → {} watchers, p50 / p99 delay (ms)", args.watchers),
        format!("{:.2} / {:.2}", api_delay.0, api_delay.1),
        format!("{:.2} / {:.2}", store_delay.0, store_delay.1),
        api_delay.1 / store_delay.1,
    );
    Ok(())
}

fn p50_p99(mut d: Vec<f64>) -> (f64, f64) {
    d.sort_by(f64::total_cmp);
    (
        d[(d.len() - 1) / 2],
        d[((d.len() - 1) as f64 * 0.99) as usize],
    )
}

/// Delays from the start of each write to its arrival at every watcher.
async fn watch_fanout(
    addr: &str,
    store: &Arc<AnyStore>,
    args: &Args,
) -> Result<((f64, f64), (f64, f64))> {
    let rev = store.current_revision().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, String, Instant)>();
    for _ in 0..args.watchers {
        let mut c = Conn::open(addr).await?;
        let path = format!("/api/v1/namespaces/default/endpoints?watch=true&resourceVersion={rev}");
        c.r.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
            .await?;
        c.head().await?;
        let api_tx = tx.clone();
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if c.r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) {
                    let name = v["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = api_tx.send((true, name, Instant::now()));
                }
            }
        });
        let mut w = store.watch("/core/endpoints/default/", rev).await?;
        let store_tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(item)) = w.next().await {
                if let WatchItem::Event(e) = item {
                    let name = e.kv.key.rsplit('/').next().unwrap_or_default().to_owned();
                    let _ = store_tx.send((false, name, Instant::now()));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = Conn::open(addr).await?;
    let (mut api, mut raw) = (Vec::new(), Vec::new());
    for i in 0..args.changes {
        let name = format!("ep-{i}");
        let sent = Instant::now();
        let body = json!({"metadata": {"name": name}}).to_string();
        c.request(
            "POST",
            "/api/v1/namespaces/default/endpoints",
            "application/json",
            &body,
        )
        .await?;
        let mut left = 2 * args.watchers;
        while left > 0 {
            let (via_api, got, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await?
                .context("watchers ended")?;
            if got == name {
                let ms = at.duration_since(sent).as_secs_f64() * 1e3;
                if via_api {
                    api.push(ms)
                } else {
                    raw.push(ms)
                }
                left -= 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((p50_p99(api), p50_p99(raw)))
}
