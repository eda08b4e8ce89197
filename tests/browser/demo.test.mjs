// Headless Chromium against ringcast's /demo page. Run by tests/gateway_browser.rs:
//
//   node tests/browser/demo.test.mjs --port P --artifacts DIR
//
// P is a running ringcast started with `--history 8`. To restart it, this script prints
// `RINGCAST-RESTART` on stdout and waits for a `restarted` line on stdin (the Rust test
// sends SIGTERM, waits for the exit and starts ringcast again on the same port).
//
// Page A reaches ringcast through a TCP proxy in this script, so the test can cut A's
// connection while the server keeps running (and see the request headers A sends when it
// comes back); page B connects directly and never misses anything. Checks, in order:
//   1. a comment sent from either page shows on both, with a latency and a transport;
//   2. cut A, publish 3 while it is away: A comes back by itself with `Last-Event-ID`, the
//      server replays the 3 from history, A shows all of them once and no gap;
//   3. cut A, publish 12 (more than the 8 kept): A shows a gap event naming exactly the
//      ids that fell out of history, then the 8 still held;
//   4. restart ringcast (SIGTERM drains: everything accepted is written, then `retry:`):
//      both pages reconnect by themselves with an id of the old process, which the new one
//      cannot place: it sends `event: reset`; the pages must note it, show the new comments
//      (ids "{epoch}-{seq}" of a new epoch), and show no gap (nothing accepted was lost).
// Exits non-zero on the first failed check. Saves DIR/demo.png.

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
const ARTIFACTS = arg("--artifacts", "target/browser-artifacts");
const HISTORY = 8; // ringcast's --history in the Rust test
const ROOM = "browser-test";
const PATIENCE_MS = 15000;
if (!PORT) throw new Error("usage: demo.test.mjs --port P [--artifacts DIR]");

