// The demo page and the admin dashboard in real headless Chromium (Debian's
// chromium driven by npm playwright-core): the ticker over EventSource, two
// pages chatting over WebSocket with presence, the latency meter, the drop
// buttons (no missing, no repeated tick), the admin dashboard and its
// password, and a page on another origin (refused a WebSocket, allowed SSE
// where CORS says so). The hub agrees to permessage-deflate, which
// Chromium offers: the chat runs compressed both ways.
//
// With UPDATE_SCREENSHOTS=1 it also writes docs/screenshots/*.png.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { Hub, freePort } from "./lib/harness.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const PASSWORD = "browser-test-admin";
const SCREENSHOTS = process.env.UPDATE_SCREENSHOTS ? new URL("../../docs/screenshots/", import.meta.url).pathname : null;

let hub;
let browser;
let otherOrigin;
let otherServer;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (scripts/test.sh does)`);
  const otherPort = await freePort();
  otherOrigin = `http://127.0.0.1:${otherPort}`;
  // Zero config but for the admin password, one CORS origin and WebSocket
  // compression: the demo runs because the development keys are in use.
  hub = new Hub(await freePort(), {
    TIDINGS_ADMIN_PASSWORD: PASSWORD,
    TIDINGS_MERCURE_CORS_ORIGINS: otherOrigin,
    TIDINGS_CENTRIFUGO_WEBSOCKET_COMPRESSION: "true",
  });
  await hub.start();
  otherServer = http.createServer((req, res) => {
    res.setHeader("content-type", "text/html");
    res.end(`<!doctype html><script>
      window.result = { ws: "pending", sse: "pending" };
      const ws = new WebSocket("ws://127.0.0.1:${hub.port}/connection/websocket");
      ws.onopen = () => (window.result.ws = "open");
      ws.onerror = () => (window.result.ws = "refused");
      const es = new EventSource("http://127.0.0.1:${hub.port}/.well-known/mercure?match=demo:ticker");
      es.onmessage = () => (window.result.sse = "received");
    </script>`);
  });
  await new Promise((resolve) => otherServer.listen(otherPort, "127.0.0.1", resolve));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu"],
  });
});

after(async () => {
  await browser?.close();
  otherServer?.close();
  await hub?.stop().catch(() => {});
  hub?.cleanup();
});

async function demoPage(name, viewport = { width: 1280, height: 1000 }) {
  const page = await browser.newPage({ viewport });
  page.on("pageerror", (e) => console.error(`page error (${name}):`, e.message));
  await page.goto(hub.url(`/?name=${name}`));
  return page;
}

const state = (page, path) => page.evaluate((p) => p.split(".").reduce((o, k) => o?.[k], window), path);

test("the ticker updates over SSE", async () => {
  const page = await demoPage("ticker");
  await page.waitForFunction(() => window.demo.sse.count >= 3, null, { timeout: 10000 });
  const first = await page.locator("#ticker tbody").innerText();
  await page.waitForFunction((n) => window.demo.sse.count >= n + 2, await state(page, "demo.sse.count"));
  assert.equal(await page.locator("#ticker tbody tr").count(), 5, "five instruments");
  assert.notEqual(await page.locator("#ticker tbody").innerText(), first, "prices moved");
  assert.match(await page.locator("#sse-status").innerText(), /connected/);
  await page.close();
});

test("two pages chat with each other and see each other's presence", async () => {
  const alice = await demoPage("alice");
  const bob = await demoPage("bob");
  for (const page of [alice, bob]) {
    await page.waitForFunction(() => ["alice", "bob"].every((u) => window.demo.chat.presence.includes(u)), null, { timeout: 10000 });
    assert.match(await state(page, "demo.client.ws.extensions"), /permessage-deflate/);
  }
  await alice.fill("#chat-input", "hello bob");
  await alice.press("#chat-input", "Enter");
  await bob.waitForFunction(() => window.demo.chat.messages.some((m) => m.user === "alice" && m.text === "hello bob"));
  await bob.fill("#chat-input", "hi alice");
  await bob.click("#chat-form button");
  await alice.waitForFunction(() => window.demo.chat.messages.some((m) => m.user === "bob" && m.text === "hi alice"));
  assert.match(await alice.locator("#messages").innerText(), /bob\s+hi alice/);

  // A latecomer gets the conversation from history, and the others see it arrive.
  const carol = await demoPage("carol");
  await carol.waitForFunction(() => window.demo.chat.messages.length >= 2);
  assert.deepEqual(
    (await state(carol, "demo.chat.messages")).slice(-2).map((m) => m.text),
    ["hello bob", "hi alice"],
  );
  await alice.waitForFunction(() => window.demo.chat.presence.includes("carol"));
  await carol.close();
  await alice.waitForFunction(() => !window.demo.chat.presence.includes("carol"), null, { timeout: 10000 });
  await alice.close();
  await bob.close();
});

