// ringcast's WebSocket routes as the Node `ws` library sees them (issue 16).
//
// Run by tests/gateway_ws_clients.rs against the real binary:
//
//     node node_ws.mjs --port PORT --part echo   # ringcast --ws-echo, short ping timers
//     node node_ws.mjs --port PORT --part room   # ringcast --history 8
//     node node_ws.mjs --port PORT --part drain  # prints RINGCAST-SIGTERM, reads a line
//     node node_ws.mjs --port PORT --part wss --tls-port TLS --ca CERT.pem  # --ws-echo
//
// Prints `ok NAME` for each check that passed, in order, and exits 1 at the first that
// fails (the Rust test compares the list, so a skipped check fails the test too). Every
// wait is bounded by WAIT_MS.

import { createHmac } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const WAIT_MS = 5000;
// The room part's server: --subscribe-key hs256:SUBSCRIBE_SECRET --private-rooms 'private-*'.
const SUBSCRIBE_SECRET = 'interop-secret';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    part: { type: 'string' },
    'tls-port': { type: 'string' },
    ca: { type: 'string' },
  },
});
const port = Number(args.port);
const base = `ws://127.0.0.1:${port}`;

function ok(name) {
  console.log(`ok ${name}`);
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

function timeout(what) {
  return new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS).unref(),
  );
}

function within(promise, what) {
  return Promise.race([promise, timeout(what)]);
}

/// A client whose messages, pings and close queue up so a check can wait for the next one.
class Client {
  constructor(path, options = {}, url = base) {
    this.ws = new WebSocket(url + path, { handshakeTimeout: WAIT_MS, ...options });
    this.queue = [];
    this.waiters = [];
    this.pings = 0;
    this.closed = null;
    this.ws.on('message', (data, isBinary) => this.push({ data, isBinary }));
    this.ws.on('ping', () => this.pings++);
    this.ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.push({ close: this.closed });
    });
    this.ws.on('error', (error) => this.push({ error }));
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.queue.push(item);
  }

  next(what = 'message') {
    const item = this.queue.shift();
    if (item) return Promise.resolve(item);
    return within(new Promise((resolve) => this.waiters.push(resolve)), what);
  }

  async open() {
    const opened = once(this.ws, 'open');
    const failed = new Promise((_, reject) =>
      this.ws.once('unexpected-response', (_req, res) =>
        reject(Object.assign(new Error(`refused: ${res.statusCode}`), { status: res.statusCode })),
      ),
    );
    await within(Promise.race([opened, failed]), 'open');
    return this;
  }

  async text() {
    const item = await this.next();
    check(item.data !== undefined && !item.isBinary, `a text message, got ${JSON.stringify(item)}`);
    return item.data.toString('utf8');
  }

  async json() {
    const text = await this.text();
    return { text, value: JSON.parse(text) };
  }

  /// The next room message: exactly room, id, data (in that order); [id, data].
  async message(room) {
    const { text, value } = await this.json();
    check(
      JSON.stringify(Object.keys(value)) === '["room","id","data"]',
      `exactly room, id, data: ${text}`,
    );
    check(value.room === room, `room ${room}: ${text}`);
    check(typeof value.id === 'string', `id is ringcast's string id: ${text}`);
    return [value.id, value.data];
  }

  async control() {
    const { text, value } = await this.json();
    check(typeof value.type === 'string', `a control object: ${text}`);
    return value;
  }

  async closeWith(code, reason) {
    this.ws.close(code, reason);
    for (;;) {
      const item = await this.next('close');
      if (item.close) return item.close;
    }
  }
}

async function publish(room, data) {
  const response = await within(
    fetch(`http://127.0.0.1:${port}/rooms/${room}/messages`, { method: 'POST', body: data }),
    'publish answer',
  );
  const body = await response.text();
  check(response.status === 201, `publish to ${room}: ${response.status} ${body}`);
  return JSON.parse(body).id;
}

function same(a, b, what) {
  check(JSON.stringify(a) === JSON.stringify(b), `${what}: ${JSON.stringify(a)} != ${JSON.stringify(b)}`);
}

const seq = (id) => Number(id.split('-')[1]);

