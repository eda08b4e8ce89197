// Headless Chromium against ringcast's /demo page. Run by tests/gateway_browser.rs:
//
//   node tests/browser/demo.test.mjs --port P --ws served|refused --artifacts DIR
//
// P is a running ringcast started with `--history 8`; `--ws` says whether it serves
// `GET /rooms/{room}/ws` (the Rust test checks that it does: `refused` is for running this
// script by hand against a server without WebSocket). To restart ringcast, this script prints
// `RINGCAST-RESTART` on stdout and waits for a `restarted` line on stdin (the Rust test
// sends SIGTERM, waits for the exit and starts ringcast again on the same port).
//
// The page watches and sends over one WebSocket, or over SSE + POST when the WebSocket is
// refused; `?transport=sse|ws` forces one. The scenario below runs once per transport
// (`sse`, and `ws` when served), each on its own room and pair of pages, side by side; they
// meet for the one restart. Page A reaches ringcast through a TCP proxy in this script, so
// the test can cut A's connection while the server keeps running (and see the request
// heads A sends when it comes back); page B connects directly and never misses anything.
// Every request and WebSocket frame the pages send is recorded. Checks, in order:
//   0. fallback: with the page's default (WebSocket first), a proxy that refuses the
//      WebSocket upgrade (404) leaves the page on SSE + POST, and a comment goes out as a
//      POST and comes back; straight to ringcast the page uses WebSocket when served;
//   1. a comment sent from either page shows on both, with a latency and a transport; over
//      SSE it went out as a POST; over WebSocket as a publish frame on the page's
//      WebSocket, acknowledged with the id the pages show, and no POST;
//   2. cut A, publish 3 while it is away: A comes back by itself resuming after its last id
//      (`Last-Event-ID` over SSE, `?last_event_id=` over WebSocket), the server replays the
//      3 from history, A shows all of them once and no gap;
//   3. cut A and type a comment while it is away: A shows it waiting; once A is back it goes
//      out (on the new WebSocket, or as a POST) and shows once on B;
//   4. cut A, publish 12 (more than the 8 kept): A shows a gap event naming exactly the
//      ids that fell out of history, then the 8 still held;
//   5. restart ringcast (SIGTERM drains: everything accepted is written, then `retry:` or
//      close 1001): both pages reconnect by themselves with an id of the old process, which
//      the new one cannot place: it sends a reset; the pages must note it, show the new
//      comments (ids "{epoch}-{seq}" of a new epoch), and show no gap (nothing accepted
//      was lost).
// Exits non-zero on the first failed check. Saves DIR/demo.png (and DIR/demo-MODE.png).

import { chromium } from "playwright-core";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";

const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const PORT = Number(arg("--port"));
const WS_SERVED = arg("--ws") === "served";
const ARTIFACTS = arg("--artifacts", "target/browser-artifacts");
const HISTORY = 8; // ringcast's --history in the Rust test
const PATIENCE_MS = 15000;
if (!PORT || !["served", "refused"].includes(arg("--ws"))) {
  throw new Error("usage: demo.test.mjs --port P --ws served|refused [--artifacts DIR]");
}
const MODES = WS_SERVED ? ["sse", "ws"] : ["sse"];

const log = (...a) => console.error("[demo.test]", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  log("ok:", what);
}

