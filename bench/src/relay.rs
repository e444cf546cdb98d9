//! Baseline: a minimal LISTEN -> WebSocket relay (the pg_eventserv design).
//!
//! One tokio-postgres connection LISTENs on a channel; each NOTIFY payload is serialized once into
//! a kind-4 frame (`Bytes`, shared) and queued to every subscriber; each subscriber task batches
//! whatever is queued into one flush. tokio-tungstenite with a 4 KiB read buffer. The only
//! "protocol" is a canned ok reply to `phx_join` (so that the load generator is identical for
//! both subjects; the subscriber is registered before the reply) and to heartbeats.
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

type Subs = Arc<Mutex<HashMap<u64, UnboundedSender<Message>>>>;

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
    let subs: Subs = Arc::new(Mutex::new(HashMap::new()));
    let (client, mut conn) = tokio_postgres::connect(&o.dsn, NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (fatal_tx, mut fatal_rx) = unbounded_channel::<String>();
    {
        let subs = subs.clone();
        let (topic, event) = (o.topic.clone(), o.event.clone());
        tokio::spawn(async move {
            let mut msgs = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = msgs.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        // Serialize once, share the bytes.
                        let frame = Message::Binary(Bytes::from(crate::frame::encode_kind4(
                            &topic,
                            &event,
                            b"",
                            n.payload().as_bytes(),
                        )));
                        let mut g = subs.lock().unwrap();
                        g.retain(|_, tx| tx.send(frame.clone()).is_ok());
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
                let (subs, id) = (subs.clone(), ids.fetch_add(1, Ordering::Relaxed));
                tokio::spawn(async move { let _ = serve(stream, subs, id).await; });
            }
            e = fatal_rx.recv() => return Err(e.unwrap_or_default()),
            _ = &mut deadline => { eprintln!("relay: max time reached, exiting"); return Ok(()); }
        }
    }
}

async fn serve(stream: TcpStream, subs: Subs, id: u64) -> Result<(), String> {
    stream.set_nodelay(true).ok();
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config()))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = unbounded_channel::<Message>();
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
                        if let Some(reply) = canned_reply(t.as_str()) {
                            if reply.1 {
                                subs.lock().unwrap().insert(id, tx.clone());
                            }
                            let _ = tx.send(Message::text(reply.0));
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    .await;
    subs.lock().unwrap().remove(&id);
    r
}

/// Reply to `phx_join` (second: register the subscriber) and `heartbeat`; nothing else.
fn canned_reply(text: &str) -> Option<(String, bool)> {
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
    Some((reply.to_string(), join))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_replies() {
        let (r, join) =
            canned_reply(r#"["1","1","realtime:bench","phx_join",{"config":{}}]"#).unwrap();
        assert!(join);
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!(["1","1","realtime:bench","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}])
        );
        let (r, join) = canned_reply(r#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
        assert!(!join);
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!([null,"7","phoenix","phx_reply",{"status":"ok","response":{}}])
        );
        assert!(canned_reply(r#"[null,"7","phoenix","other",{}]"#).is_none());
        assert!(canned_reply("garbage").is_none());
    }
}
