"""ringcast's WebSocket routes as the Python `websockets` library sees them (issue 16).

Run by tests/gateway_ws_clients.rs against the real binary:

    python3 python_websockets.py --port PORT --part echo   # ringcast --ws-echo, short ping timers
    python3 python_websockets.py --port PORT --part room   # ringcast --history 8
    python3 python_websockets.py --port PORT --part drain  # prints RINGCAST-SIGTERM, reads a line
    python3 python_websockets.py --port PORT --part wss --tls-port TLS --ca CERT.pem  # --ws-echo
    python3 python_websockets.py --port PORT --part slow   # ringcast --history 16

Prints `ok NAME` for each check that passed, in order, and exits 1 at the first that fails
(the Rust test compares the list, so a check that is skipped fails the test too). Every
wait is bounded by WAIT seconds.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import sys
import time

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

WAIT = 5.0
# The room part's server: --subscribe-key hs256:SUBSCRIBE_SECRET --private-rooms 'private-*'.
SUBSCRIBE_SECRET = b"interop-secret"


def ok(name):
    print(f"ok {name}", flush=True)


def check(condition, what):
    if not condition:
        raise AssertionError(what)


class Gateway:
    def __init__(self, port):
        self.port = port
        self.base = f"ws://127.0.0.1:{port}"

    def open(self, path, **kwargs):
        # proxy=None: never go through a proxy from the environment; loopback only.
        kwargs.setdefault("open_timeout", WAIT)
        kwargs.setdefault("close_timeout", WAIT)
        return connect(self.base + path, proxy=None, **kwargs)

    def publish(self, room, data):
        """POST /rooms/{room}/messages; the new message's id."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        conn.request("POST", f"/rooms/{room}/messages", body=data.encode())
        response = conn.getresponse()
        body = response.read()
        conn.close()
        check(response.status == 201, f"publish to {room}: {response.status} {body!r}")
        return json.loads(body)["id"]


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), WAIT)


async def recv_json(ws):
    text = await recv(ws)
    check(isinstance(text, str), f"a text message, got {text!r}")
    return text, json.loads(text, object_pairs_hook=list)


async def next_message(ws, room):
    """The next room message: exactly room, id, data (in that order); (id, data)."""
    text, pairs = await recv_json(ws)
    keys = [key for key, _ in pairs]
    check(keys == ["room", "id", "data"], f"exactly room, id, data: {text}")
    fields = dict(pairs)
    check(fields["room"] == room, f"room {room}: {text}")
    check(isinstance(fields["id"], str), f"id is ringcast's string id: {text}")
    return fields["id"], fields["data"]


async def next_control(ws):
    text, pairs = await recv_json(ws)
    fields = dict(pairs)
    check("type" in fields, f"a control object: {text}")
    return fields