/// A subscribe token for `rooms` (HS256 JWT, ten minutes).
function hs256(rooms) {
  const b64 = (data) => Buffer.from(data).toString('base64url');
  const header = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const claims = b64(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 600, rooms }));
  const signature = createHmac('sha256', SUBSCRIBE_SECRET).update(`${header}.${claims}`).digest('base64url');
  return `${header}.${claims}.${signature}`;
}

async function echoPart() {
  // The handshake as this library does it: it checks Sec-WebSocket-Accept itself, offers
  // permessage-deflate (refused: nothing negotiated) and a subprotocol (none chosen).
  const client = await new Client('/ws/echo', { perMessageDeflate: true }).open();
  const ws = client.ws;
  check(ws.extensions === '', `no extension negotiated: ${ws.extensions}`);
  check(ws.protocol === '', `no subprotocol: ${ws.protocol}`);
  ok('handshake');

  for (const text of ['hello', '', 'héllo wörld ✓', 'x'.repeat(70_000)]) {
    ws.send(text);
    check((await client.text()) === text, `text of ${text.length} chars came back`);
  }
  const payload = Buffer.alloc(1 << 20, 0).map((_, i) => i % 256);
  ws.send(payload);
  const echo = await client.next();
  check(echo.isBinary && Buffer.compare(echo.data, payload) === 0, '1 MiB binary came back');
  ok('messages');

  // A message sent as frames: fin false, then the last one with fin.
  ws.send('frag', { fin: false });
  ws.send('men', { fin: false });
  ws.send('ted ✓', { fin: true });
  check((await client.text()) === 'fragmented ✓', 'fragmented text came back whole');
  ws.send(Buffer.from([0, 1]), { binary: true, fin: false });
  ws.send(Buffer.from([2]), { binary: true, fin: true });
  const binary = await client.next();
  check(binary.isBinary && Buffer.compare(binary.data, Buffer.from([0, 1, 2])) === 0, 'fragmented binary');
  ok('fragmented');

  const pong = once(ws, 'pong');
  ws.ping('are you there');
  const [pongData] = await within(pong, 'pong');
  check(pongData.toString() === 'are you there', `the pong carries the ping's payload: ${pongData}`);
  ok('ping');

  // The server pings a quiet connection (--ws-ping-interval) and closes it with 1001 if no
  // pong comes (--ws-pong-timeout): the library answers by itself and the connection stays.
  const pingsBefore = client.pings;
  await new Promise((resolve) => setTimeout(resolve, 2000));
  check(client.pings > pingsBefore, 'the server pinged the quiet connection');
  ws.send('still here');
  check((await client.text()) === 'still here', 'alive after quiet spells');
  ok('keepalive');

  const close = await client.closeWith(1000, 'bye');
  check(close.code === 1000, `the server answered 1000, got ${JSON.stringify(close)}`);
  ok('close_1000');

  // Text that is not UTF-8 (a Buffer sent with binary: false goes out as a text frame).
  const bad = await new Client('/ws/echo').open();
  bad.ws.send(Buffer.from([0x61, 0xff, 0x62]), { binary: false });
  const badClose = await bad.next('close');
  check(badClose.close && badClose.close.code === 1007, `1007, got ${JSON.stringify(badClose)}`);
  ok('close_1007');

  // A route that is not there: refused as HTTP before any upgrade.
  try {
    await new Client('/ws/nowhere').open();
    throw new Error('/ws/nowhere was upgraded');
  } catch (error) {
    check(error.status === 404, `404, got ${error}`);
  }
  ok('refused_404');
}

