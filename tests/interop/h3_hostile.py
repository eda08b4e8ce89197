#!/usr/bin/env python3
"""Hostile HTTP/3 client built on aioquic (not the project's code): one attack per run
against ringcast's QUIC listener.

Prints one JSON line on stdout describing what the server did, e.g.
  {"attack": ..., "statuses": [ints], "reset": bool, "closed": bool, ...}

    python3 tests/interop/h3_hostile.py --addr HOST:PORT --attack NAME [--seconds S]

Attacks:
  slow-body       POST with content-length 10, one byte of body, then nothing
  declared-over   POST declaring content-length 10**12, no body
  body-over       POST without content-length, 4 KiB DATA frames until answered
  no-headers      a request stream with half a HEADERS frame, then nothing
  idle            a connection that sends no request at all
  header-size     one request with a 64 KiB header
  qpack-bomb      encoder-stream instructions growing a dynamic table the server did
                  not offer, then inserts referenced without end
  release-close   subscribe, print {"subscribed": true}, wait for a line on stdin, close
                  the connection (CONNECTION_CLOSE), print the outcome
  release-stop    subscribe, STOP_SENDING on it, wait --pause s, subscribe again on the
                  same connection: the second status
  amplification   --count Initial packets from as many sockets, never answered: bytes
                  received vs sent until the time limit, and how many were Retry packets
"""

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived, StreamReset


# The attacked request stream, for the report.
STREAM = [None]


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.statuses = {}
        self.resets = set()
        self.ended = set()
        self.closed = None
        self.changed = asyncio.Event()

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = event.error_code
        elif isinstance(event, StreamReset):
            self.resets.add(event.stream_id)
        elif isinstance(event, StreamDataReceived) and event.end_stream:
            self.ended.add(event.stream_id)
        for h3_event in self.http.handle_event(event) if self.closed is None else []:
            if isinstance(h3_event, HeadersReceived):
                status = dict(h3_event.headers).get(b":status", b"0")
                self.statuses[h3_event.stream_id] = int(status)
            elif isinstance(h3_event, DataReceived):
                pass
        self.changed.set()

    async def until(self, condition, seconds):
        end = time.monotonic() + seconds
        while not condition() and self.closed is None:
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                return condition()
        return condition()

    def request(self, authority, method, path, extra=(), end_stream=True):
        stream = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ] + [(k.encode(), v.encode()) for k, v in extra]
        self.http.send_headers(stream, headers, end_stream=end_stream)
        self.transmit()
        return stream


def report(attack, client, start, **extra):
    out = {
        "attack": attack,
        "statuses": sorted(client.statuses.values()) if client else [],
        "reset": bool(client and client.resets),
        "ended": bool(client and client.ended),
        "stream_closed": bool(client and (client.ended | client.resets) & {STREAM[0]}),
        "closed": client is not None and client.closed is not None,
        "close_code": client.closed if client else None,
        "seconds": round(time.monotonic() - start, 3),
    }
    out.update(extra)
    print(json.dumps(out), flush=True)


