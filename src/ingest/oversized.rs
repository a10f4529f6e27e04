//! Publishes too large to read whole.
//!
//! The local connection refuses a packet longer than
//! `broker.max_payload_bytes` plus the largest topic and header
//! ([`packet_limit`]): rumqttc reads the fixed header, sees the length and
//! drops the connection before buffering any of the packet. A QoS 0 message
//! is then gone. A QoS 1 message stays unacknowledged in vigil's persistent
//! session, and the broker sends it again on the next connection (MQTT 3.1.1
//! §4.4), where it would be refused again: ingest would loop on it forever
//! and never reach the messages queued behind it.
//!
//! So before reconnecting, ingest takes the session's redeliveries off the
//! wire itself ([`Drain`]), on a short connection under the same client id:
//!
//! - a publish with a payload over `max_payload_bytes` is read in small
//!   chunks and discarded, never held whole; its topic, size and first 64 KiB
//!   become a `too_large` dead letter, and a QoS 1 one is acknowledged so
//!   that the broker forgets it;
//! - a QoS 0 publish within the limit is handed over like any other;
//! - a QoS 1 publish within the limit is read past and left unacknowledged:
//!   the broker sends it again to the next connection.
//!
//! The redeliveries end with the PINGRESP to a PINGREQ sent right behind the
//! CONNECT: a broker sends a resumed session's unacknowledged messages as it
//! accepts the CONNECT, and answers one connection's packets in order. Then
//! the drain sends DISCONNECT and handles whatever arrives until the broker
//! closes the connection.
//!
//! Unlike a stored reading, an oversized message is acknowledged as soon as
//! it has been read, not once its dead letter is on disk: a crash in between
//! loses the dead letter of a payload that could never have been stored.
//! vigil subscribes at QoS 0 or 1, so no QoS 2 exchange is needed.

use std::future::Future;
use std::io;
use std::time::Duration;

use rumqttc::{Connect, Packet, PubAck};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::route::DEAD_LETTER_MAX_PAYLOAD;
use crate::config::BrokerConfig;

/// Largest PUBLISH header after the fixed header: the topic (two length
/// bytes and up to 65,535 bytes) and the packet id.
const PUBLISH_HEADER_MAX: usize = 2 + 65_535 + 2;

/// How long the drain waits for the broker's next bytes before giving up.
const IDLE: Duration = Duration::from_secs(30);

/// Chunk in which discarded payloads are read.
const CHUNK: usize = 64 * 1024;

/// The incoming packet limit of the local connection (MQTT's remaining
/// length, which rumqttc checks): any topic with a payload of up to
/// `max_payload_bytes` fits. A payload a little over it may still fit, and
/// is dead-lettered by `route`; larger ones are refused unread.
pub fn packet_limit(max_payload_bytes: usize) -> usize {
    max_payload_bytes.saturating_add(PUBLISH_HEADER_MAX)
}

/// The size rumqttc refused, when that is why the connection failed.
pub fn refused_size(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(size),
        )) => Some(*size),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the broker refused the connection (CONNACK return code {0})")]
    Refused(u8),
    #[error("the broker sent a malformed packet: {0}")]
    Protocol(&'static str),
    #[error("the broker sent nothing for {} s", IDLE.as_secs())]
    Idle,
}

/// What the drain found that ingest hands over.
#[derive(Debug, PartialEq)]
pub enum Drained {
    /// A publish over `max_payload_bytes`: its topic, the first 64 KiB of its
    /// payload and the payload's size. Acknowledged already if it was QoS 1.
    TooLarge {
        topic: String,
        head: Vec<u8>,
        len: usize,
    },
    /// A QoS 0 publish within the limit.
    Message { topic: String, payload: Vec<u8> },
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A short connection that takes a session's redeliveries off the wire.
pub struct Drain {
    stream: BufReader<Box<dyn Stream>>,
    max_payload_bytes: usize,
    /// The PINGRESP came and DISCONNECT is sent: read to the end.
    closing: bool,
}

impl Drain {
    /// Connect under the broker's client id, resuming its session, and ask
    /// for the PINGRESP that marks the end of the redeliveries.
    pub async fn connect(broker: &BrokerConfig) -> Result<Drain, DrainError> {
        let tcp = timed(TcpStream::connect((broker.host.as_str(), broker.port))).await?;
        match &broker.tls {
            None => Self::start(Box::new(tcp), broker).await,
            Some(files) => {
                let config = crate::tls::client_config(files).map_err(DrainError::Tls)?;
                let name = rustls::pki_types::ServerName::try_from(broker.host.clone())
                    .map_err(|e| DrainError::Tls(e.to_string()))?;
                let tls = rumqttc::tokio_rustls::TlsConnector::from(config);
                Self::start(Box::new(timed(tls.connect(name, tcp)).await?), broker).await
            }
        }
    }

