#!/usr/bin/env python3
"""Counts every message a NATS server routes in one account, by what the pipeline uses it for.

    scripts/nats-tap.py HOST:PORT PREFIX SECONDS [OUT]     (SECONDS 0: until SIGTERM or SIGINT)

Subscribes to `>` (which also sees `$JS.API` requests, JetStream's answers to inboxes, consumer
deliveries and the stream's republish) for SECONDS, then prints one line per kind: messages and
bytes (headers + payload). Requests are matched to their answers by reply subject, so an inbox
message is counted as the answer to what asked for it. For profiling only: the tap is one more
subscriber of everything, so it doubles the server's outbound work while it runs; do not measure
CPU at the same time. With OUT, the counts are also written there as JSON.
"""
import json
import signal
import socket
import sys
import time
from collections import defaultdict


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    prefix, seconds = sys.argv[2], float(sys.argv[3])
    out = sys.argv[4] if len(sys.argv) > 4 else None
    sock = socket.create_connection((host, int(port)))
    sock.settimeout(0.5)
    buf = bytearray()

    def read_line():
        nonlocal buf
        while True:
            i = buf.find(b"\r\n")
            if i >= 0:
                line = bytes(buf[:i])
                del buf[: i + 2]
                return line
            buf += sock.recv(1 << 20)

    read_line()  # INFO
    sock.sendall(
        b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
        b'"name":"nats-tap","lang":"python","version":"0"}\r\nSUB > 1\r\nPING\r\n'
    )
    counts = defaultdict(lambda: [0, 0])
    pending = {}  # reply subject -> kind of the request
    inbound = prefix + ".in."
    replies = prefix + ".out."
    live = prefix + ".live."
    cancels = prefix + ".cancel."
    started = None
    deadline = None
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        now = time.monotonic()
        if deadline is not None and seconds > 0 and now >= deadline:
            break
        try:
            line = read_line()
        except (socket.timeout, InterruptedError):
            continue
        if line == b"PING":
            sock.sendall(b"PONG\r\n")
            continue
        if line == b"PONG":
            if started is None:
                started = time.monotonic()
                deadline = started + seconds
            continue
        if not (line.startswith(b"MSG ") or line.startswith(b"HMSG ")):
            continue
        parts = line.split(b" ")
        headers = line.startswith(b"HMSG ")
        total = int(parts[-1])
        reply = None
        if headers:
            # HMSG subject sid [reply] hdr_len total_len
            if len(parts) == 6:
                reply = parts[3].decode()
            hdr_len = int(parts[-2])
        else:
            if len(parts) == 5:
                reply = parts[3].decode()
            hdr_len = 0
        while len(buf) < total + 2:
            buf += sock.recv(1 << 20)
        body = bytes(buf[:total])
        del buf[: total + 2]
        subject = parts[1].decode()
        status = None
        if headers and body.startswith(b"NATS/1.0 "):
            status = body[9:12].decode()
        kind = classify(subject, reply, body, hdr_len, status, pending,
                        inbound, replies, live, cancels)
        counts[kind][0] += 1
        counts[kind][1] += total
    elapsed = time.monotonic() - (started or time.monotonic())
    rows = sorted(counts.items(), key=lambda kv: -kv[1][0])
    for kind, (n, size) in rows:
        print(f"{n:10d} {size:12d}  {kind}")
    print(f"{sum(c[0] for c in counts.values()):10d} {sum(c[1] for c in counts.values()):12d}  all ({elapsed:.1f} s)")
    for bundle, n in sorted(SHAPES.items(), key=lambda kv: -kv[1])[:12]:
        print(f"{n:10d} {0:12d}  bundle of: {bundle}")
    if out:
        with open(out, "w") as f:
            json.dump({k: {"messages": n, "bytes": b} for k, (n, b) in counts.items()}, f)


SHAPES = defaultdict(int)


def shape(headers):
    """Counts a bundle by its frame types (Frame-Types header), runs of one type collapsed."""
    for line in headers.split(b"\r\n"):
        if line.lower().startswith(b"frame-types:"):
            types = line.split(b":", 1)[1].strip().decode().split(",")
            runs = []
            for t in types:
                if runs and runs[-1][0] == t:
                    runs[-1][1] += 1
                else:
                    runs.append([t, 1])
            SHAPES[",".join(t if n == 1 else f"{t}x{n}" for t, n in runs)] += 1
            return


def classify(subject, reply, body, hdr_len, status, pending, inbound, replies, live, cancels):
    def ask(kind):
        if reply:
            pending[reply] = kind
            if len(pending) > 200_000:
                pending.clear()
        return kind

    if subject.startswith(inbound) and reply and reply.startswith("$JS.ACK."):
        return "  delivery to worker (pull consumer)"
    if subject.startswith(inbound):
        return ask("edge: inbound publish (" + ("fenced" if b"Nats-Expected" in body[:hdr_len] else "JetStream") + ")")
    if subject.startswith(replies):
        shape(body[:hdr_len])
        fenced = b"Nats-Expected-Last-Subject-Sequence" in body[:hdr_len]
        return ask("worker: bundle publish" + (" (fenced)" if fenced else ""))
    if subject.startswith(live):
        return "stream: republish to live subject (-> edge)"
    if subject.startswith(cancels):
        return "cancel announcement"
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return ask("worker: pull request")
    if subject.startswith("$JS.API.STREAM.MSG.GET."):
        request = body[hdr_len:]
        what = "next_by_subj" if b"next_by_subj" in request else "last_by_subj" if b"last_by_subj" in request else "seq"
        stream = subject.rsplit(".", 1)[-1]
        return ask(f"worker: STREAM.MSG.GET {stream} {what}")
    if subject.startswith("$JS.API.DIRECT.GET."):
        request = body[hdr_len:]
        what = "next_by_subj" if b"next_by_subj" in request else "last_by_subj" if b"last_by_subj" in request else "seq"
        if subject.count(".") > 4 and not request:
            what = "last_by_subj (subject in the API subject)"
        stream = subject.split(".")[4]
        return ask(f"DIRECT.GET {stream} {what}")
    if subject.startswith("$JS.ACK."):
        verb = body[:4].decode(errors="replace")
        return ask(f"worker: ack {verb}" + (" (double ack)" if reply else ""))
    if subject.startswith("$JS.API."):
        return ask("JS API " + ".".join(subject.split(".")[2:4]))
    if subject.startswith("$JS.EVENT."):
        return "JS advisory " + ".".join(subject.split(".")[2:5])
    asked = pending.get(subject)
    if asked is not None:
        if asked == "worker: pull request":
            # One inbox answers a pull request many times: keep it.
            if status:
                return f"  answer to pull request: status {status}"
            return "  delivery to worker (pull consumer)"
        del pending[subject]
        return f"  answer to {asked}" + (f" (status {status})" if status else "")
    if reply and reply.startswith("$JS.ACK."):
        return "  delivery to worker (pull consumer)"
    if status:
        return f"status {status} on {subject.split('.')[0]}"
    return "other: " + ".".join(subject.split(".")[:2])


if __name__ == "__main__":
    main()
