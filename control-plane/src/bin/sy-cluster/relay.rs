//! The API server's door for clients in the root network namespace: a TCP
//! relay listening on 127.0.0.1 whose outgoing connections are opened
//! inside the control-plane namespace. Nothing else is added to the root
//! namespace (no link, address or route): only this loopback listener.
use std::{
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    thread,
};

use anyhow::{Context as _, Result};

use crate::sys::in_netns;

/// Listens on 127.0.0.1 (`port`, 0: any free one), writes the bound port
/// to `port_file`, and forwards every connection to `upstream` as reached
/// from namespace `netns`. Runs until killed.
pub fn run(netns: &str, upstream: SocketAddr, port: u16, port_file: &Path) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    let bound = listener.local_addr()?.port();
    let tmp = port_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{bound}\n"))?;
    std::fs::rename(&tmp, port_file)?;
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let ns = netns.to_owned();
        thread::spawn(move || {
            // The upstream socket is made inside the namespace; it stays
            // there whatever thread uses it afterwards.
            match in_netns(&ns, move || Ok(TcpStream::connect(upstream)?)) {
                Ok(server) => pipe(client, server),
                Err(e) => {
                    eprintln!("relay: connecting to {upstream} in {ns}: {e:#}");
                    let _ = client.shutdown(Shutdown::Both);
                }
            }
        });
    }
    Ok(())
}

/// Copies both ways until each side has closed.
fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || copy(a2, b2));
    copy(b, a);
    let _ = up.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
