"""The official Python client (pip `realtime`), unmodified, against the sidecar.

usage: client.py WS_BASE_URL TOKEN TOPIC TABLE

Joins TOPIC with broadcast self + ack, presence and a postgres_changes INSERT binding on
public.TABLE; once subscribed and "Subscribed to PostgreSQL" arrived it sends a broadcast, tracks
a presence and prints {"ready": true}.
Then it prints one JSON line per event received ({"kind": ..., "message": ...}) until it has
seen a broadcast from SQL, its own broadcast, a presence sync with its key and an INSERT, or
10 seconds passed. The caller (tests/python.test.mjs) drives the database and asserts.
"""
import asyncio
import json
import sys

from realtime import AsyncRealtimeClient


def emit(**line):
    print(json.dumps(line, default=str), flush=True)


async def main(url, token, topic, table):
    client = AsyncRealtimeClient(url, token, auto_reconnect=False)
    await client.connect()
    seen = set()
    done = asyncio.Event()

    def record(kind, message):
        emit(kind=kind, message=message)
        seen.add(kind if kind != "broadcast" else f"broadcast:{message['payload'].get('from')}")
        if {"broadcast:py", "broadcast:sql", "sync", "change"} <= seen:
            done.set()

    channel = client.channel(topic, {"config": {"broadcast": {"self": True, "ack": True}, "presence": {"key": "py"}}})
    channel.on_broadcast("hello", lambda m: record("broadcast", m))
    channel.on_postgres_changes("INSERT", schema="public", table=table, callback=lambda m: record("change", m))
    channel.on_presence_sync(lambda: record("sync", channel.presence_state()) if channel.presence_state() else None)
    live = asyncio.Event()
    channel.on_system(lambda m: live.set() if "Subscribed to PostgreSQL" in str(m) else emit(system=str(m)))
    subscribed = asyncio.Event()
    await channel.subscribe(lambda state, error: subscribed.set() if str(state).endswith("SUBSCRIBED") else emit(state=str(state), error=str(error)))
    await asyncio.wait_for(subscribed.wait(), 10)
    await asyncio.wait_for(live.wait(), 10)
    await channel.send_broadcast("hello", {"from": "py"})
    await channel.track({"name": "py"})
    emit(ready=True)
    try:
        await asyncio.wait_for(done.wait(), 10)
    except asyncio.TimeoutError:
        emit(timeout=sorted(seen))
    await client.close()


asyncio.run(main(*sys.argv[1:5]))
