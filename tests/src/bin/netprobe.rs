//! `netprobe`: the real TCP/UDP servers and clients of the test topologies.
//!
//! - `serve --name N --port P`: TCP and UDP on 0.0.0.0:P. A TCP connection
//!   is greeted with `N\n`; each line sent is answered `pong N\n`, except
//!   `whoami`, answered `peer IP:PORT\n` (the client as the server sees it).
//!   A UDP datagram is answered with `N` (`N|IP:PORT` for `whoami`); one
//!   larger than 1,400 bytes gets an answer as large, so both directions
//!   are fragmented on a 1,500-byte link.
//! - `front --name N --port P --backend HOST:PORT`: a front end on TCP
//!   0.0.0.0:P. Each connection resolves HOST (DNS, through the pod's
//!   resolv.conf) and connects to the back end, reads its greeting `B`
//!   and greets the client with `N>B\n` — or, if the client spoke first
//!   with an HTTP request (curl, wget), answers it with `200` and that
//!   line as the body. A back end that cannot be reached closes the
//!   client's connection without a greeting (a failed request).
//! - `tcp|udp --target IP:PORT --count C`: C new connections (or sockets),
//!   each reporting who answered; prints one JSON [`testbed::probe::Outcome`].
//!   `--whoami` also records how the server saw the client; `--source-port`
//!   fixes the client's port; `--size` sets a UDP datagram's size.
//! - `udp-stream --target IP:PORT --interval-ms M`: one socket sends a
//!   datagram every M ms and prints a [`testbed::probe::StreamEvent`] line
//!   per attempt, until a line or EOF arrives on stdin. `--connected`
//!   `connect()`s it; `--reconnect` opens a new socket after an error, as a
//!   resolver does.
//! - `hold --target IP:PORT --count C`: opens C connections, prints their
//!   outcome, then on each `check` line on stdin pings every connection and
//!   prints another outcome; ends on EOF.
//! - `stream --target IP:PORT --rate R`: a new connection every 1/R s (each
//!   greeted, then closed) until a line or EOF arrives on stdin; then prints
//!   one outcome of them all.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use testbed::probe::{Outcome, StreamEvent, error_kind};

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
    },
    Front {
        #[arg(long)]
        name: String,
        #[arg(long)]
        port: u16,
        /// The back end, `HOST:PORT` (a name resolved per connection).
        #[arg(long)]
        backend: String,
    },
    Tcp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        /// Pause between connections, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Ask each server how it sees the client.
        #[arg(long)]
        whoami: bool,
        /// Connect from this source port (SO_REUSEADDR).
        #[arg(long, default_value_t = 0)]
        source_port: u16,
    },
    Udp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        /// `connect()` the socket (else `sendto`/`recvfrom`).
        #[arg(long)]
        connected: bool,
        /// Send every datagram from this source port (one UDP "flow").
        #[arg(long, default_value_t = 0)]
        source_port: u16,
        /// Ask each server how it sees the client.
        #[arg(long)]
        whoami: bool,
        /// Datagram size in bytes (default: a 5-byte greeting).
        #[arg(long)]
        size: Option<usize>,
    },
    UdpStream {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long, default_value_t = 0)]
        source_port: u16,
        #[arg(long)]
        connected: bool,
        /// After an error, open a new socket (and connect it again).
        #[arg(long)]
        reconnect: bool,
    },
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        /// Connect from this source port (SO_REUSEADDR; one connection).
        #[arg(long, default_value_t = 0)]
        source_port: u16,
    },
    Stream {
        #[arg(long)]
        target: SocketAddr,
        /// New connections per second.
        #[arg(long)]
        rate: u32,
    },
    /// Times `count` connect() calls (each then closed); prints
    /// `{"connect_ns": [...], "total_ns": N}`: each call's latency, and the
    /// whole loop's (greetings and closes included), in nanoseconds.
    ConnectLatency {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { name, port } => serve(&name, port),
        Cmd::Front {
            name,
            port,
            backend,
        } => front(&name, port, &backend),
        Cmd::Tcp {
            target,
            count,
            interval_ms,
            whoami,
            source_port,
        } => {
            let mut out = Outcome::default();
            for _ in 0..count {
                if let Some(mut conn) = tcp_once_from(target, source_port, &mut out)
                    && whoami
                {
                    ask_peer(&mut conn, &mut out);
                }
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
            print(&out);
        }
        Cmd::Udp {
            target,
            count,
            connected,
            source_port,
            whoami,
            size,
        } => {
            let mut out = Outcome::default();
            let payload = match (whoami, size) {
                (true, _) => b"whoami".to_vec(),
                (false, Some(n)) => vec![b'x'; n],
                (false, None) => b"hello".to_vec(),
            };
            for _ in 0..count {
                udp_once(target, connected, source_port, &payload, &mut out);
            }
            print(&out);
        }
        Cmd::UdpStream {
            target,
            interval_ms,
            source_port,
            connected,
            reconnect,
        } => udp_stream(target, interval_ms, source_port, connected, reconnect),
        Cmd::Hold {
            target,
            count,
            source_port,
        } => hold(target, count, source_port),
        Cmd::Stream { target, rate } => stream(target, rate),
        Cmd::ConnectLatency { target, count } => {
            let mut ns = Vec::with_capacity(count);
            let all = Instant::now();
            for _ in 0..count {
                let started = Instant::now();
                let s = TcpStream::connect_timeout(&target, TIMEOUT).expect("connect");
                ns.push(started.elapsed().as_nanos() as u64);
                // Wait for the greeting: paces us to the server's accept loop,
                // so no SYN is dropped on a full accept queue (a 1 s retry).
                s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
                let _ = (&s).read(&mut [0u8; 64]);
                // RST instead of FIN: no TIME_WAIT pile-up across thousands of connects.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ =
                    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger);
            }
            let total = all.elapsed().as_nanos() as u64;
            println!(
                "{}",
                serde_json::json!({"connect_ns": ns, "total_ns": total})
            );
        }
    }
}