test("the latency meter fills for both transports; a phone width fits", async () => {
  const page = await demoPage("meter");
  await page.waitForFunction(() => window.demo.sse.latencies.length >= 5 && window.demo.ws.latencies.length >= 5, null, { timeout: 15000 });
  for (const row of ["#meter-sse", "#meter-ws"]) {
    await page.waitForFunction((r) => /\d+ ms/.test(document.querySelector(`${r} [data-k=p50]`).textContent), row);
    const bytes = Number((await page.locator(`${row} [data-k=bytes]`).innerText()).replaceAll(",", ""));
    assert.ok(bytes > 0, `${row} counts bytes`);
  }
  if (SCREENSHOTS) {
    await page.waitForFunction(() => window.demo.ws.latencies.length >= 60, null, { timeout: 30000 });
    await page.screenshot({ path: `${SCREENSHOTS}demo.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling at phone width (overflow ${overflow}px)`);
  await page.close();
});

test("after each drop button the stream resumes with no missing and no repeated tick", async () => {
  const page = await demoPage("dropper");
  await page.waitForFunction(() => window.demo.sse.count >= 3 && window.demo.ws.count >= 3, null, { timeout: 10000 });
  for (const [button, transport] of [["#drop-sse", "sse"], ["#drop-ws", "ws"]]) {
    const before = await state(page, `demo.${transport}.last`);
    await page.click(button);
    await page.waitForFunction((t) => window.demo[t].reconnects >= 1, transport);
    // Ticks were published while the connection was down; the resumed
    // stream must go on past them.
    await page.waitForFunction(([t, n]) => window.demo[t].last >= n + 8, [transport, before], { timeout: 10000 });
    const s = await state(page, `demo.${transport}`);
    assert.equal(s.gaps, 0, `${transport}: missing ticks`);
    assert.equal(s.repeats, 0, `${transport}: repeated ticks`);
  }
  await page.close();
});

test("the admin dashboard: password, live connections, publish, disconnect, history", async () => {
  const alice = await demoPage("alice2");
  const bob = await demoPage("bob2");
  for (const page of [alice, bob]) await page.waitForFunction(() => window.demo.chat.presence.length >= 2, null, { timeout: 10000 });

  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  await page.goto(hub.url("/admin"));
  await page.fill("#password", "not-the-password");
  await page.click("#login button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.includes("wrong password"));
  assert.equal(await state(page, "admin.signedIn"), false);

  await page.fill("#password", PASSWORD);
  await page.click("#login button");
  await page.waitForFunction(() => window.admin.signedIn && (window.admin.connections["centrifugo websocket"] ?? 0) >= 2);
  await page.waitForFunction(() => (window.admin.connections["mercure sse"] ?? 0) >= 2);
  await page.waitForFunction(() => window.admin.channels.some((c) => c.name === "demo:chat" && c.subscribers >= 2));

  // Publish from the dashboard: both chat pages receive it.
  await page.fill("#publish-channel", "demo:chat");
  await page.fill("#publish-data", '{"text": "from the operator"}');
  await page.click("#publish-form button");
  for (const p of [alice, bob]) await p.waitForFunction(() => window.demo.chat.messages.some((m) => m.text === "from the operator"));

  // Presence of a channel, and disconnecting one client.
  await page.locator("#channels tr", { hasText: "demo:chat" }).locator("button").click();
  await page.waitForFunction(() => window.admin.presence.some((c) => c.user === "bob2"));
  if (SCREENSHOTS) {
    await page.waitForFunction((n) => window.admin.refreshes >= n + 8, await state(page, "admin.refreshes"), { timeout: 20000 });
    await page.screenshot({ path: `${SCREENSHOTS}admin.png`, fullPage: true });
  }
  await page.locator("#presence tr", { hasText: "bob2" }).locator("button").click();
  await bob.waitForFunction(() => window.demo.ws.reconnects >= 1);
  await page.waitForFunction(() => window.admin.events.some((e) => e.detail.includes("3503")));

  // Removing the chat's history: a newcomer sees no old messages.
  await page.fill("#history-channel", "demo:chat");
  await page.click("#history-form button");
  await page.waitForFunction(() => document.querySelector("#history-result").textContent === "removed");
  const newcomer = await demoPage("newcomer");
  await newcomer.waitForFunction(() => window.demo.chat.presence.includes("newcomer"), null, { timeout: 10000 });
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(await state(newcomer, "demo.chat.messages"), []);
  for (const p of [page, alice, bob, newcomer]) await p.close();
});

test("another origin is refused a WebSocket but may subscribe over SSE where CORS allows", async () => {
  const page = await browser.newPage();
  await page.goto(otherOrigin);
  await page.waitForFunction(() => window.result.ws !== "pending" && window.result.sse !== "pending", null, { timeout: 10000 });
  assert.deepEqual(await state(page, "result"), { ws: "refused", sse: "received" });
  await page.close();
});
