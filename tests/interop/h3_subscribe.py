#!/usr/bin/env python3
"""HTTP/3 SSE subscriber built on aioquic (an HTTP/3 stack not written in this project).

Subscribes to https://HOST:PORT/rooms/{room}/events, prints every received SSE event as
one JSON line on stdout ({"id": ..., "event": ..., "data": ...}; "id" and "event" are
null when absent), and exits 0 after N events. Exit 1 on timeout (fewer than N events),
2 on a connection or HTTP error (message on stderr).

    python3 tests/interop/h3_subscribe.py --url URL --events N --timeout SECS \
        [--last-event-id ID] [--insecure | --ca FILE]
"""

import argparse
import asyncio
import json
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent


class SseParser:
    """Incremental SSE parser (WHATWG event-stream rules, enough for ringcast)."""

    def __init__(self):
        self.buffer = b""
        self.data = []
        self.event = None
        self.id = None

    def feed(self, chunk):
        """Returns the events completed by `chunk`."""
        self.buffer += chunk
        events = []
        while True:
            cut = self.buffer.find(b"\n")
            if cut < 0:
                return events
            line = self.buffer[:cut].rstrip(b"\r").decode("utf-8", "replace")
            self.buffer = self.buffer[cut + 1 :]
            if line == "":
                if self.data or self.event is not None:
                    events.append(
                        {"id": self.id, "event": self.event, "data": "\n".join(self.data)}
                    )
                self.data, self.event = [], None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self.data.append(value)
            elif name == "event":
                self.event = value
            elif name == "id":
                self.id = value


class Subscriber(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.stream_id = None
        self.parser = SseParser()
        self.wanted = 0
        self.received = 0
        self.done = asyncio.get_event_loop().create_future()

    def subscribe(self, url, wanted, last_event_id):
        parsed = urlparse(url)
        path = parsed.path or "/"
        if parsed.query:
            path += "?" + parsed.query
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", parsed.netloc.encode()),
            (b":path", path.encode()),
            (b"accept", b"text/event-stream"),
            (b"user-agent", b"ringcast-interop-aioquic"),
        ]
        if last_event_id is not None:
            headers.append((b"last-event-id", last_event_id.encode()))
        self.wanted = wanted
        self.stream_id = self._quic.get_next_available_stream_id()
        self.http.send_headers(self.stream_id, headers, end_stream=True)
        self.transmit()

    def finish(self, result):
        if not self.done.done():
            self.done.set_result(result)

    def quic_event_received(self, event: QuicEvent):
        if isinstance(event, ConnectionTerminated):
            self.finish(("error", f"connection closed: {event.reason_phrase or event.error_code}"))
            return
        for h3_event in self.http.handle_event(event):
            if getattr(h3_event, "stream_id", None) != self.stream_id:
                continue
            if isinstance(h3_event, HeadersReceived):
                status = dict(h3_event.headers).get(b":status", b"?").decode()
                if not status.startswith("2"):
                    self.finish(("error", f"subscribe answered HTTP {status}"))
                    return
            elif isinstance(h3_event, DataReceived):
                for sse in self.parser.feed(h3_event.data):
                    print(json.dumps(sse), flush=True)
                    self.received += 1
                    if self.received >= self.wanted:
                        self.finish(("ok", None))
                        return
                if h3_event.stream_ended:
                    self.finish(("error", "server ended the event stream"))


async def run(args):
    url = urlparse(args.url)
    if url.scheme != "https" or not url.hostname:
        print(f"h3_subscribe: --url must be https://HOST:PORT/...: {args.url}", file=sys.stderr)
        return 2
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    if args.insecure:
        configuration.verify_mode = ssl.CERT_NONE
    elif args.ca:
        configuration.load_verify_locations(args.ca)
    try:
        async with connect(
            url.hostname,
            url.port or 443,
            configuration=configuration,
            create_protocol=Subscriber,
            wait_connected=True,
        ) as client:
            client.subscribe(args.url, args.events, args.last_event_id)
            try:
                outcome, message = await asyncio.wait_for(client.done, args.timeout)
            except asyncio.TimeoutError:
                print(
                    f"h3_subscribe: timeout after {args.timeout}s with "
                    f"{client.received}/{args.events} events",
                    file=sys.stderr,
                )
                return 1
            if outcome != "ok":
                print(f"h3_subscribe: {message}", file=sys.stderr)
                return 2
            return 0
    except (ConnectionError, OSError, ssl.SSLError) as error:
        print(f"h3_subscribe: cannot connect: {error}", file=sys.stderr)
        return 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="https://HOST:PORT/rooms/ROOM/events")
    parser.add_argument("--events", type=int, required=True, help="exit after N events")
    parser.add_argument("--timeout", type=float, required=True, help="give up after SECS")
    parser.add_argument("--last-event-id", help="resume after this event id")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    group.add_argument("--ca", help="PEM file of the certificate(s) to trust")
    args = parser.parse_args()
    try:
        code = asyncio.run(asyncio.wait_for(run(args), args.timeout + 5))
    except asyncio.TimeoutError:
        print(f"h3_subscribe: timeout connecting within {args.timeout}s", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
