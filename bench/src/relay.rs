//! Baseline: a minimal LISTEN -> WebSocket relay (the pg_eventserv design) that also relays
//! client broadcasts within a room (the "minimal tokio-tungstenite relay" of published figures).
//!
//! Rooms map a joined topic to its members. One tokio-postgres connection LISTENs on a channel;
//! each NOTIFY payload is serialized once into a kind-4 frame (`Bytes`, shared) and queued to every
//! member of the configured topic. A kind-3 push from a member is likewise re-framed once as
//! kind 4 and queued to every other member of its room (`self: false`), in-process only. Each
//! connection task batches whatever is queued into one flush. tokio-tungstenite with a 4 KiB read
//! buffer. The only "protocol" is a canned ok reply to `phx_join` (so that the load generator is
//! identical for both subjects; the member is registered before the reply) and to heartbeats.
use crate::frame::{decode_kind3, encode_kind4};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Topic -> members (connection id -> its outbound queue).
type Rooms = Arc<Mutex<HashMap<String, HashMap<u64, UnboundedSender<Message>>>>>;

pub struct RelayOpts {
    pub listen: SocketAddr,
    pub dsn: String,
    pub channel: String,
    pub topic: String,
    pub event: String,
    pub max_secs: u64,
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
}

pub async fn run(o: RelayOpts) -> Result<(), String> {
    let rooms: Rooms = Arc::new(Mutex::new(HashMap::new()));
    let (client, mut conn) = tokio_postgres::connect(&o.dsn, NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (fatal_tx, mut fatal_rx) = unbounded_channel::<String>();
    {
        let rooms = rooms.clone();
        let (topic, event) = (o.topic.clone(), o.event.clone());
        tokio::spawn(async move {
            let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = msgs.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        // Serialize once, share the bytes.
                        let frame = Message::Binary(Bytes::from(encode_kind4(
                            &topic,
                            &event,
                            b"",
                            n.payload().as_bytes(),
                        )));
                        if let Some(members) = rooms.lock().unwrap().get_mut(&topic) {
                            members.retain(|_, tx| tx.send(frame.clone()).is_ok());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = fatal_tx.send(format!("listen connection: {e}"));
                        return;
                    }
                }
            }
            let _ = fatal_tx.send("listen connection closed".into());
        });
    }
    client
        .batch_execute(&format!("LISTEN \"{}\"", o.channel))
        .await
        .map_err(|e| format!("LISTEN: {e}"))?;
    let listener = TcpListener::bind(o.listen)
        .await
        .map_err(|e| format!("bind {}: {e}", o.listen))?;
    eprintln!(
        "relay: listening on ws://{} (LISTEN {})",
        o.listen, o.channel
    );
    let ids = Arc::new(AtomicU64::new(1));
    let deadline = tokio::time::sleep(Duration::from_secs(o.max_secs));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            a = listener.accept() => {
                let Ok((stream, _)) = a else { continue };
                let (rooms, id) = (rooms.clone(), ids.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(async move { let _ = serve(stream, rooms, id).await; });
            }
            e = fatal_rx.recv() => return Err(e.unwrap_or_default()),
            _ = &mut deadline => { eprintln!("relay: max time reached, exiting"); return Ok(()); }
        }
    }
}

async fn serve(stream: TcpStream, rooms: Rooms, id: u64) -> Result<(), String> {
    stream.set_nodelay(true).ok();
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = unbounded_channel::<Message>();
    let mut joined: Vec<String> = vec![];
    let r: Result<(), String> = async {
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { return Ok(()) };
                    ws.feed(m).await.map_err(|e| e.to_string())?;
                    while let Ok(m) = rx.try_recv() {
                        ws.feed(m).await.map_err(|e| e.to_string())?;
                    }
                    ws.flush().await.map_err(|e| e.to_string())?;
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if let Some((reply, join)) = canned_reply(t.as_str()) {
                            if let Some(topic) = join {
                                rooms.lock().unwrap().entry(topic.clone()).or_default().insert(id, tx.clone());
                                joined.push(topic);
                            }
                            let _ = tx.send(Message::text(reply));
                        }
                    }
                    Some(Ok(Message::Binary(b))) => relay_push(&rooms, id, &joined, &b),
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    .await;
    let mut g = rooms.lock().unwrap();
    for topic in joined {
        if let Some(members) = g.get_mut(&topic) {
            members.remove(&id);
            if members.is_empty() {
                g.remove(&topic);
            }
        }
    }
    r
}

/// Queues a member's kind-3 push, re-framed once as kind 4, to the other members of its room.
fn relay_push(rooms: &Rooms, from: u64, joined: &[String], push: &[u8]) {
    let Some(p) = decode_kind3(push) else { return };
    let Some(topic) = joined.iter().find(|t| t.as_bytes() == p.topic) else {
        return;
    };
    let Ok(event) = std::str::from_utf8(p.event) else {
        return;
    };
    let mut frame = encode_kind4(topic, event, p.meta, p.payload);
    frame[4] = p.encoding; // the header's encoding byte: JSON or binary, as pushed
    let frame = Message::Binary(Bytes::from(frame));
    if let Some(members) = rooms.lock().unwrap().get_mut(topic) {
        members.retain(|&id, tx| id == from || tx.send(frame.clone()).is_ok());
    }
}

/// Reply to `phx_join` (second: the topic to register the member in) and `heartbeat`; nothing
/// else.
fn canned_reply(text: &str) -> Option<(String, Option<String>)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let a = v.as_array()?;
    if a.len() != 5 {
        return None;
    }
    let event = a[3].as_str()?;
    let join = event == "phx_join";
    if !join && event != "heartbeat" {
        return None;
    }
    let response = if join {
        serde_json::json!({"postgres_changes": []})
    } else {
        serde_json::json!({})
    };
    let reply =
        serde_json::json!([a[0], a[1], a[2], "phx_reply", {"status": "ok", "response": response}]);
    let topic = join.then(|| a[2].as_str().map(str::to_owned)).flatten();
    Some((reply.to_string(), topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_replies() {
        let (r, join) =
            canned_reply(r#"["1","1","realtime:bench","phx_join",{"config":{}}]"#).unwrap();
        assert_eq!(join.as_deref(), Some("realtime:bench"));
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!(["1","1","realtime:bench","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}])
        );
        let (r, join) = canned_reply(r#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert!(join.is_none());
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!([null,"7","phoenix","phx_reply",{"status":"ok","response":{}}])
        );
        assert!(canned_reply(r#"[null,"7","phoenix","other",{}]"#).is_none());
        assert!(canned_reply("garbage").is_none());
    }
}
