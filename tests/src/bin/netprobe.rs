//! `netprobe`: the real TCP/UDP servers and clients of the test topologies.
//!
//! - `serve --name N --port P`: TCP and UDP on 0.0.0.0:P. A TCP connection
//!   is greeted with `N\n` and each line sent is answered `pong N\n`; a UDP
//!   datagram is answered with `N`.
//! - `tcp|udp --target IP:PORT --count C`: C new connections (or sockets),
//!   each reporting who answered; prints one JSON [`testbed::probe::Outcome`].
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
use testbed::probe::Outcome;

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
    Tcp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
        /// Pause between connections, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
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
    },
    Hold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        count: usize,
    },
    Stream {
        #[arg(long)]
        target: SocketAddr,
        /// New connections per second.
        #[arg(long)]
        rate: u32,
    },
    /// Times `count` connect() calls (each then closed); prints the
    /// latencies in nanoseconds as a JSON array.
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
        Cmd::Tcp {
            target,
            count,
            interval_ms,
        } => {
            let mut out = Outcome::default();
            for _ in 0..count {
                tcp_once(target, &mut out);
                std::thread::sleep(Duration::from_millis(interval_ms));
            }
            print(&out);
        }
        Cmd::Udp {
            target,
            count,
            connected,
            source_port,
        } => {
            let mut out = Outcome::default();
            for _ in 0..count {
                udp_once(target, connected, source_port, &mut out);
            }
            print(&out);
        }
        Cmd::Hold { target, count } => hold(target, count),
        Cmd::Stream { target, rate } => stream(target, rate),
        Cmd::ConnectLatency { target, count } => {
            let mut ns = Vec::with_capacity(count);
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
            println!("{}", serde_json::to_string(&ns).expect("serializes"));
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
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(udp_name.as_bytes(), from);
        }
    });
    println!("ready");
    std::io::stdout().flush().expect("stdout");
    for conn in tcp.incoming().flatten() {
        let name = name.to_owned();
        std::thread::spawn(move || {
            let mut w = conn.try_clone().expect("clone");
            if writeln!(w, "{name}").is_err() {
                return;
            }
            for line in BufReader::new(conn).lines() {
                if line.is_err() || writeln!(w, "pong {name}").is_err() {
                    return;
                }
            }
        });
    }
}

fn tcp_once(target: SocketAddr, out: &mut Outcome) -> Option<BufReader<TcpStream>> {
    let started = Instant::now();
    let stream = match TcpStream::connect_timeout(&target, TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            out.error(&e, started.elapsed());
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
    match reader.read_line(&mut name) {
        Ok(n) if n > 0 => {
            out.answer(name.trim());
            Some(reader)
        }
        Ok(_) => {
            out.error(
                &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                started.elapsed(),
            );
            None
        }
        Err(e) => {
            out.error(&e, started.elapsed());
            None
        }
    }
}

fn udp_once(target: SocketAddr, connected: bool, source_port: u16, out: &mut Outcome) {
    let started = Instant::now();
    let sock = UdpSocket::bind(("0.0.0.0", source_port)).expect("bind");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 1500];
    let result = if connected {
        sock.connect(target)
            .and_then(|()| {
                if sock.peer_addr()? != target {
                    out.peer_mismatch += 1;
                }
                sock.send(b"hello")
            })
            .and_then(|_| sock.recv(&mut buf).map(|n| (n, target)))
    } else {
        sock.send_to(b"hello", target)
            .and_then(|_| sock.recv_from(&mut buf))
    };
    match result {
        Ok((n, from)) => {
            if from != target {
                out.peer_mismatch += 1;
            }
            out.note_latency(started.elapsed());
            out.answer(&String::from_utf8_lossy(&buf[..n]));
        }
        Err(e) => out.error(&e, started.elapsed()),
    }
}

fn hold(target: SocketAddr, count: usize) {
    let mut out = Outcome::default();
    let mut conns: Vec<BufReader<TcpStream>> = (0..count)
        .filter_map(|_| tcp_once(target, &mut out))
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
