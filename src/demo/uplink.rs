//! The demo's uplink: a TCP relay between vigil and the upstream broker
//! that can be cut, as a cellular modem or a plant firewall cuts a
//! gateway off. Cut, it closes every relayed connection and closes each
//! new one as soon as it is accepted, so vigil sees a dead link, not a
//! slow one.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Uplink {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Uplink {
    /// Relay connections made to a new loopback port to `to`.
    pub async fn start(to: SocketAddr) -> io::Result<Uplink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(relay(listener, to, cut_rx));
        Ok(Uplink { addr, cut })
    }

    /// Where vigil connects instead of the upstream broker.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

async fn relay(listener: TcpListener, to: SocketAddr, cut: watch::Receiver<bool>) {
    loop {
        let inbound = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of file descriptors or the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if *cut.borrow() {
            continue; // dropped: closed at once
        }
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(to).await else {
                return;
            };
            let mut inbound = inbound;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                // Dropping both sockets cuts the connection.
                _ = cut.wait_for(|c| *c) => {}
            }
        });
    }
}
