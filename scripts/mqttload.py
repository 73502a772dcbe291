#!/usr/bin/env python3
"""MQTT round-trip load generator, and a raw paho echo responder to compare with.

    # the reference: a plain paho client that echoes each request to its reply topic
    python scripts/mqttload.py echo --port 1883 --prefix bench --device unit1
    # the load: N requests in flight (MQTT 5, ResponseTopic + CorrelationData)
    python scripts/mqttload.py load --port 1883 --prefix bench --device unit1 \
        --body models/digits/1/sample.json --inflight 64 --qos 1 --duration 5

Both set TCP_NODELAY on their broker connection (paho does not), so Nagle's
algorithm does not add ~40 ms per hop. ``load`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def _client(client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    return c


def _nodelay(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo(args) -> None:
    c = _client(f"echo-{uuid.uuid4().hex[:8]}")

    def on_connect(cl, ud, flags, rc, props):
        _nodelay(cl)
        cl.subscribe(f"{args.prefix}/{args.device}/infer/#", qos=args.qos)

    def on_message(cl, ud, msg):
        p = msg.properties
        out = Properties(PacketTypes.PUBLISH)
        if getattr(p, "CorrelationData", None) is not None:
            out.CorrelationData = p.CorrelationData
        cl.publish(p.ResponseTopic, msg.payload, qos=msg.qos, properties=out)

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect(args.host, args.port)
    print("ready", flush=True)
    c.loop_forever()


def load(args) -> None:
    body = Path(args.body).read_bytes()
    cid = f"load-{uuid.uuid4().hex[:8]}"
    reply = f"{args.prefix}/clients/{cid}/replies"
    topic = f"{args.prefix}/{args.device}/infer/{args.model}"
    c = _client(cid)
    subscribed = threading.Event()
    done = threading.Event()
    lock = threading.Lock()
    sent: dict[bytes, int] = {}
    lat: list[int] = []
    state = {"seq": 0, "stop_at": 0.0, "errors": 0, "measure": False}

    def send() -> None:
        with lock:
            state["seq"] += 1
            corr = state["seq"].to_bytes(8, "little")
            sent[corr] = time.perf_counter_ns()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply
        props.CorrelationData = corr
        c.publish(topic, body, qos=args.qos, properties=props)

    def on_connect(cl, ud, flags, rc, props):
        _nodelay(cl)
        cl.subscribe(reply, qos=args.qos)

    def on_subscribe(cl, ud, mid, rcs, props):
        subscribed.set()

    def on_message(cl, ud, msg):
        now = time.perf_counter_ns()
        corr = msg.properties.CorrelationData
        with lock:
            t0 = sent.pop(corr, None)
        if t0 is None:
            return
        if state["measure"]:
            lat.append(now - t0)
            if b'"error"' in msg.payload[:200]:
                state["errors"] += 1
        if time.monotonic() < state["stop_at"]:
            send()
        elif not sent:
            done.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect(args.host, args.port)
    c.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("mqttload: could not subscribe")
    # Warm-up then measure, each a closed loop of `inflight` requests.
    for phase, secs in (("warmup", args.warmup), ("measure", args.duration)):
        done.clear()
        state["measure"] = phase == "measure"
        state["stop_at"] = time.monotonic() + secs
        t0 = time.perf_counter()
        for _ in range(args.inflight):
            send()
        done.wait(secs + 30)
        elapsed = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    lat.sort()
    n = len(lat)

    def pct(p):
        return round(lat[min(n - 1, int(p * n))] / 1e6, 3) if n else 0.0

    print(json.dumps({"qos": args.qos, "inflight": args.inflight, "round_trips": n, "errors": state["errors"],
                      "seconds": round(elapsed, 3), "throughput": round(n / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["echo", "load"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--device", default="unit1")
    ap.add_argument("--model", default="digits")
    ap.add_argument("--qos", type=int, choices=[0, 1], default=1)
    ap.add_argument("--body")
    ap.add_argument("--inflight", type=int, default=64)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    args = ap.parse_args()
    echo(args) if args.mode == "echo" else load(args)


if __name__ == "__main__":
    main()