// --- a TCP proxy we can cut, hold and listen in on ------------------------------------
// `refuseWebSocket`: answer WebSocket upgrades with 404, as a server or proxy without
// WebSocket does.
function proxy(upstreamPort, { refuseWebSocket = false } = {}) {
  const pairs = new Set();
  const heads = []; // request heads of /events and /ws requests, as sent by the browser
  let gate = null; // while set, new connections wait for it before reaching ringcast
  const server = net.createServer((client) => {
    const pending = [];
    let upstream = null;
    let sniffed = "";
    client.on("data", (chunk) => {
      if (sniffed.length < 4096) {
        sniffed += chunk.toString("latin1");
        const end = sniffed.indexOf("\r\n\r\n");
        if (end > 0 && /^GET [^ ]*\/(events|ws)[ ?]/.test(sniffed)) {
          const head = sniffed.slice(0, end);
          heads.push(head);
          sniffed = "x".repeat(4096); // one head per connection is enough
          if (refuseWebSocket && /^upgrade: *websocket/im.test(head)) {
            client.end("HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot found\n");
            if (upstream) upstream.destroy();
            return;
          }
        }
      }
      if (upstream) upstream.write(chunk); else pending.push(chunk);
    });
    client.on("error", () => {});
    client.on("close", () => upstream && upstream.destroy());
    const open = () => {
      if (client.destroyed || client.writableEnded) return;
      upstream = net.connect(upstreamPort, "127.0.0.1");
      const pair = { client, upstream };
      pairs.add(pair);
      upstream.on("connect", () => { for (const c of pending) upstream.write(c); });
      upstream.on("data", (d) => client.write(d));
      upstream.on("error", () => client.destroy());
      upstream.on("close", () => { pairs.delete(pair); client.end(); });
    };
    // Held until the whole head is in (so a refused upgrade never reaches ringcast).
    const ready = refuseWebSocket ? sleep(50) : Promise.resolve();
    ready.then(() => (gate ? gate.then(open) : open()));
  });
  return {
    heads,
    listen: () => new Promise((r) => server.listen(0, "127.0.0.1", () => r(server.address().port))),
    // Drops every proxied connection and holds new ones until release().
    cut() {
      let release;
      gate = new Promise((r) => (release = r));
      this.release = () => { gate = null; release(); };
      for (const { client, upstream } of pairs) { client.destroy(); upstream.destroy(); }
      pairs.clear();
    },
    close: () => server.close(),
  };
}

// --- helpers -------------------------------------------------------------------------
const demo = (page) => page.evaluate(() => ({ ...window.demo, received: window.demo.received.map((m) => m.text) }));
const idOf = (page, text) => page.evaluate((t) => (window.demo.received.find((m) => m.text === t) || {}).id, text);

async function waitFor(page, what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: PATIENCE_MS, polling: 50 });
  } catch (err) {
    throw new Error(`timed out waiting for ${what}; page state: ${JSON.stringify(await demo(page))}`);
  }
  log("ok:", what);
}
const waitText = (page, name, text) => waitFor(page, `${name} shows ${JSON.stringify(text)}`,
  (t) => window.demo.received.some((m) => m.text === t), text);

async function publish(room, text) {
  const r = await fetch(`http://127.0.0.1:${PORT}/rooms/${room}/messages`, {
    method: "POST", body: JSON.stringify({ text, sent: Date.now() }),
  });
  if (r.status !== 201) throw new Error(`publish ${text}: ${r.status}`);
  return (await r.json()).id;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const count = (list, text) => list.filter((t) => t === text).length;

// Records what a page sends: POSTs to /messages, and every WebSocket with its sent frames.
function watch(page) {
  const seen = { posts: [], sockets: [] };
  page.on("request", (r) => {
    if (r.method() === "POST" && r.url().includes("/messages")) seen.posts.push(r.postData());
  });
  page.on("websocket", (ws) => {
    const socket = { url: ws.url(), sent: [] };
    seen.sockets.push(socket);
    ws.on("framesent", (f) => socket.sent.push(String(f.payload)));
  });
  return seen;
}
// The comment texts a page sent: POST bodies, or publish frames on its WebSockets.
const postedTexts = (seen) => seen.posts.map((b) => JSON.parse(b).text);
function framedTexts(seen, socket) {
  const texts = [];
  for (const s of socket ? [socket] : seen.sockets) {
    for (const f of s.sent) {
      const v = JSON.parse(f);
      if (v.type === "publish") texts.push(JSON.parse(v.data).text);
    }
  }
  return texts;
}

const stdin = readline.createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();
async function restartRingcast() {
  process.stdout.write("RINGCAST-RESTART\n");
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== "restarted") throw new Error(`restart answer: ${value}`);
}
// The scenarios meet here: the last to arrive restarts ringcast, then all go on.
function meeting(n) {
  let arrived = 0, done;
  const restarted = new Promise((r) => (done = r));
  return async () => {
    if (++arrived === n) done(restartRingcast());
    return restarted;
  };
}

async function newPage(context) {
  const page = await context.newPage();
  page.on("pageerror", (err) => { log("page error:", err.message); failed = true; });
  page.on("console", (m) => m.type() === "error" && log("console:", m.text()));
  return page;
}