fn print(out: &Outcome) {
    println!(
        "{}",
        serde_json::to_string(out).expect("outcome serializes")
    );
}

fn serve(name: &str, port: u16) {
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
    let udp = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
    let udp_name = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = if &buf[..n] == b"whoami" {
                format!("{udp_name}|{from}").into_bytes()
            } else {
                udp_name.clone().into_bytes()
            };
            if n > 1400 {
                reply.resize(n, b' ');
            }
            let _ = udp.send_to(&reply, from);
        }
    });
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    for conn in tcp.incoming().flatten() {
        let name = name.to_owned();
        std::thread::spawn(move || {
            let mut w = conn.try_clone().expect("clone");
            let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            if writeln!(w, "{name}").is_err() {
                return;
            }
            for line in BufReader::new(conn).lines() {
                let answer = match line {
                    Ok(l) if l.trim() == "whoami" => format!("peer {peer}"),
                    Ok(_) => format!("pong {name}"),
                    Err(_) => return,
                };
                if writeln!(w, "{answer}").is_err() {
                    return;
                }
            }
        });
    }
}

fn front(name: &str, port: u16, backend: &str) {
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    for conn in tcp.incoming().flatten() {
        let (name, backend) = (name.to_owned(), backend.to_owned());
        std::thread::spawn(move || {
            // An HTTP client speaks first; a netprobe client waits for the greeting.
            let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
            let mut first = [0u8; 4];
            let http = matches!((&conn).read(&mut first), Ok(4) if &first == b"GET ");
            let answer = match ask_backend(&backend) {
                Ok(b) => format!("{name}>{b}"),
                Err(e) => {
                    eprintln!("{name}: back end {backend}: {e}");
                    return;
                }
            };
            let mut w = &conn;
            let _ = if http {
                // Drain the request head before answering.
                let _ = conn.set_read_timeout(Some(TIMEOUT));
                let mut r = BufReader::new(&conn);
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                    line.clear();
                }
                write!(
                    w,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}\n",
                    answer.len() + 1
                )
            } else {
                writeln!(w, "{answer}")
            };
        });
    }
}

/// Resolves and connects to `backend` (`HOST:PORT`); its greeting line.
fn ask_backend(backend: &str) -> std::io::Result<String> {
    use std::net::ToSocketAddrs as _;
    let addr = backend
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim().to_owned())
}

fn tcp_once(target: SocketAddr, out: &mut Outcome) -> Option<BufReader<TcpStream>> {
    tcp_once_from(target, 0, out)
}

/// A TCP socket bound to `port` (SO_REUSEADDR, so a port whose last
/// connection is in TIME_WAIT can be used again), connected to `target`.
fn connect_from(target: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )?;
    setsockopt(&fd, ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(0, 0, 0, 0, port),
    )?;
    let SocketAddr::V4(t) = target else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(t))?;
    Ok(TcpStream::from(fd))
}

fn tcp_once_from(
    target: SocketAddr,
    source_port: u16,
    out: &mut Outcome,
) -> Option<BufReader<TcpStream>> {
    let started = Instant::now();
    let connected = if source_port == 0 {
        TcpStream::connect_timeout(&target, TIMEOUT)
    } else {
        connect_from(target, source_port)
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            out.error_in(&e, started.elapsed(), &format!("connect to {target}"));
            return None;
        }
    };
    out.note_latency(started.elapsed());
    if stream.peer_addr().ok() != Some(target) {
        out.peer_mismatch += 1;
    }
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    let mut reader = BufReader::new(stream);
    let mut name = String::new();
    let read = match reader.read_line(&mut name) {
        Ok(n) if n > 0 => {
            out.answer(name.trim());
            return Some(reader);
        }
        Ok(_) => std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        Err(e) => e,
    };
    let local = reader.get_ref().local_addr();
    let local = local.map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let what = format!("greeting on {local} -> {target}");
    out.error_in(&read, started.elapsed(), &what);
    None
}