async function roomPart() {
  const room = 'node-room';
  let client = await new Client(`/rooms/${room}/ws`).open();
  same(await client.control(), { type: 'subscribed', room }, 'subscribed');
  ok('join');

  const posted = [];
  for (let n = 0; n < 3; n++) posted.push(await publish(room, `m${n} ✓ "q"`));
  for (let n = 0; n < 3; n++) same(await client.message(room), [posted[n], `m${n} ✓ "q"`], `message ${n}`);
  ok('delivery');

  client.ws.send(JSON.stringify({ type: 'publish', room, data: 'over ws', ref: 7 }));
  let ack;
  let message;
  for (let n = 0; n < 2; n++) {
    const { value } = await client.json();
    if (Object.keys(value)[0] === 'type') ack = value;
    else message = value;
  }
  check(ack && message, 'an ack and the message');
  same(ack, { type: 'ack', ref: 7, room, id: message.id }, 'ack');
  same(Object.keys(message), ['room', 'id', 'data'], 'exactly room, id, data');
  check(message.data === 'over ws', JSON.stringify(message));
  ok('publish_ack');

  for (const ref of ['a', 'b']) {
    client.ws.send(JSON.stringify({ type: 'publish', room, data: 'once', ref, idempotency_key: 'node-k1' }));
  }
  const acks = [];
  const messages = [];
  while (acks.length < 2 || messages.length < 1) {
    const { value } = await client.json();
    (Object.keys(value)[0] === 'type' ? acks : messages).push(value);
  }
  same(acks.map((a) => a.ref).sort(), ['a', 'b'], 'both acked');
  check(acks[0].id === acks[1].id && acks[0].id === messages[0].id, JSON.stringify([acks, messages]));
  const marker = await publish(room, 'marker');
  let [last, data] = await client.message(room);
  same([last, data], [marker, 'marker'], 'one delivery of the key, then the marker');
  ok('idempotency');

  const close = await client.closeWith(1000);
  check(close.code === 1000, `close 1000 answered, got ${JSON.stringify(close)}`);
  ok('close_1000');

  const missed = [await publish(room, 'missed 0'), await publish(room, 'missed 1')];
  client = await new Client(`/rooms/${room}/ws?last_event_id=${last}`).open();
  same(await client.control(), { type: 'subscribed', room }, 'subscribed');
  for (let n = 0; n < 2; n++) same(await client.message(room), [missed[n], `missed ${n}`], `replay ${n}`);
  const live = await publish(room, 'live');
  same(await client.message(room), [live, 'live'], 'then live');
  last = live;
  await client.closeWith(1000);
  ok('resume');

  // 12 published while away, 8 held (--history 8): a gap for the first 4, then the 8.
  const away = [];
  for (let n = 0; n < 12; n++) away.push(await publish(room, `away ${n}`));
  client = await new Client(`/rooms/${room}/ws?last_event_id=${last}`).open();
  same(await client.control(), { type: 'subscribed', room }, 'subscribed');
  same(await client.control(), { type: 'gap', room, from: away[0], to: away[3] }, 'gap');
  for (let n = 4; n < 12; n++) same(await client.message(room), [away[n], `away ${n}`], `held ${n}`);
  check(seq(away[11]) - seq(last) === 12, 'ids are consecutive');
  await client.closeWith(1000);
  ok('gap');

  // A private room: refused as HTTP without a token or with another room's; a token in
  // the query (what a browser can send) is accepted.
  const privateRoom = 'private-node';
  for (const [query, status] of [['', 401], [`?token=${hs256(['private-other'])}`, 403]]) {
    try {
      await new Client(`/rooms/${privateRoom}/ws${query}`).open();
      throw new Error(`upgraded without a valid token (${query})`);
    } catch (error) {
      check(error.status === status, `${status}, got ${error}`);
    }
  }
  ok('refused_401_403');
  client = await new Client(`/rooms/${privateRoom}/ws?token=${hs256([privateRoom])}`).open();
  same(await client.control(), { type: 'subscribed', room: privateRoom }, 'subscribed');
  const secret = await publish(privateRoom, 'members only');
  same(await client.message(privateRoom), [secret, 'members only'], 'delivered');
  await client.closeWith(1000);
  ok('token_in_query');

  // A message over a room connection's limit (64 KiB): closed with 1009.
  const big = await new Client(`/rooms/${room}/ws`).open();
  same((await big.control()).type, 'subscribed', 'subscribed');
  big.ws.send('x'.repeat(100_000));
  for (;;) {
    const item = await big.next('close');
    if (item.close) {
      check(item.close.code === 1009, `1009, got ${JSON.stringify(item.close)}`);
      break;
    }
    check(item.data !== undefined, `only messages before the close: ${JSON.stringify(item)}`);
  }
  ok('close_1009');

  // Multiplexed: two rooms in the query, a third by message, one left.
  const rooms = ['node-mux-a', 'node-mux-b', 'node-mux-c'];
  const mux = await new Client(`/ws?rooms=${rooms[0]},${rooms[1]}`).open();
  const joined = [(await mux.control()).room, (await mux.control()).room].sort();
  same(joined, rooms.slice(0, 2), 'both joined');
  mux.ws.send(JSON.stringify({ type: 'subscribe', room: rooms[2] }));
  same(await mux.control(), { type: 'subscribed', room: rooms[2] }, 'subscribed');
  for (const room of [...rooms].reverse()) {
    const id = await publish(room, `to ${room}`);
    same(await mux.message(room), [id, `to ${room}`], `from ${room}`);
  }
  mux.ws.send(JSON.stringify({ type: 'unsubscribe', room: rooms[0] }));
  same(await mux.control(), { type: 'unsubscribed', room: rooms[0] }, 'left');
  await publish(rooms[0], 'not any more');
  const still = await publish(rooms[1], 'still');
  same(await mux.message(rooms[1]), [still, 'still'], 'nothing of the left room');
  await mux.closeWith(1000);
  ok('multiplexed');
}

