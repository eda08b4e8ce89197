// WebSocket over HTTP/2 (RFC 8441) in headless Chromium, run by tests/gateway_ws_h2_browser.rs:
// the page is loaded over TLS (ALPN h2, a throw-away certificate the browser is told to
// accept), then `new WebSocket("wss://…")` — which Chromium opens as an extended CONNECT on
// that HTTP/2 connection when the server's SETTINGS allow it — echoes a message, a room
// WebSocket gets `subscribed` and a message the Rust side publishes over HTTP/1.1, and both
// close with 1000. Prints one JSON line with what happened; the Rust side checks it and the
// server's metrics (which transport the WebSockets came over).
//
//   node tests/browser/ws_h2.test.mjs --port TLS_PORT
//
// After `subscribed` it prints `RINGCAST-PUBLISH` and waits for a line on stdin (the Rust
// side publishes, then answers).

import { chromium } from "playwright-core";
import readline from "node:readline";

const args = process.argv.slice(2);
const port = args[args.indexOf("--port") + 1];
const origin = `https://localhost:${port}`;

const stdin = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => stdin.once("line", resolve));

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--ignore-certificate-errors"],
});
const result = {};
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const response = await page.goto(`${origin}/healthz`);
  result.page_status = response.status();
  result.page_protocol = await page.evaluate(
    () => performance.getEntries()[0].nextHopProtocol,
  );
  result.echo = await page.evaluate(async (origin) => {
    const ws = new WebSocket(`${origin.replace("https", "wss")}/ws/echo`);
    return await new Promise((resolve) => {
      ws.onopen = () => ws.send("hello over h2 from chromium");
      ws.onmessage = (event) => {
        ws.onclose = (close) => resolve({ data: event.data, close: close.code });
        ws.close(1000);
      };
      ws.onerror = () => resolve({ error: true });
      setTimeout(() => resolve({ timeout: true }), 5000);
    });
  }, origin);
  // A room: joined at once, a message published by the Rust side.
  await page.evaluate((origin) => {
    window.room = { frames: [] };
    const ws = new WebSocket(`${origin.replace("https", "wss")}/rooms/browser-h2/ws`);
    window.room.ws = ws;
    ws.onmessage = (event) => window.room.frames.push(JSON.parse(event.data));
  }, origin);
  await page.waitForFunction(() => window.room.frames.length >= 1, null, { timeout: 5000 });
  console.log("RINGCAST-PUBLISH");
  await nextLine();
  await page.waitForFunction(() => window.room.frames.length >= 2, null, { timeout: 5000 });
  result.room = await page.evaluate(async () => {
    const closed = new Promise((resolve) => (window.room.ws.onclose = (c) => resolve(c.code)));
    window.room.ws.close(1000);
    return { frames: window.room.frames, close: await closed };
  });
} catch (error) {
  result.error = String(error);
} finally {
  await browser.close();
  stdin.close();
}
console.log(JSON.stringify(result));