    /// The MQTT handshake on a connected stream.
    async fn start(stream: Box<dyn Stream>, broker: &BrokerConfig) -> Result<Drain, DrainError> {
        let mut drain = Drain {
            stream: BufReader::with_capacity(CHUNK, stream),
            max_payload_bytes: broker.max_payload_bytes,
            closing: false,
        };
        let mut connect = Connect::new(broker.client_id.clone());
        connect.clean_session = false;
        // No keepalive: the drain only reads, and reading a large payload
        // may take longer than the keepalive interval.
        connect.keep_alive = 0;
        if let Some(c) = &broker.credentials {
            connect.set_login(c.username.clone(), c.password.clone().unwrap_or_default());
        }
        // A client may send further packets before the CONNACK (3.1.4).
        drain
            .send(&[Packet::Connect(connect), Packet::PingReq])
            .await?;
        match drain.fixed_header().await? {
            Some((0x20, 2)) => {}
            _ => return Err(DrainError::Protocol("expected a CONNACK")),
        }
        let mut connack = [0u8; 2];
        drain.read_exact(&mut connack).await?;
        if connack[1] != 0 {
            return Err(DrainError::Refused(connack[1]));
        }
        Ok(drain)
    }

    /// The next message to hand over; `None` once the broker has closed the
    /// connection.
    pub async fn next(&mut self) -> Result<Option<Drained>, DrainError> {
        match self.next_packet().await {
            // After the DISCONNECT the broker may close in the middle of a
            // packet: a QoS 1 message cut short comes again next time.
            Err(DrainError::Io(_)) if self.closing => Ok(None),
            other => other,
        }
    }

    async fn next_packet(&mut self) -> Result<Option<Drained>, DrainError> {
        loop {
            let Some((byte1, len)) = self.fixed_header().await? else {
                return Ok(None);
            };
            match byte1 >> 4 {
                3 => {
                    if let Some(found) = self.publish(byte1, len).await? {
                        return Ok(Some(found));
                    }
                }
                13 if !self.closing => {
                    self.closing = true;
                    self.skip(len).await?;
                    self.send(&[Packet::Disconnect]).await?;
                }
                _ => self.skip(len).await?,
            }
        }
    }

    /// The rest of a PUBLISH of `len` bytes after its fixed header.
    async fn publish(&mut self, byte1: u8, len: usize) -> Result<Option<Drained>, DrainError> {
        let qos = (byte1 >> 1) & 3;
        if qos == 3 {
            return Err(DrainError::Protocol("a publish with QoS 3"));
        }
        let topic_len = usize::from(self.read_u16().await?);
        let id_len = if qos > 0 { 2 } else { 0 };
        let payload_len = len
            .checked_sub(2 + topic_len + id_len)
            .ok_or(DrainError::Protocol("a publish shorter than its topic"))?;
        let mut topic = vec![0u8; topic_len];
        self.read_exact(&mut topic).await?;
        let topic = String::from_utf8_lossy(&topic).into_owned();
        let pkid = if qos > 0 {
            Some(self.read_u16().await?)
        } else {
            None
        };
        if payload_len > self.max_payload_bytes {
            let mut head = vec![0u8; payload_len.min(DEAD_LETTER_MAX_PAYLOAD)];
            self.read_exact(&mut head).await?;
            self.skip(payload_len - head.len()).await?;
            if let (1, Some(pkid)) = (qos, pkid) {
                self.send(&[Packet::PubAck(PubAck::new(pkid))]).await?;
            }
            return Ok(Some(Drained::TooLarge {
                topic,
                head,
                len: payload_len,
            }));
        }
        if qos == 0 {
            let mut payload = vec![0u8; payload_len];
            self.read_exact(&mut payload).await?;
            return Ok(Some(Drained::Message { topic, payload }));
        }
        // Unacknowledged: the next connection gets it again.
        self.skip(payload_len).await?;
        Ok(None)
    }