async function drainPart() {
  const room = 'node-drain';
  const client = await new Client(`/rooms/${room}/ws`).open();
  same(await client.control(), { type: 'subscribed', room }, 'subscribed');
  const posted = [];
  for (let n = 0; n < 3; n++) posted.push(await publish(room, `before ${n}`));
  // The drain is asked for; the test answers once SIGTERM is sent.
  const input = createInterface({ input: process.stdin });
  const answer = within(once(input, 'line'), "the test's answer");
  console.log('RINGCAST-SIGTERM');
  const [line] = await answer;
  input.close();
  check(line.trim() === 'signalled', `the test's answer: ${line}`);
  // Everything published before the signal, then the close (1001), answered by the library.
  for (let n = 0; n < 3; n++) same(await client.message(room), [posted[n], `before ${n}`], `message ${n}`);
  const close = await client.next('close');
  check(close.close && close.close.code === 1001, `1001, got ${JSON.stringify(close)}`);
  console.error(`close reason: ${close.close.reason}`);
  ok('close_1001');
}

async function wssPart() {
  // Node's own TLS: the test certificate for localhost, verified.
  const tls = { ca: readFileSync(args.ca), servername: 'localhost' };
  const url = `wss://127.0.0.1:${args['tls-port']}`;
  const echo = await new Client('/ws/echo', tls, url).open();
  const payload = Buffer.alloc(1 << 20, 0).map((_, i) => i % 256);
  echo.ws.send(payload);
  const back = await echo.next();
  check(back.isBinary && Buffer.compare(back.data, payload) === 0, '1 MiB binary came back over TLS');
  echo.ws.send('over ', { fin: false });
  echo.ws.send('TLS ✓', { fin: true });
  check((await echo.text()) === 'over TLS ✓', 'fragmented text came back');
  const pong = once(echo.ws, 'pong');
  echo.ws.ping('tls');
  await within(pong, 'pong');
  const close = await echo.closeWith(1000);
  check(close.code === 1000, `close 1000 answered, got ${JSON.stringify(close)}`);
  ok('echo_over_tls');

  const room = 'node-tls';
  const client = await new Client(`/rooms/${room}/ws`, tls, url).open();
  same(await client.control(), { type: 'subscribed', room }, 'subscribed');
  const id = await publish(room, 'to a TLS viewer');
  same(await client.message(room), [id, 'to a TLS viewer'], 'delivered');
  client.ws.send(JSON.stringify({ type: 'publish', room, data: 'from TLS', ref: 1 }));
  const answers = [(await client.json()).value, (await client.json()).value];
  const ack = answers.find((a) => a.type === 'ack');
  check(ack && ack.ref === 1 && ack.room === room, JSON.stringify(answers));
  check(answers.some((a) => a.id === ack.id && a.type === undefined), JSON.stringify(answers));
  await client.closeWith(1000);
  ok('room_over_tls');
}

try {
  const parts = { echo: echoPart, room: roomPart, drain: drainPart, wss: wssPart };
  await parts[args.part]();
  process.exit(0);
} catch (error) {
  console.error(error);
  process.exit(1);
}
