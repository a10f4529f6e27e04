//! TLS on the embedded broker's listener. rumqttd's own TLS feature would
//! link a second rustls (0.22) and x509-parser; instead vigil accepts the
//! TLS connection with the rustls it already has and passes the decrypted
//! bytes to rumqttd's plain listener on loopback, one TCP connection per
//! client. Sign-in (the users file) is rumqttd's, behind it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::tokio_rustls::TlsAcceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{error, warn};

use crate::ingest::ratelimit::RateLimit;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept TLS clients on `listener` and join each to rumqttd at `broker`,
/// at most `max_connections` at once (rumqttd's own limit: more would be
/// refused behind this anyway). Runs until the process exits.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    broker: SocketAddr,
    max_connections: usize,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "embedded broker: cannot use its TLS listener");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(config);
    let open = Arc::new(Semaphore::new(max_connections));
    let failures = Arc::new(std::sync::Mutex::new(RateLimit::new(Duration::from_secs(
        10,
    ))));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, typically: wait for some to close.
                warn!(error = %e, "embedded broker: cannot accept a TLS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Over the limit: closed at once, as rumqttd does.
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let acceptor = acceptor.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let held = failures
                        .lock()
                        .ok()
                        .and_then(|mut f| f.check((), Instant::now()));
                    if let Some(suppressed) = held {
                        warn!(%peer, error = %e, suppressed, "embedded broker: TLS handshake failed (a client without TLS, or without a certificate the broker accepts)");
                    }
                    return;
                }
                Err(_) => return,
            };
            let mut tls = tls;
            match TcpStream::connect(broker).await {
                Ok(mut plain) => {
                    let _ = plain.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
                Err(e) => {
                    error!(error = %e, %broker, "embedded broker: cannot reach its own MQTT listener");
                }
            }
        });
    }
}
