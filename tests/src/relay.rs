//! A TCP relay on 127.0.0.1 that can be cut and restored: from the side of
//! whoever connects through it, the server behind it goes away (live
//! connections shut, new ones refused) and comes back on the same address.
use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::Result;

pub struct Relay {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Relay {
    /// A relay on 127.0.0.1, on a port below the ephemeral range: after a
    /// [`Relay::cut`], [`Relay::restore`] binds the same number again, and
    /// no outgoing connection may have taken it meanwhile.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let port = crate::cluster::free_port()?;
        Self::listen(TcpListener::bind(("127.0.0.1", port))?, upstream)
    }

    /// A relay listening on `listen` inside network namespace `netns`,
    /// forwarding to `upstream` as reached from this process's namespace
    /// (the listening socket stays bound to `netns`; the relay's threads
    /// run here).
    pub fn start_in(
        netns: &crate::netns::Netns,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<Self> {
        let listener = {
            let _inside = crate::netns::InNetns::enter(netns)?;
            TcpListener::bind(listen)?
        };
        Self::listen(listener, upstream)
    }

    fn listen(listener: TcpListener, upstream: SocketAddr) -> Result<Self> {
        let mut r = Self {
            addr: listener.local_addr()?,
            upstream,
            open: Arc::new(AtomicBool::new(false)),
            conns: Arc::default(),
            acceptor: None,
        };
        r.serve(listener)?;
        Ok(r)
    }

    fn serve(&mut self, listener: TcpListener) -> Result<()> {
        listener.set_nonblocking(true)?;
        self.open.store(true, Ordering::SeqCst);
        let (open, conns, upstream) = (
            Arc::clone(&self.open),
            Arc::clone(&self.conns),
            self.upstream,
        );
        self.acceptor = Some(thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(upstream) {
                            pipe(client, server, &conns);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
            // The listener closes here: new connections are refused.
        }));
        Ok(())
    }

    /// The server "goes away": every relayed connection is shut and the
    /// port stops accepting.
    pub fn cut(&mut self) {
        self.open.store(false, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The server is back, on the same address.
    pub fn restore(&mut self) -> Result<()> {
        let listener = TcpListener::bind(self.addr)?;
        self.serve(listener)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pipe(client: TcpStream, server: TcpStream, conns: &Arc<Mutex<Vec<TcpStream>>>) {
    let mut all = conns.lock().unwrap();
    for s in [&client, &server] {
        if let Ok(c) = s.try_clone() {
            all.push(c);
        }
    }
    for (mut from, mut to) in [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ]
    .into_iter()
    .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
    {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}
