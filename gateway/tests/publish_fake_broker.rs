//! The windowed commit through the real rumqttc stack, against a scripted MQTT 3.1.1 broker
//! that acknowledges out of order, drops the connection mid-window and then claims a session
//! was kept. Needs no broker: the script is the broker.

#[path = "common/publish_kit.rs"]
mod kit;

use std::num::NonZeroU16;
use std::time::Duration;

use fivezero_gateway::config::{MqttProtocol, MqttUrl};
use fivezero_gateway::publish::{Publisher, PublisherConfig, RetainUntil};
use fivezero_model::topic::Topics;
use fivezero_model::wire::{self, Presence};
use kit::{MemoryOutbox, Mode, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(10);

/// One MQTT 3.1.1 packet, as far as the script needs it.
#[derive(Debug)]
enum Pkt {
    Connect,
    Publish {
        dup: bool,
        topic: String,
        pkid: u16,
        payload: Vec<u8>,
    },
    Subscribe {
        pkid: u16,
    },
    PingReq,
    Disconnect,
    Other(u8),
}

async fn read_packet(s: &mut TcpStream) -> std::io::Result<Pkt> {
    let b0 = s.read_u8().await?;
    let mut len = 0usize;
    let mut shift = 0;
    loop {
        let b = s.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await?;
    Ok(match b0 >> 4 {
        1 => Pkt::Connect,
        3 => {
            let qos = (b0 >> 1) & 3;
            let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let topic = String::from_utf8(body[2..2 + tlen].to_vec()).unwrap();
            let mut at = 2 + tlen;
            let pkid = if qos > 0 {
                at += 2;
                u16::from_be_bytes([body[at - 2], body[at - 1]])
            } else {
                0
            };
            Pkt::Publish {
                dup: b0 & 0x08 != 0,
                topic,
                pkid,
                payload: body[at..].to_vec(),
            }
        }
        8 => Pkt::Subscribe {
            pkid: u16::from_be_bytes([body[0], body[1]]),
        },
        12 => Pkt::PingReq,
        14 => Pkt::Disconnect,
        t => Pkt::Other(t),
    })
}

async fn puback(s: &mut TcpStream, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    s.write_all(&[0x40, 0x02, hi, lo]).await.unwrap();
}

/// A batch publish: its first sequence, packet id and DUP flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    first_seq: u64,
    pkid: u16,
    dup: bool,
}

/// The next batch publish; answers SUBSCRIBE and PINGREQ and acknowledges status messages
/// on the way. `None` on DISCONNECT or end of stream.
async fn next_batch(s: &mut TcpStream) -> Option<Sent> {
    loop {
        let pkt = tokio::time::timeout(LIMIT, read_packet(s))
            .await
            .expect("a packet within the limit")
            .ok()?;
        match pkt {
            Pkt::Publish {
                dup,
                topic,
                pkid,
                payload,
            } => {
                if topic.ends_with("/batches") {
                    let b = wire::decode_batch(&payload).unwrap();
                    return Some(Sent {
                        first_seq: b.first_seq,
                        pkid,
                        dup,
                    });
                }
                puback(s, pkid).await;
            }
            Pkt::Subscribe { pkid } => {
                let [hi, lo] = pkid.to_be_bytes();
                s.write_all(&[0x90, 0x03, hi, lo, 0x01]).await.unwrap();
            }
            Pkt::PingReq => s.write_all(&[0xD0, 0x00]).await.unwrap(),
            Pkt::Disconnect => return None,
            Pkt::Connect => panic!("unexpected {pkt:?}"),
            Pkt::Other(kind) => panic!("unexpected packet type {kind}"),
        }
    }
}

async fn accept(listener: &TcpListener, session_present: bool) -> TcpStream {
    let (mut s, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("the publisher connects")
        .unwrap();
    let pkt = read_packet(&mut s).await.unwrap();
    assert!(matches!(pkt, Pkt::Connect), "{pkt:?}");
    s.write_all(&[0x20, 0x02, u8::from(session_present), 0x00])
        .await
        .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_pubacks_and_a_dropped_window_lose_nothing_and_duplicate_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = MqttUrl {
        tls: false,
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
    };
    let topics = Topics::new(&kit::unique_prefix(), "site", "gw-fake").unwrap();
    let mut config = PublisherConfig::new(topics.clone(), url);
    config.protocol = MqttProtocol::V311;
    config.retain_until = RetainUntil::BrokerAck;
    config.window = NonZeroU16::new(8).unwrap();
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(200);
    let outbox = MemoryOutbox::new("gw-fake", "site", Mode::BrokerAck);
    for _ in 0..20 {
        outbox.commit(1); // message i covers sequence i
    }
    let publisher = Publisher::new(config, outbox.clone());
    let stats = publisher.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(publisher.run(async move {
        let _ = stopped.await;
    }));

    // Connection 1: the window fills with messages 1..=8, oldest first.
    let mut s = accept(&listener, false).await;
    let mut first = Vec::new();
    for _ in 0..8 {
        first.push(next_batch(&mut s).await.unwrap());
    }
    assert_eq!(
        first.iter().map(|p| p.first_seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    // The broker acknowledges 8, 7, 6, 5: newest first.
    for p in first[4..].iter().rev() {
        puback(&mut s, p.pkid).await;
    }
    // Each PUBACK acknowledged exactly its own message.
    eventually("four acknowledgements", LIMIT, || {
        outbox.broker_acks().len() == 4
    })
    .await;
    let mut acks = outbox.broker_acks();
    assert_eq!(acks, [(8, 1), (7, 1), (6, 1), (5, 1)]);
    // The freed room lets 9..=12 out.
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(next_batch(&mut s).await.unwrap().first_seq);
    }
    assert_eq!(more, [9, 10, 11, 12]);
    // Then the connection drops with 1..=4 and 9..=12 unacknowledged.
    drop(s);

    // Connection 2: the broker claims a session (so rumqttc would resend its own queue, had
    // the publisher not cleared it). Everything unacknowledged comes again from the outbox,
    // each message once, oldest first, and nothing already acknowledged is resent.
    let mut s = accept(&listener, true).await;
    let mut second = Vec::new();
    while second.len() < 16 {
        let p = next_batch(&mut s).await.unwrap();
        puback(&mut s, p.pkid).await;
        second.push(p);
    }
    let seqs: Vec<u64> = second.iter().map(|p| p.first_seq).collect();
    let expected: Vec<u64> = (1..=4).chain(9..=20).collect();
    assert_eq!(seqs, expected);
    assert!(second.iter().all(|p| !p.dup), "no resend by rumqttc itself");
    eventually("every message acked", LIMIT, || outbox.all_broker_acked()).await;
    acks = outbox.broker_acks();
    acks.sort_unstable();
    assert_eq!(acks, (1..=20).map(|i| (i, 1)).collect::<Vec<_>>());
    let st = stats.snapshot();
    assert_eq!((st.connects, st.reconnects, st.disconnects), (2, 1, 1));
    assert_eq!(st.republished_messages, 8);
    assert_eq!(st.broker_acks, 20);

    // A clean stop: `offline` retained, acknowledged, then DISCONNECT.
    let serve = tokio::spawn(async move {
        let mut offline = false;
        loop {
            match tokio::time::timeout(LIMIT, read_packet(&mut s)).await {
                Ok(Ok(Pkt::Publish {
                    topic,
                    pkid,
                    payload,
                    ..
                })) => {
                    if topic.ends_with("/status") {
                        offline |=
                            wire::decode_status(&payload).unwrap().state == Presence::Offline;
                    }
                    puback(&mut s, pkid).await;
                }
                Ok(Ok(Pkt::PingReq)) => s.write_all(&[0xD0, 0x00]).await.unwrap(),
                Ok(Ok(Pkt::Disconnect)) => return (offline, true),
                _ => return (offline, false),
            }
        }
    });
    stop.send(()).unwrap();
    tokio::time::timeout(LIMIT, handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        serve.await.unwrap(),
        (true, true),
        "offline then DISCONNECT"
    );
}