/// Asks the server of `conn` how it sees the client.
fn ask_peer(conn: &mut BufReader<TcpStream>, out: &mut Outcome) {
    let mut reply = String::new();
    let res = writeln!(conn.get_mut(), "whoami").and_then(|()| conn.read_line(&mut reply));
    if let (Ok(_), Some(peer)) = (res, reply.trim().strip_prefix("peer ")) {
        out.seen_as.push(peer.to_owned());
    }
}

fn udp_once(
    target: SocketAddr,
    connected: bool,
    source_port: u16,
    payload: &[u8],
    out: &mut Outcome,
) {
    let started = Instant::now();
    let sock = UdpSocket::bind(("0.0.0.0", source_port)).expect("bind");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = vec![0u8; 65_536];
    let result = if connected {
        sock.connect(target)
            .and_then(|()| {
                if sock.peer_addr()? != target {
                    out.peer_mismatch += 1;
                }
                sock.send(payload)
            })
            .and_then(|_| sock.recv(&mut buf).map(|n| (n, target)))
    } else {
        sock.send_to(payload, target)
            .and_then(|_| sock.recv_from(&mut buf))
    };
    match result {
        Ok((n, from)) => {
            if from != target {
                out.peer_mismatch += 1;
            }
            out.note_latency(started.elapsed());
            let text = String::from_utf8_lossy(&buf[..n]);
            let text = text.trim_end();
            match text.split_once('|') {
                Some((name, seen)) => {
                    out.answer(name);
                    out.seen_as.push(seen.to_owned());
                }
                None => out.answer(text),
            }
        }
        Err(e) => out.error(&e, started.elapsed()),
    }
}

fn udp_stream(target: SocketAddr, interval_ms: u64, port: u16, connected: bool, reconnect: bool) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let open = || -> std::io::Result<UdpSocket> {
        let sock = UdpSocket::bind(("0.0.0.0", port))?;
        sock.set_read_timeout(Some(Duration::from_millis(interval_ms.max(100))))?;
        if connected {
            sock.connect(target)?;
        }
        Ok(sock)
    };
    let mut sock = open().expect("udp socket");
    println!("started");
    std::io::stdout().flush().expect("stdout");
    let start = Instant::now();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let sent = Instant::now();
        let result = if connected {
            sock.send(b"hello").and_then(|_| sock.recv(&mut buf))
        } else {
            sock.send_to(b"hello", target)
                .and_then(|_| sock.recv_from(&mut buf).map(|(n, _)| n))
        };
        let event = match result {
            Ok(n) => StreamEvent {
                t_ms: start.elapsed().as_millis() as u64,
                answer: Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()),
                error: None,
            },
            Err(e) => {
                if reconnect {
                    // The old socket must close before the port is bound again.
                    drop(std::mem::replace(
                        &mut sock,
                        UdpSocket::bind("0.0.0.0:0").expect("bind"),
                    ));
                    sock = open().expect("udp socket");
                }
                StreamEvent {
                    t_ms: start.elapsed().as_millis() as u64,
                    answer: None,
                    error: Some(error_kind(&e)),
                }
            }
        };
        println!("{}", serde_json::to_string(&event).expect("serializes"));
        std::io::stdout().flush().expect("stdout");
        if let Some(wait) = Duration::from_millis(interval_ms).checked_sub(sent.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn hold(target: SocketAddr, count: usize, source_port: u16) {
    let mut out = Outcome::default();
    let mut conns: Vec<BufReader<TcpStream>> = (0..count)
        .filter_map(|_| tcp_once_from(target, source_port, &mut out))
        .collect();
    print(&out);
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.map(|l| l.trim() != "check").unwrap_or(true) {
            break;
        }
        let mut check = Outcome::default();
        for c in &mut conns {
            let started = Instant::now();
            let mut reply = String::new();
            let res = writeln!(c.get_mut(), "ping").and_then(|()| c.read_line(&mut reply));
            match res {
                Ok(n) if n > 0 => check.answer(reply.trim().trim_start_matches("pong ")),
                Ok(_) => check.error(
                    &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                    started.elapsed(),
                ),
                Err(e) => check.error(&e, started.elapsed()),
            }
        }
        print(&check);
    }
    // Drain anything unread so the peer sees a clean close.
    for mut c in conns {
        let _ = c.get_mut().shutdown(std::net::Shutdown::Write);
        let _ = c.read_to_end(&mut Vec::new());
    }
}

fn stream(target: SocketAddr, rate: u32) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    println!("started");
    std::io::stdout().flush().expect("stdout");
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut out = Outcome::default();
    let mut next = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // Connections are paced from a fixed schedule, not from the end of
        // the previous one, so the rate holds even when one is slow.
        drop(tcp_once(target, &mut out));
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    print(&out);
}
