//! A TCP relay in front of a real broker whose way back can be held: while
//! held, the broker still gets everything the client sends (and its
//! subscribers see it), but the client hears nothing back, no PUBACK above
//! all, until the relay lets go. It stands in for an uplink that loses the
//! broker's acknowledgements.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a waiting thread looks at the flags.
const POLL: Duration = Duration::from_millis(5);

pub struct Relay {
    /// Where clients connect (instead of the broker's port).
    pub port: u16,
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Relay {
    /// Relay connections on a free loopback port to the broker on `broker_port`.
    pub fn start(broker_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let held = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (held.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)) {
                            relay(client, broker, h.clone(), s.clone());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => panic!("relay accept failed: {e}"),
                }
            }
        });
        Relay {
            port,
            held,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// From now on, nothing goes back to the clients.
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// What the broker sent meanwhile goes back, and so does the rest.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copy both ways until either side closes; the way back only while not held.
fn relay(client: TcpStream, broker: TcpStream, held: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let closed = Arc::new(AtomicBool::new(false));
    let (c, b) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
    let (done, halt) = (closed.clone(), stop.clone());
    std::thread::spawn(move || copy(c, b, None, &done, &halt));
    std::thread::spawn(move || copy(broker, client, Some(&held), &closed, &stop));
}

fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    held: Option<&AtomicBool>,
    closed: &AtomicBool,
    stop: &AtomicBool,
) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut buf = [0u8; 16 * 1024];
    while !closed.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        if held.is_some_and(|h| h.load(Ordering::SeqCst)) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    closed.store(true, Ordering::SeqCst);
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