    /// Encode with rumqttc's own packet writer and send at once.
    async fn send(&mut self, packets: &[Packet]) -> Result<(), DrainError> {
        // rumqttc writes into a `bytes::BytesMut`, whose type is inferred here.
        let mut buf = Default::default();
        for p in packets {
            p.write(&mut buf, usize::MAX)
                .map_err(|_| DrainError::Protocol("cannot encode a packet"))?;
        }
        let w = self.stream.get_mut();
        timed(w.write_all(&buf)).await?;
        timed(w.flush()).await
    }

    /// Packet type byte and remaining length; `None` at the end of the stream.
    async fn fixed_header(&mut self) -> Result<Option<(u8, usize)>, DrainError> {
        let mut byte1 = [0u8; 1];
        if timed(self.stream.read(&mut byte1)).await? == 0 {
            return Ok(None);
        }
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            let b = timed(self.stream.read_u8()).await?;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(Some((byte1[0], len)));
            }
        }
        Err(DrainError::Protocol("a remaining length over four bytes"))
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DrainError> {
        timed(self.stream.read_exact(buf)).await.map(|_| ())
    }

    async fn read_u16(&mut self) -> Result<u16, DrainError> {
        timed(self.stream.read_u16()).await
    }

    /// Read and discard `n` bytes, a chunk at a time.
    async fn skip(&mut self, mut n: usize) -> Result<(), DrainError> {
        let mut chunk = vec![0u8; n.min(CHUNK)];
        while n > 0 {
            let take = n.min(chunk.len());
            self.read_exact(&mut chunk[..take]).await?;
            n -= take;
        }
        Ok(())
    }
}