const log = (...a) => console.error("[demo.test]", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function check(cond, what) {
  if (!cond) throw new Error("check failed: " + what);
  log("ok:", what);
}

// --- a TCP proxy we can cut, hold and listen in on ------------------------------------
function proxy(upstreamPort) {
  const pairs = new Set();
  const heads = []; // request heads of /events requests, as sent by the browser
  let gate = null; // while set, new connections wait for it before reaching ringcast
  const server = net.createServer((client) => {
    const pending = [];
    let upstream = null;
    let sniffed = "";
    client.on("data", (chunk) => {
      if (sniffed.length < 4096) {
        sniffed += chunk.toString("latin1");
        const end = sniffed.indexOf("\r\n\r\n");
        if (end > 0 && /^GET [^ ]*\/events/.test(sniffed)) {
          heads.push(sniffed.slice(0, end));
          sniffed = "x".repeat(4096); // one head per connection is enough
        }
      }
      if (upstream) upstream.write(chunk); else pending.push(chunk);
    });
    client.on("error", () => {});
    client.on("close", () => upstream && upstream.destroy());
    const open = () => {
      if (client.destroyed) return;
      upstream = net.connect(upstreamPort, "127.0.0.1");
      const pair = { client, upstream };
      pairs.add(pair);
      upstream.on("connect", () => { for (const c of pending) upstream.write(c); });
      upstream.on("data", (d) => client.write(d));
      upstream.on("error", () => client.destroy());
      upstream.on("close", () => { pairs.delete(pair); client.end(); });
    };
    if (gate) gate.then(open); else open();
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

async function publish(text) {
  const r = await fetch(`http://127.0.0.1:${PORT}/rooms/${ROOM}/messages`, {
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

const stdin = readline.createInterface({ input: process.stdin });
const stdinLines = stdin[Symbol.asyncIterator]();
async function restartRingcast() {
  process.stdout.write("RINGCAST-RESTART\n");
  const { value, done } = await stdinLines.next();
  if (done || value.trim() !== "restarted") throw new Error(`restart answer: ${value}`);
}

// --- the test ------------------------------------------------------------------------
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "ringcast-chromium-"));
const relay = proxy(PORT);
const relayPort = await relay.listen();
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
  const a = context.pages()[0] || (await context.newPage());
  const b = await context.newPage();
  for (const page of [a, b]) {
    page.on("pageerror", (err) => { log("page error:", err.message); failed = true; });
    page.on("console", (m) => m.type() === "error" && log("console:", m.text()));
  }
  await a.goto(`http://127.0.0.1:${relayPort}/demo?room=${ROOM}`);
  await b.goto(`http://127.0.0.1:${PORT}/demo?room=${ROOM}`);
  for (const [name, page] of [["A", a], ["B", b]]) {
    await waitFor(page, `${name} is open`, () => window.demo.state === "open");
  }

  // 1. Fan-out both ways, through the page's own form.
  await say(a, "hello from A");
  await say(b, "hello from B");
  for (const [name, page] of [["A", a], ["B", b]]) {
    await waitText(page, name, "hello from A");
    await waitText(page, name, "hello from B");
    const s = await demo(page);
    check(s.transport === "http/1.1", `${name} shows its transport (${s.transport})`);
    check(Number.isFinite(s.latencyMs) && s.latencyMs >= 0 && s.latencyMs < 5000,
      `${name} shows a publish→display latency (${s.latencyMs} ms)`);
    check(await page.locator("#lastId").textContent() === String(s.lastId),
      `${name} shows the last event id (${s.lastId})`);
  }

  // 2. Cut A's connection; publish while it is away; A resumes and misses nothing.
  const beforeCut = (await demo(a)).lastId;
  const headsBefore = relay.heads.length;
  relay.cut();
  await waitFor(a, "A notices the cut", () => window.demo.state !== "open");
  const away = [];
  for (let i = 1; i <= 3; i++) away.push(await publish(`while away ${i}`));
  relay.release();
  for (let i = 1; i <= 3; i++) await waitText(a, "A", `while away ${i}`);
  await waitFor(a, "A is open again", () => window.demo.state === "open");
  let s = await demo(a);
  const resumeHead = relay.heads.slice(headsBefore).join("\n");
  check(new RegExp(`^last-event-id: ${beforeCut}$`, "im").test(resumeHead),
    `A's reconnect carried Last-Event-ID: ${beforeCut}`);
  for (let i = 1; i <= 3; i++) check(count(s.received, `while away ${i}`) === 1, `A shows "while away ${i}" once`);
  check(s.gaps.length === 0, "A shows no gap after a resume the history covers");
  check(s.resumes === 1 && s.notices.some((n) => n.startsWith(`resumed after #${beforeCut}`)),
    "A shows that it resumed");
  check(s.lastId === away[2], `A's last id is the last published (${away[2]})`);

  // 3. Cut again and publish more than the history holds: A must show the gap.
  relay.cut();
  await waitFor(a, "A notices the second cut", () => window.demo.state !== "open");
  const ids = [];
  for (let i = 1; i <= HISTORY + 4; i++) ids.push(await publish(`burst ${i}`));
  relay.release();
  await waitText(a, "A", `burst ${HISTORY + 4}`);
  s = await demo(a);
  check(s.gaps.length === 1 && s.gaps[0].from === ids[0] && s.gaps[0].to === ids[3],
    `A shows the gap #${ids[0]}–#${ids[3]} (${JSON.stringify(s.gaps)})`);
  check(await a.locator("#gaps").textContent() === "1", "A's gap counter reads 1");
  for (let i = 5; i <= HISTORY + 4; i++) check(count(s.received, `burst ${i}`) === 1, `A shows "burst ${i}" once`);
  check(count(s.received, "burst 1") === 0, "A does not pretend to have what fell out");

  // 4. Restart the server on the same port.
  const lastBefore = (await demo(b)).lastId;
  await restartRingcast();
  for (const [name, page] of [["A", a], ["B", b]]) {
    await waitFor(page, `${name} reconnects by itself`,
      (n) => window.demo.state === "open" && window.demo.resumes >= n, name === "A" ? 3 : 1);
  }
  await say(a, "after restart from A");
  await publish("after restart 2");
  for (const [name, page] of [["A", a], ["B", b]]) {
    await waitText(page, name, "after restart from A");
    await waitText(page, name, "after restart 2");
    s = await demo(page);
    check(s.resets === 1 && s.notices.some((n) => n.includes("server restarted")),
      `${name} shows the reset (after #${lastBefore})`);
    const [epochBefore] = String(lastBefore).split("-");
    const [epoch, seq] = String(s.lastId).split("-");
    check(seq === "2" && Number(epoch) > Number(epochBefore),
      `${name}'s last id follows the new server's epoch (${s.lastId} after ${lastBefore})`);
    check(s.gaps.length === (name === "A" ? 1 : 0), `${name} shows no new gap across the restart`);
  }
  // B was never cut: it must hold every message of the test, each once, in order.
  s = await demo(b);
  const expected = ["hello from A", "hello from B", "while away 1", "while away 2", "while away 3",
    ...ids.map((_, i) => `burst ${i + 1}`), "after restart from A", "after restart 2"];
  const got = s.received.filter((t) => expected.includes(t));
  const sorted = (l) => [...l].sort();
  check(JSON.stringify(sorted(got)) === JSON.stringify(sorted(expected)),
    `B shows every message exactly once (${got.length})`);

  // A screenshot with comments in flight.
  for (let i = 1; i <= 6; i++) await say(a, ["danmaku!", "hello ringcast", "888888", "so fast", "gg", "hi from A"][i - 1]);
  await sleep(1500);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await a.screenshot({ path: path.join(ARTIFACTS, "demo.png") });
  log("screenshot:", path.join(ARTIFACTS, "demo.png"));
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
  relay.close();
  stdin.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