async def attack_connection(args):
    host, port = args.addr.rsplit(":", 1)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.verify_mode = ssl.CERT_NONE
    start = time.monotonic()
    async with connect(
        host, int(port), configuration=configuration, create_protocol=Client, wait_connected=True
    ) as c:
        auth = args.addr
        if args.attack == "slow-body":
            s = c.request(auth, "POST", "/rooms/slow/messages", [("content-length", "10")], False)
            c.http.send_data(s, b"x", end_stream=False)
            c.transmit()
            await c.until(lambda: s in c.statuses, args.seconds)
        elif args.attack == "declared-over":
            s = c.request(auth, "POST", "/rooms/big/messages", [("content-length", str(10**12))], False)
            await c.until(lambda: s in c.statuses, args.seconds)
        elif args.attack == "body-over":
            s = c.request(auth, "POST", "/rooms/big/messages", end_stream=False)
            sent = 0
            end = time.monotonic() + args.seconds
            while s not in c.statuses and c.closed is None and time.monotonic() < end:
                try:
                    c.http.send_data(s, b"y" * 4096, end_stream=False)
                except Exception:  # the server stopped the stream (STOP_SENDING)
                    break
                c.transmit()
                sent += 4096
                await c.until(lambda: s in c.statuses, 0.002)
            await c.until(lambda: s in c.statuses, max(0.0, end - time.monotonic()))
            report(args.attack, c, start, body_bytes_sent=sent)
            return 0
        elif args.attack == "no-headers":
            s = c._quic.get_next_available_stream_id()
            # HEADERS frame (type 1) announcing 100 bytes, of which 10 are sent.
            STREAM[0] = s
            c._quic.send_stream_data(s, encode_uint_var(1) + encode_uint_var(100) + b"\0" * 10)
            c.transmit()
            await c.until(lambda: s in c.resets or s in c.ended, args.seconds)
        elif args.attack == "idle":
            await c.until(lambda: False, args.seconds)
        elif args.attack == "header-size":
            s = c.request(auth, "GET", "/healthz", [(f"x-big-{n}", "h" * 1024) for n in range(64)])
            await c.until(lambda: s in c.statuses or s in c.resets or s in c.ended, args.seconds)
        elif args.attack == "qpack-bomb":
            encoder = c.http._local_encoder_stream_id
            # Set Dynamic Table Capacity (001xxxxx, 5-bit prefix) to 1 MiB, then inserts
            # with a literal name (01xxxxxx) of 4 KiB values, referenced by requests.
            capacity = 1 << 20
            instruction = bytes([0x3F]) + prefix_int_rest(capacity - 31)
            insert = bytes([0x40 | 5]) + b"x-bom" + bytes([0x7F]) + prefix_int_rest(4096 - 127) + b"b" * 4096
            c._quic.send_stream_data(encoder, instruction + insert * 64)
            c.transmit()
            # A request referencing 4,000 dynamic entries (Required Insert Count 1,
            # indexed field lines 0x80): 16 MiB if the server had kept the inserts.
            s = c._quic.get_next_available_stream_id()
            block = b"\x02\x00" + b"\x80" * 4000
            c._quic.send_stream_data(s, encode_uint_var(1) + encode_uint_var(len(block)) + block, end_stream=True)
            c.transmit()
            await c.until(lambda: s in c.statuses or s in c.resets, args.seconds)
        elif args.attack == "release-close":
            s = c.request(auth, "GET", "/rooms/gone/events")
            await c.until(lambda: s in c.statuses, args.seconds)
            print(json.dumps({"subscribed": c.statuses.get(s)}), flush=True)
            await asyncio.get_event_loop().run_in_executor(None, sys.stdin.readline)
            c.close()
            await c.wait_closed()
            report(args.attack, c, start)
            return 0
        elif args.attack == "release-stop":
            first = c.request(auth, "GET", "/rooms/stop/events")
            await c.until(lambda: first in c.statuses, args.seconds)
            c._quic.stop_stream(first, 0x10C)  # H3_REQUEST_CANCELLED
            c.transmit()
            await asyncio.sleep(args.pause)
            second = c.request(auth, "GET", "/rooms/stop/events")
            await c.until(lambda: second in c.statuses, args.seconds)
            report(
                args.attack,
                c,
                start,
                first=c.statuses.get(first),
                second=c.statuses.get(second),
            )
            return 0
        else:
            print(f"unknown attack {args.attack}", file=sys.stderr)
            return 2
        report(args.attack, c, start)
    return 0


def prefix_int_rest(value):
    """The continuation bytes of an HPACK/QPACK prefix integer past a full prefix."""
    out = b""
    while value >= 128:
        out += bytes([value % 128 + 128])
        value //= 128
    return out + bytes([value])


def amplification(args):
    """Sends `count` client Initials, each from its own socket, and never answers."""
    host, port = args.addr.rsplit(":", 1)
    target = (host, int(port))
    sockets, sent = [], 0
    start = time.monotonic()
    for _ in range(args.count):
        configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
        configuration.verify_mode = ssl.CERT_NONE
        quic = QuicConnection(configuration=configuration)
        now = time.monotonic()
        quic.connect(target, now=now)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        for data, _ in quic.datagrams_to_send(now=now):
            sock.sendto(data, target)
            sent += len(data)
        sockets.append(sock)
    received, retries, packets = 0, 0, 0
    end = time.monotonic() + args.seconds  # listening starts once every Initial is out
    while time.monotonic() < end:
        got = False
        for sock in sockets:
            while True:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    break
                got = True
                received += len(data)
                packets += 1
                # Long header (0x80), QUIC v1 packet type in bits 4-5: 3 is Retry.
                if data[0] & 0x80 and (data[0] & 0x30) >> 4 == 3:
                    retries += 1
        if not got:
            time.sleep(0.02)
    print(
        json.dumps(
            {
                "attack": "amplification",
                "count": args.count,
                "sent_bytes": sent,
                "received_bytes": received,
                "packets": packets,
                "retries": retries,
                "ratio": round(received / sent, 3) if sent else None,
                "seconds": round(time.monotonic() - start, 3),
            }
        ),
        flush=True,
    )
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT of the QUIC listener")
    parser.add_argument("--attack", required=True)
    parser.add_argument("--seconds", type=float, default=5.0, help="time limit")
    parser.add_argument("--pause", type=float, default=0.3, help="release-stop: wait")
    parser.add_argument("--count", type=int, default=1000, help="amplification: Initials")
    args = parser.parse_args()
    if args.attack == "amplification":
        sys.exit(amplification(args))
    try:
        code = asyncio.run(asyncio.wait_for(attack_connection(args), args.seconds + 10))
    except asyncio.TimeoutError:
        print(json.dumps({"attack": args.attack, "error": "timeout"}), flush=True)
        code = 1
    except ConnectionError as error:
        print(json.dumps({"attack": args.attack, "error": str(error)}), flush=True)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