// --- 0. fallback ----------------------------------------------------------------------
async function fallback(context) {
  const room = "browser-fallback";
  const refusing = proxy(PORT, { refuseWebSocket: true });
  const port = await refusing.listen();
  try {
    for (const [name, base, expect] of [
      ["via a proxy that refuses WebSocket", `http://127.0.0.1:${port}`, "sse"],
      ["straight to ringcast", `http://127.0.0.1:${PORT}`, WS_SERVED ? "ws" : "sse"],
    ]) {
      const page = await newPage(context);
      const seen = watch(page);
      await page.goto(`${base}/demo?room=${room}`);
      await waitFor(page, `the page ${name} is open`, () => window.demo.state === "open");
      const text = `default transport ${name}`;
      await say(page, text);
      await waitText(page, name, text);
      await waitFor(page, `the page ${name} has the ack`, () => window.demo.acks.length === 1);
      const s = await demo(page);
      check(seen.sockets.length >= 1, `the page ${name} tried a WebSocket first`);
      check(s.mode === expect, `the page ${name} uses ${expect} (${s.mode})`);
      const shown = await page.locator("#transport").textContent();
      check(shown.startsWith(expect === "ws" ? "WebSocket" : "SSE + POST"), `it says so (${shown})`);
      if (expect === "sse") {
        check(s.notices.some((n) => n.startsWith("WebSocket refused")), "it says the WebSocket was refused");
        check(JSON.stringify(postedTexts(seen)) === JSON.stringify([text]), "the comment went out as a POST");
        check(framedTexts(seen).length === 0, "and not on a WebSocket");
      } else {
        check(JSON.stringify(framedTexts(seen)) === JSON.stringify([text]), "the comment went out on the WebSocket");
        check(seen.posts.length === 0, "and not as a POST");
      }
      check(s.acks[0].id === (await idOf(page, text)), `the page shows the comment's id (${s.acks[0].id})`);
      await page.close();
    }
  } finally {
    refusing.close();
  }
}