/// An I/O step that fails when the broker stays silent for [`IDLE`].
async fn timed<T>(step: impl Future<Output = io::Result<T>>) -> Result<T, DrainError> {
    match tokio::time::timeout(IDLE, step).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(DrainError::Idle),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;
    use tokio::io::DuplexStream;

    fn broker(max_payload_bytes: usize) -> BrokerConfig {
        BrokerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "vigil-gw".into(),
            keepalive: Duration::from_secs(30),
            credentials: Some(Credentials {
                username: "vigil".into(),
                password: Some("secret".into()),
            }),
            tls: None,
            max_payload_bytes,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
        }
    }

    /// A PUBLISH as a broker writes it.
    fn publish(topic: &str, qos: u8, pkid: u16, payload_len: usize) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend((0..payload_len).map(|i| b'0' + (i % 10) as u8));
        let mut out = vec![0x30 | (qos << 1) | if qos > 0 { 0x08 } else { 0 }];
        let mut n = body.len();
        loop {
            let b = (n % 128) as u8;
            n /= 128;
            out.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 {
                break;
            }
        }
        out.extend(body);
        out
    }

    /// Everything the client wrote, decoded by rumqttc.
    async fn client_packets(mut broker_side: DuplexStream) -> Vec<Packet> {
        let mut raw = Vec::new();
        broker_side.read_to_end(&mut raw).await.unwrap();
        // rumqttc reads from a `bytes::BytesMut`: the first (empty) read fixes
        // the type of `buf`.
        let mut buf = Default::default();
        assert!(Packet::read(&mut buf, usize::MAX).is_err());
        buf.extend_from_slice(&raw);
        let mut packets = Vec::new();
        while let Ok(p) = Packet::read(&mut buf, usize::MAX) {
            packets.push(p);
        }
        assert!(buf.is_empty(), "undecodable bytes: {buf:?}");
        packets
    }

    /// The redeliveries of a resumed session, then the PINGRESP, then a
    /// message sent before the broker saw the DISCONNECT.
    #[tokio::test]
    async fn takes_oversized_messages_off_the_session_and_leaves_the_rest() {
        let (client_side, mut broker_side) = tokio::io::duplex(1 << 20);
        let mut script = vec![0x20, 2, 1, 0];
        script.extend(publish("plant/l1/pump-1/vibration", 1, 7, 10));
        script.extend(publish("plant/l1/pump-1/vibration", 1, 8, 300_000));
        script.extend(publish("plant/l1/pump-2/temperature", 0, 0, 1_000));
        script.extend(publish("plant/l1/pump-3/vibration", 0, 0, 2_000));
        script.extend([0xd0, 0]);
        script.extend(publish("plant/l1/pump-4/temperature", 0, 0, 5));
        let writer = tokio::spawn(async move {
            broker_side.write_all(&script).await.unwrap();
            broker_side.shutdown().await.unwrap();
            broker_side
        });
        let mut drain = Drain::start(Box::new(client_side), &broker(1_000))
            .await
            .unwrap();
        let mut found = Vec::new();
        while let Some(d) = drain.next().await.unwrap() {
            found.push(d);
        }
        drop(drain);
        let digits = |n: usize| (0..n).map(|i| b'0' + (i % 10) as u8).collect::<Vec<u8>>();
        assert_eq!(
            found,
            vec![
                Drained::TooLarge {
                    topic: "plant/l1/pump-1/vibration".into(),
                    head: digits(DEAD_LETTER_MAX_PAYLOAD),
                    len: 300_000,
                },
                Drained::Message {
                    topic: "plant/l1/pump-2/temperature".into(),
                    payload: digits(1_000),
                },
                Drained::TooLarge {
                    topic: "plant/l1/pump-3/vibration".into(),
                    head: digits(2_000),
                    len: 2_000,
                },
                Drained::Message {
                    topic: "plant/l1/pump-4/temperature".into(),
                    payload: digits(5),
                },
            ]
        );

        let mut connect = Connect::new("vigil-gw");
        connect.clean_session = false;
        connect.keep_alive = 0;
        connect.set_login("vigil", "secret");
        // Only the oversized QoS 1 message is acknowledged; the one within
        // the limit (id 7) is left for the next connection.
        assert_eq!(
            client_packets(writer.await.unwrap()).await,
            vec![
                Packet::Connect(connect),
                Packet::PingReq,
                Packet::PubAck(PubAck::new(8)),
                Packet::Disconnect,
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_connection_or_garbage_is_an_error_not_a_panic() {
        for (script, refused) in [
            (vec![0x20, 2, 0, 5], true),
            (vec![0x30, 2, 0, 0], false),
            (vec![0x20, 2, 0, 0, 0x32, 3, 0, 9, 0], false),
            (vec![0x20, 2, 0, 0, 0x36, 2, 0, 0], false),
            (
                vec![0x20, 2, 0, 0, 0x30, 0xff, 0xff, 0xff, 0xff, 0x7f],
                false,
            ),
        ] {
            let (client_side, mut broker_side) = tokio::io::duplex(1 << 16);
            broker_side.write_all(&script).await.unwrap();
            broker_side.shutdown().await.unwrap();
            let result = match Drain::start(Box::new(client_side), &broker(1_000)).await {
                Ok(mut drain) => drain.next().await.map(|_| ()),
                Err(e) => Err(e),
            };
            match result {
                Err(DrainError::Refused(5)) => assert!(refused, "{script:?}"),
                Err(DrainError::Protocol(_) | DrainError::Io(_)) => {
                    assert!(!refused, "{script:?}")
                }
                other => panic!("{script:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_packet_cut_short_after_the_disconnect_ends_the_drain() {
        let (client_side, mut broker_side) = tokio::io::duplex(1 << 16);
        let mut script = vec![0x20, 2, 1, 0, 0xd0, 0];
        let cut = publish("plant/l1/pump-1/temperature", 1, 9, 100);
        script.extend(&cut[..cut.len() - 10]);
        broker_side.write_all(&script).await.unwrap();
        broker_side.shutdown().await.unwrap();
        let mut drain = Drain::start(Box::new(client_side), &broker(1_000))
            .await
            .unwrap();
        assert_eq!(drain.next().await.unwrap(), None);
    }

    #[test]
    fn the_packet_limit_fits_any_topic_with_a_payload_at_the_limit() {
        assert_eq!(packet_limit(1 << 20), (1 << 20) + 2 + 65_535 + 2);
        assert_eq!(packet_limit(usize::MAX), usize::MAX);
    }
}