def hs256(rooms):
    """A subscribe token for `rooms` (HS256 JWT, ten minutes)."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"exp": int(time.time()) + 600, "rooms": rooms}).encode())
    signature = hmac.new(SUBSCRIBE_SECRET, header + b"." + claims, hashlib.sha256).digest()
    return (header + b"." + claims + b"." + b64(signature)).decode()


def seq(event_id):
    return int(event_id.split("-")[1])


async def echo_part(gateway):
    # The handshake as this library does it: it checks Sec-WebSocket-Accept itself, offers
    # permessage-deflate (refused: nothing negotiated) and a subprotocol (none chosen).
    async with gateway.open(
        "/ws/echo", subprotocols=["chat"], max_size=2 << 20
    ) as ws:
        check(ws.response.status_code == 101, f"101, got {ws.response.status_code}")
        check(
            "Sec-WebSocket-Extensions" not in ws.response.headers,
            f"no extension negotiated: {ws.response.headers}",
        )
        check(ws.subprotocol is None, f"no subprotocol: {ws.subprotocol}")
        ok("handshake")

        for text in ["hello", "", "héllo wörld ✓", "x" * 70_000]:
            await ws.send(text)
            check(await recv(ws) == text, f"text of {len(text)} chars came back")
        payload = bytes(range(256)) * 4096  # 1 MiB
        await ws.send(payload)
        check(await recv(ws) == payload, "1 MiB binary came back")
        ok("messages")

        # An iterable is sent as one fragmented message (a frame per item).
        await ws.send(["frag", "men", "ted ✓"])
        check(await recv(ws) == "fragmented ✓", "fragmented text came back whole")
        await ws.send([b"\x00\x01", b"", b"\x02"])
        check(await recv(ws) == b"\x00\x01\x02", "fragmented binary came back whole")
        ok("fragmented")

        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, WAIT)
        ok("ping")

        # The server pings a quiet connection (--ws-ping-interval) and closes it with 1001 if
        # no pong comes (--ws-pong-timeout): the library's automatic pongs keep it open.
        await asyncio.sleep(2.0)
        await ws.send("still here")
        check(await recv(ws) == "still here", "alive after quiet spells")
        ok("keepalive")

        await ws.close(1000, "bye")
        check(ws.close_code == 1000, f"the server answered 1000, got {ws.close_code}")
        check(ws.protocol.close_rcvd_then_sent is False, "we closed first")
        await asyncio.wait_for(ws.wait_closed(), WAIT)
        ok("close_1000")

    # Text that is not UTF-8 (text=True sends bytes as a text frame): closed with 1007.
    async with gateway.open("/ws/echo") as ws:
        await ws.send(b"a\xffb", text=True)
        try:
            got = await recv(ws)
            raise AssertionError(f"expected a close, got {got!r}")
        except ConnectionClosedError as closed:
            check(closed.rcvd is not None, f"a close frame came: {closed}")
            check(closed.rcvd.code == 1007, f"1007, got {closed.rcvd}")
        ok("close_1007")

    # A route that is not there: refused as HTTP, which the library reports as a status.
    try:
        async with gateway.open("/ws/nowhere"):
            raise AssertionError("/ws/nowhere was upgraded")
    except InvalidStatus as refused:
        check(refused.response.status_code == 404, f"404, got {refused.response.status_code}")
    ok("refused_404")


async def room_part(gateway):
    room = "py-room"
    async with gateway.open(f"/rooms/{room}/ws") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        ok("join")

        posted = [gateway.publish(room, f"m{n} ✓ \"q\"") for n in range(3)]
        for n, event_id in enumerate(posted):
            check(await next_message(ws, room) == (event_id, f"m{n} ✓ \"q\""), f"message {n}")
        ok("delivery")

        await ws.send(json.dumps({"type": "publish", "room": room, "data": "over ws", "ref": 7}))
        ack, message = None, None
        for _ in range(2):
            text, pairs = await recv_json(ws)
            if pairs and pairs[0][0] == "type":
                ack = dict(pairs)
            else:
                message = dict(pairs)
        check(ack is not None and message is not None, "an ack and the message")
        check(ack == {"type": "ack", "ref": 7, "room": room, "id": message["id"]}, f"{ack}")
        check(list(message) == ["room", "id", "data"], f"exactly room, id, data: {message}")
        check(message["data"] == "over ws", f"{message}")
        ok("publish_ack")

        for reference in ["a", "b"]:
            await ws.send(json.dumps({
                "type": "publish", "room": room, "data": "once",
                "ref": reference, "idempotency_key": "py-k1",
            }))
        acks, messages = [], []
        while len(acks) < 2 or not messages:
            text, pairs = await recv_json(ws)
            (acks if pairs[0][0] == "type" else messages).append(dict(pairs))
        acks.sort(key=lambda ack: ack["ref"])
        check([a["ref"] for a in acks] == ["a", "b"], f"both acked: {acks}")
        check(acks[0]["id"] == acks[1]["id"] == messages[0]["id"], f"{acks} {messages}")
        marker = gateway.publish(room, "marker")
        last, data = await next_message(ws, room)
        check((last, data) == (marker, "marker"), f"one delivery of the key, then {data}")
        ok("idempotency")

        await ws.close(1000)
        check(ws.close_code == 1000, f"close 1000 answered, got {ws.close_code}")
        ok("close_1000")

    missed = [gateway.publish(room, f"missed {n}") for n in range(2)]
    async with gateway.open(f"/rooms/{room}/ws?last_event_id={last}") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        for n, event_id in enumerate(missed):
            check(await next_message(ws, room) == (event_id, f"missed {n}"), f"replay {n}")
        live = gateway.publish(room, "live")
        check(await next_message(ws, room) == (live, "live"), "then live")
        last = live
        ok("resume")

    # 12 published while away, 8 held (--history 8): a gap for the first 4, then the 8.
    missed = [gateway.publish(room, f"away {n}") for n in range(12)]
    async with gateway.open(f"/rooms/{room}/ws?last_event_id={last}") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        gap = await next_control(ws)
        check(gap == {"type": "gap", "room": room, "from": missed[0], "to": missed[3]}, f"{gap}")
        for n in range(4, 12):
            check(await next_message(ws, room) == (missed[n], f"away {n}"), f"held {n}")
        check(seq(missed[11]) - seq(last) == 12, "ids are consecutive")
        ok("gap")

    # A private room: refused as HTTP without a token or with another room's; a token in
    # the query (what a browser can send) is accepted.
    private = "private-py"
    for query, status in [("", 401), (f"?token={hs256(['private-other'])}", 403)]:
        try:
            async with gateway.open(f"/rooms/{private}/ws{query}"):
                raise AssertionError(f"upgraded without a valid token ({query})")
        except InvalidStatus as refused:
            got = refused.response.status_code
            check(got == status, f"{status}, got {got}")
    ok("refused_401_403")
    async with gateway.open(f"/rooms/{private}/ws?token={hs256([private])}") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": private}, "subscribed")
        event_id = gateway.publish(private, "members only")
        check(await next_message(ws, private) == (event_id, "members only"), "delivered")
    ok("token_in_query")

    # A message over a room connection's limit (64 KiB): closed with 1009.
    async with gateway.open(f"/rooms/{room}/ws") as ws:
        check((await next_control(ws))["type"] == "subscribed", "subscribed")
        await ws.send("x" * 100_000)
        try:
            while True:
                text, pairs = await recv_json(ws)
                check(pairs[0][0] != "type", f"only messages before the close: {text}")
        except ConnectionClosedError as closed:
            check(closed.rcvd is not None and closed.rcvd.code == 1009, f"1009: {closed!r}")
    ok("close_1009")

    # Multiplexed: two rooms in the query, a third by message, one left.
    rooms = ["py-mux-a", "py-mux-b", "py-mux-c"]
    async with gateway.open(f"/ws?rooms={rooms[0]},{rooms[1]}") as ws:
        joined = sorted([(await next_control(ws))["room"] for _ in range(2)])
        check(joined == rooms[:2], f"both joined: {joined}")
        await ws.send(json.dumps({"type": "subscribe", "room": rooms[2]}))
        check(await next_control(ws) == {"type": "subscribed", "room": rooms[2]}, "subscribed")
        for room in reversed(rooms):
            event_id = gateway.publish(room, f"to {room}")
            check(await next_message(ws, room) == (event_id, f"to {room}"), f"from {room}")
        await ws.send(json.dumps({"type": "unsubscribe", "room": rooms[0]}))
        check(await next_control(ws) == {"type": "unsubscribed", "room": rooms[0]}, "left")
        gateway.publish(rooms[0], "not any more")
        event_id = gateway.publish(rooms[1], "still")
        check(await next_message(ws, rooms[1]) == (event_id, "still"), "nothing of the left room")
    ok("multiplexed")


async def drain_part(gateway):
    room = "py-drain"
    async with gateway.open(f"/rooms/{room}/ws") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        posted = [gateway.publish(room, f"before {n}") for n in range(3)]
        # The drain is asked for; the test answers once SIGTERM is sent.
        print("RINGCAST-SIGTERM", flush=True)
        answer = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline), WAIT
        )
        check(answer.strip() == "signalled", f"the test's answer: {answer!r}")
        # Everything published before the signal, then the close (1001): the library
        # reports it as a clean close and answers it.
        for n, event_id in enumerate(posted):
            check(await next_message(ws, room) == (event_id, f"before {n}"), f"message {n}")
        try:
            got = await recv(ws)
            raise AssertionError(f"expected the close, got {got!r}")
        except ConnectionClosed as closed:
            check(closed.rcvd is not None and closed.rcvd.code == 1001, f"1001: {closed!r}")
            print(f"close reason: {closed.rcvd.reason!r}", file=sys.stderr)
        check(ws.close_code == 1001, f"close code {ws.close_code}")
        ok("close_1001")


async def slow_part(gateway):
    # A viewer that stops reading: the library holds one message (max_queue=1) and stops
    # reading the socket, whose receive buffer is 4 KiB. The history (16) laps it while
    # 200 messages of 32 KiB are published.
    room = "py-slow"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    async with connect(f"ws://127.0.0.1:{gateway.port}/rooms/{room}/ws", sock=sock,
                       max_queue=1, proxy=None, open_timeout=WAIT, ping_interval=None) as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        data = "s" * (32 * 1024)
        # Published from a thread: the library's loop must not run (and read) meanwhile.
        posted = await asyncio.to_thread(lambda: [gateway.publish(room, data) for _ in range(200)])
        # Reading again: what was written before the cut, in order from the first, then
        # `lagged` and close 1013 if the server's last writes could still go, else the
        # end of the connection; never all 200, and never a hang.
        seen, lagged = [], None
        try:
            while True:
                text, pairs = await recv_json(ws)
                fields = dict(pairs)
                if fields.get("type") == "lagged":
                    lagged = fields
                else:
                    check("type" not in fields, f"only messages and lagged: {text[:80]}")
                    check(lagged is None, "nothing after lagged")
                    seen.append(fields["id"])
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            print(f"cut after {len(seen)} messages: {closed!r}", file=sys.stderr)
            check(code in (1013, None), f"1013 or the end of the connection: {closed!r}")
            check(code is None or lagged is not None, "lagged before 1013")
        check(len(seen) < 200, "the viewer was cut")
        check(seen == posted[: len(seen)], "what came before the cut came in order")
    ok("slow_reader_cut")
    # The server goes on: a new viewer gets a new message.
    async with gateway.open(f"/rooms/{room}/ws") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        event_id = gateway.publish(room, "after the cut")
        check(await next_message(ws, room) == (event_id, "after the cut"), "served")
    ok("server_healthy")


async def wss_part(gateway, tls_port, ca):
    # The library's own TLS (Python's ssl): the test certificate for localhost, verified.
    context = ssl.create_default_context(cafile=ca)
    base = f"wss://127.0.0.1:{tls_port}"

    def open_tls(path, **kwargs):
        return connect(base + path, ssl=context, server_hostname="localhost", proxy=None,
                       open_timeout=WAIT, close_timeout=WAIT, **kwargs)

    async with open_tls("/ws/echo", max_size=2 << 20) as ws:
        check(ws.response.status_code == 101, f"101, got {ws.response.status_code}")
        payload = bytes(range(256)) * 4096  # 1 MiB: many TLS records each way
        await ws.send(payload)
        check(await recv(ws) == payload, "1 MiB binary came back over TLS")
        await ws.send(["over ", "TLS ✓"])
        check(await recv(ws) == "over TLS ✓", "fragmented text came back")
        await asyncio.wait_for(await ws.ping(b"tls"), WAIT)
        await ws.close(1000)
        check(ws.close_code == 1000, f"close 1000 answered, got {ws.close_code}")
    ok("echo_over_tls")

    room = "py-tls"
    async with open_tls(f"/rooms/{room}/ws") as ws:
        check(await next_control(ws) == {"type": "subscribed", "room": room}, "subscribed")
        event_id = gateway.publish(room, "to a TLS viewer")
        check(await next_message(ws, room) == (event_id, "to a TLS viewer"), "delivered")
        await ws.send(json.dumps({"type": "publish", "room": room, "data": "from TLS", "ref": 1}))
        answers = [dict((await recv_json(ws))[1]) for _ in range(2)]
        ack = next(a for a in answers if a.get("type") == "ack")
        check(ack["ref"] == 1 and ack["room"] == room, f"{ack}")
        check(any(a.get("id") == ack["id"] and "type" not in a for a in answers), f"{answers}")
    ok("room_over_tls")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--part", choices=["echo", "room", "drain", "wss", "slow"], required=True)
    parser.add_argument("--tls-port", type=int)
    parser.add_argument("--ca")
    args = parser.parse_args()
    print(f"websockets {websockets.version.version}", file=sys.stderr)
    gateway = Gateway(args.port)
    if args.part == "wss":
        asyncio.run(wss_part(gateway, args.tls_port, args.ca))
        return
    part = {"echo": echo_part, "room": room_part, "drain": drain_part, "slow": slow_part}[args.part]
    asyncio.run(part(gateway))


if __name__ == "__main__":
    main()