// --- 1.–5. the scenario, over one transport ------------------------------------------------
async function scenario(context, mode, restart) {
  const ROOM = `browser-${mode}`;
  const M = mode === "ws" ? "WebSocket" : "SSE";
  const relay = proxy(PORT);
  const relayPort = await relay.listen();
  try {
    const a = await newPage(context), b = await newPage(context);
    const seenA = watch(a), seenB = watch(b);
    await a.goto(`http://127.0.0.1:${relayPort}/demo?room=${ROOM}&transport=${mode}`);
    await b.goto(`http://127.0.0.1:${PORT}/demo?room=${ROOM}&transport=${mode}`);
    for (const [name, page] of [["A", a], ["B", b]]) {
      await waitFor(page, `${M}: ${name} is open`, () => window.demo.state === "open");
    }

    // 1. Fan-out both ways, through the page's own form.
    await say(a, "hello from A");
    await say(b, "hello from B");
    for (const [name, page, seen] of [["A", a, seenA], ["B", b, seenB]]) {
      await waitText(page, `${M}: ${name}`, "hello from A");
      await waitText(page, `${M}: ${name}`, "hello from B");
      await waitFor(page, `${M}: ${name} has its ack`, () => window.demo.acks.length === 1);
      const s = await demo(page);
      check(s.mode === mode && s.transport === "http/1.1", `${M}: ${name} shows its transport (${s.mode}, ${s.transport})`);
      check((await page.locator("#transport").textContent()).startsWith(mode === "ws" ? "WebSocket" : "SSE + POST"),
        `${M}: ${name} says which transport`);
      check(Number.isFinite(s.latencyMs) && s.latencyMs >= 0 && s.latencyMs < 5000,
        `${M}: ${name} shows a publish→display latency (${s.latencyMs} ms)`);
      check(await page.locator("#lastId").textContent() === String(s.lastId),
        `${M}: ${name} shows the last event id (${s.lastId})`);
      const mine = `hello from ${name}`;
      check(s.acks[0].text === mine && s.acks[0].id === (await idOf(page, mine)),
        `${M}: ${name}'s comment was acknowledged with the id both pages show (${s.acks[0].id})`);
      if (mode === "ws") {
        check(seen.sockets.length === 1 && JSON.stringify(framedTexts(seen)) === JSON.stringify([mine]),
          `${M}: ${name}'s comment went out as a publish frame on its WebSocket`);
        check(seen.posts.length === 0, `${M}: ${name} made no POST`);
      } else {
        check(JSON.stringify(postedTexts(seen)) === JSON.stringify([mine]), `${M}: ${name}'s comment went out as a POST`);
        check(seen.sockets.length === 0, `${M}: ${name} opened no WebSocket`);
      }
    }

    // 2. Cut A's connection; publish while it is away; A resumes and misses nothing.
    const beforeCut = (await demo(a)).lastId;
    let headsBefore = relay.heads.length;
    relay.cut();
    await waitFor(a, `${M}: A notices the cut`, () => window.demo.state !== "open");
    const away = [];
    for (let i = 1; i <= 3; i++) away.push(await publish(ROOM, `while away ${i}`));
    relay.release();
    for (let i = 1; i <= 3; i++) await waitText(a, `${M}: A`, `while away ${i}`);
    await waitFor(a, `${M}: A is open again`, () => window.demo.state === "open");
    let s = await demo(a);
    const resumeHead = relay.heads.slice(headsBefore).join("\n");
    if (mode === "ws") {
      check(new RegExp(`^GET [^ ]*/ws\\?last_event_id=${beforeCut} `, "m").test(resumeHead),
        `${M}: A's reconnect asked for ?last_event_id=${beforeCut}`);
    } else {
      check(new RegExp(`^last-event-id: ${beforeCut}$`, "im").test(resumeHead),
        `${M}: A's reconnect carried Last-Event-ID: ${beforeCut}`);
    }
    for (let i = 1; i <= 3; i++) check(count(s.received, `while away ${i}`) === 1, `${M}: A shows "while away ${i}" once`);
    check(s.gaps.length === 0, `${M}: A shows no gap after a resume the history covers`);
    check(s.resumes === 1 && s.notices.some((n) => n.startsWith(`resumed after #${beforeCut}`)),
      `${M}: A shows that it resumed`);
    check(s.lastId === away[2], `${M}: A's last id is the last published (${away[2]})`);

    // 3. Cut A and type a comment while it is away: it waits, then goes out once.
    relay.cut();
    await waitFor(a, `${M}: A notices the second cut`, () => window.demo.state !== "open");
    const socketsBefore = seenA.sockets.length;
    await say(a, "typed while away");
    await waitFor(a, `${M}: A shows the comment waiting`, () => window.demo.waiting === 1);
    check((await a.locator("#sent").textContent()).includes("1 waiting"), `${M}: A's sent pill says 1 waiting`);
    check((await a.locator("#log").textContent()).includes("waiting for the connection: typed while away"),
      `${M}: A's log says the comment waits for the connection`);
    relay.release();
    await waitText(b, `${M}: B`, "typed while away");
    await waitFor(a, `${M}: A has the comment's ack`, () => window.demo.waiting === 0 && window.demo.acks.length === 2);
    s = await demo(a);
    const typedId = await idOf(b, "typed while away");
    check(s.acks[1].text === "typed while away" && s.acks[1].id === typedId,
      `${M}: A's ack names the id B shows (${typedId})`);
    if (mode === "ws") {
      const later = seenA.sockets.slice(socketsBefore);
      check(later.some((sock) => framedTexts(seenA, sock).includes("typed while away")),
        `${M}: the comment went out on A's new WebSocket`);
      check(seenA.posts.length === 0, `${M}: A made no POST`);
    } else {
      check(count(postedTexts(seenA), "typed while away") === 1, `${M}: the comment went out as one POST`);
    }

    // 4. Cut again and publish more than the history holds: A must show the gap.
    relay.cut();
    await waitFor(a, `${M}: A notices the third cut`, () => window.demo.state !== "open");
    const ids = [];
    for (let i = 1; i <= HISTORY + 4; i++) ids.push(await publish(ROOM, `burst ${i}`));
    relay.release();
    await waitText(a, `${M}: A`, `burst ${HISTORY + 4}`);
    s = await demo(a);
    check(s.gaps.length === 1 && s.gaps[0].from === ids[0] && s.gaps[0].to === ids[3],
      `${M}: A shows the gap #${ids[0]}–#${ids[3]} (${JSON.stringify(s.gaps)})`);
    check(await a.locator("#gaps").textContent() === "1", `${M}: A's gap counter reads 1`);
    for (let i = 5; i <= HISTORY + 4; i++) check(count(s.received, `burst ${i}`) === 1, `${M}: A shows "burst ${i}" once`);
    check(count(s.received, "burst 1") === 0, `${M}: A does not pretend to have what fell out`);

    // 5. Restart the server on the same port.
    const lastBefore = (await demo(b)).lastId;
    const resumesBefore = [(await demo(a)).resumes, (await demo(b)).resumes];
    await restart();
    for (const [i, name, page] of [[0, "A", a], [1, "B", b]]) {
      await waitFor(page, `${M}: ${name} reconnects by itself`,
        (n) => window.demo.state === "open" && window.demo.resumes > n, resumesBefore[i]);
    }
    await say(a, "after restart from A");
    await publish(ROOM, "after restart 2");
    for (const [name, page] of [["A", a], ["B", b]]) {
      await waitText(page, `${M}: ${name}`, "after restart from A");
      await waitText(page, `${M}: ${name}`, "after restart 2");
      s = await demo(page);
      check(s.resets === 1 && s.notices.some((n) => n.includes("server restarted")),
        `${M}: ${name} shows the reset (after #${lastBefore})`);
      const [epochBefore] = String(lastBefore).split("-");
      const [epoch, seq] = String(s.lastId).split("-");
      check(seq === "2" && Number(epoch) > Number(epochBefore),
        `${M}: ${name}'s last id follows the new server's epoch (${s.lastId} after ${lastBefore})`);
      check(s.gaps.length === (name === "A" ? 1 : 0), `${M}: ${name} shows no new gap across the restart`);
    }
    // B was never cut: it must hold every message of the test, each once, in order.
    s = await demo(b);
    const expected = ["hello from A", "hello from B", "while away 1", "while away 2", "while away 3",
      "typed while away", ...ids.map((_, i) => `burst ${i + 1}`), "after restart from A", "after restart 2"];
    const got = s.received.filter((t) => expected.includes(t));
    const sorted = (l) => [...l].sort();
    check(JSON.stringify(sorted(got)) === JSON.stringify(sorted(expected)),
      `${M}: B shows every message exactly once (${got.length})`);
    // Over WebSocket, nothing of the whole scenario went out as a POST.
    if (mode === "ws") check(seenA.posts.length + seenB.posts.length === 0, `${M}: no page made a POST`);
    else check(seenA.sockets.length + seenB.sockets.length === 0, `${M}: no page opened a WebSocket`);

    // A screenshot with comments in flight.
    for (const t of ["danmaku!", "hello ringcast", "888888", "so fast", "gg", "hi from A"]) await say(a, t);
    await sleep(1500);
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await a.screenshot({ path: path.join(ARTIFACTS, `demo-${mode}.png`) });
    log("screenshot:", path.join(ARTIFACTS, `demo-${mode}.png`));
  } finally {
    relay.close();
  }
}

// --- the test ------------------------------------------------------------------------
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ringcast-chromium-"));
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1000, height: 820 },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  log(`transports: ${MODES.join(", ")} (WebSocket ${WS_SERVED ? "served" : "refused"} by ringcast)`);
  await fallback(context);
  const restart = meeting(MODES.length);
  await Promise.all(MODES.map((mode) => scenario(context, mode, restart)));
  fs.copyFileSync(path.join(ARTIFACTS, `demo-${MODES[MODES.length - 1]}.png`), path.join(ARTIFACTS, "demo.png"));
  if (failed) throw new Error("the page threw (see page error above)");
  log("all checks passed");
} catch (err) {
  failed = true;
  log(err.stack || String(err));
  if (context) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    for (const [i, page] of context.pages().entries()) {
      await page.screenshot({ path: path.join(ARTIFACTS, `failure-${i}.png`) }).catch(() => {});
    }
  }
} finally {
  if (context) await context.close().catch(() => {});
  stdin.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
