//! A TCP proxy that a test can cut and heal, to partition one process from another.
//!
//! Cut, it is a black hole, as a severed network link is: bytes already sent wait in the
//! proxy, nothing reaches either side, new connections are accepted and go nowhere; no reset,
//! so clients learn of the cut only from their own timeouts. Healed, everything held is
//! delivered and traffic flows again, as TCP's retransmissions deliver it after a real
//! partition heals.
//!
//! Down, it is a dead server: open connections are closed and new ones closed at once, so
//! clients fail fast, as against a stopped server.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

/// Whether the link is cut, with a condition variable to wait for healing.
#[derive(Default)]
struct Link {
    cut: Mutex<bool>,
    healed: Condvar,
    down: AtomicBool,
    /// Open connections (both ends) by number, to close when going down; a connection leaves
    /// when it ends, so its sockets are closed then (a kept clone would hold them open).
    open: Mutex<std::collections::HashMap<u64, [TcpStream; 2]>>,
    /// Numbers the connections.
    next: std::sync::atomic::AtomicU64,
}

impl Link {
    fn wait_open(&self) {
        let mut cut = self.cut.lock().unwrap_or_else(|p| p.into_inner());
        while *cut {
            cut = self.healed.wait(cut).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A running proxy from a free port on 127.0.0.1 to `upstream`; stops accepting when dropped.
pub struct TcpProxy {
    port: u16,
    link: Arc<Link>,
    stopped: Arc<AtomicBool>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, link: Arc<Link>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Hold the bytes while the link is cut.
        link.wait_open();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl TcpProxy {
    /// Starts forwarding a new port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let link = Arc::new(Link::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let (l, s) = (link.clone(), stopped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if l.down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let link = l.clone();
                std::thread::spawn(move || {
                    // A connection opened during a cut waits, as a SYN would be retried.
                    link.wait_open();
                    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let id = link.next.fetch_add(1, Ordering::SeqCst);
                    if let (Ok(c3), Ok(s3)) = (client.try_clone(), server.try_clone()) {
                        let mut open = link.open.lock().unwrap_or_else(|p| p.into_inner());
                        open.insert(id, [c3, s3]);
                    }
                    let back = link.clone();
                    let backwards = std::thread::spawn(move || pump(s2, c2, back));
                    pump(client, server, link.clone());
                    let _ = backwards.join();
                    link.open
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                });
            }
        });
        Ok(TcpProxy {
            port,
            link,
            stopped,
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts the link: nothing passes until [`TcpProxy::heal`].
    pub fn cut(&self) {
        *self.link.cut.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    /// Takes the far side down: open connections are closed, new ones closed at once, until
    /// [`TcpProxy::heal`].
    pub fn down(&self) {
        self.link.down.store(true, Ordering::SeqCst);
        let open = std::mem::take(&mut *self.link.open.lock().unwrap_or_else(|p| p.into_inner()));
        for stream in open.into_values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Heals the link: what was held is delivered, and traffic flows.
    pub fn heal(&self) {
        self.link.down.store(false, Ordering::SeqCst);
        *self.link.cut.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.link.healed.notify_all();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.heal();
        self.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
