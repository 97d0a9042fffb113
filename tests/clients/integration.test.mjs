// Backend integration with the real centrifuge-js SDK: it connects with no
// token through the connect proxy (the session cookie is forwarded to the
// backend), calls an RPC the backend answers, and subscribes to a wildcard
// channel; the backend (a Node HTTP server here) also receives the
// connect/subscribe webhooks, signed.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { Centrifuge } from "centrifuge";
import { Hub, freePort, waitFor } from "./lib/harness.mjs";

const API_KEY = "integration-test-api-key";
const HOOK_SECRET = "integration-hook-secret";

// The application: a connect proxy that knows its session cookie, an RPC
// method, and a webhook receiver.
function startBackend() {
  const seen = { connect: [], rpc: [], hooks: [] };
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const json = (v) => {
        res.writeHead(200, { "Content-Type": "application/json" });
        res.end(JSON.stringify(v));
      };
      const payload = JSON.parse(body);
      if (req.url === "/connect") {
        seen.connect.push({ cookie: req.headers.cookie, payload });
        if (req.headers.cookie !== "session=s3cret") return json({ disconnect: { code: 4501, reason: "unauthorized" } });
        return json({ result: { user: "ann", data: { greeting: "hi ann" } } });
      }
      if (req.url === "/rpc") {
        seen.rpc.push(payload);
        if (payload.method === "add") return json({ result: { data: { sum: payload.data.a + payload.data.b } } });
        return json({ error: { code: 404, message: "no such method" } });
      }
      if (req.url === "/hooks") {
        const ts = req.headers["x-tidings-timestamp"];
        const expected = "sha256=" + createHmac("sha256", HOOK_SECRET).update(`${ts}.${body}`).digest("hex");
        assert.equal(req.headers["x-tidings-signature"], expected);
        seen.hooks.push(...payload.events);
        res.writeHead(204);
        return res.end();
      }
      res.writeHead(404);
      res.end();
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ server, seen, url: `http://127.0.0.1:${server.address().port}` })),
  );
}

const cleanup = [];
after(async () => {
  for (const c of cleanup) await c();
});

test("centrifuge-js: cookie session through the connect proxy, RPC, wildcard subscription", async () => {
  const backend = await startBackend();
  cleanup.push(() => new Promise((r) => backend.server.close(r)));
  const hub = new Hub(await freePort(), {
    TIDINGS_CENTRIFUGO_API_KEY: API_KEY,
    TIDINGS_PROXY_CONNECT_ENDPOINT: `${backend.url}/connect`,
    TIDINGS_PROXY_RPC_ENDPOINT: `${backend.url}/rpc`,
    TIDINGS_PROXY_HTTP_HEADERS: "Cookie",
    TIDINGS_WEBHOOKS_ENDPOINTS: `${backend.url}/hooks`,
    TIDINGS_WEBHOOKS_SECRET: HOOK_SECRET,
  });
  hub.args = ["--config", new URL("./tidings.toml", import.meta.url).pathname];
  await hub.start();
  cleanup.push(async () => {
    await hub.stop().catch(() => {});
    hub.cleanup();
  });

  // The browser's cookie travels with the WebSocket handshake.
  class CookieWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: "session=s3cret" } });
    }
  }
  const url = `ws://127.0.0.1:${hub.port}/connection/websocket`;
  const client = new Centrifuge(url, { websocket: CookieWebSocket, minReconnectDelay: 50 });
  cleanup.push(async () => client.disconnect());
  const connected = new Promise((resolve) => client.once("connected", resolve));
  client.connect();
  const ctx = await connected;
  assert.deepEqual(ctx.data, { greeting: "hi ann" });
  assert.equal(backend.seen.connect[0].cookie, "session=s3cret");
  assert.equal(backend.seen.connect[0].payload.transport, "websocket");

  // RPC answered by the backend, and its refusal.
  const answer = await client.rpc("add", { a: 2, b: 3 });
  assert.deepEqual(answer.data, { sum: 5 });
  assert.equal(backend.seen.rpc[0].user, "ann");
  await assert.rejects(client.rpc("nope", {}), (e) => e.code === 404 && e.message === "no such method");

  // A wildcard subscription receives every matching channel's publications.
  const sub = client.newSubscription("rooms:eu/*");
  const got = [];
  sub.on("publication", (p) => got.push({ channel: p.channel, room: p.tags?.channel, data: p.data }));
  const subscribed = new Promise((resolve) => sub.once("subscribed", resolve));
  sub.subscribe();
  await subscribed;
  for (const channel of ["rooms:us/nyc", "rooms:eu/paris", "rooms:eu/rome"]) {
    const res = await fetch(hub.url("/api/publish"), {
      method: "POST",
      headers: { "X-API-Key": API_KEY, "Content-Type": "application/json" },
      body: JSON.stringify({ channel, data: { in: channel } }),
    });
    assert.equal(res.status, 200);
  }
  await waitFor(() => got.length === 2, "two publications");
  assert.deepEqual(got, [
    { channel: "rooms:eu/*", room: "rooms:eu/paris", data: { in: "rooms:eu/paris" } },
    { channel: "rooms:eu/*", room: "rooms:eu/rome", data: { in: "rooms:eu/rome" } },
  ]);

  // The backend was told, with signed webhooks.
  await waitFor(
    () => backend.seen.hooks.some((e) => e.event === "subscribe" && e.channel === "rooms:eu/*" && e.user === "ann"),
    "subscribe webhook",
  );
  assert.ok(backend.seen.hooks.some((e) => e.event === "connect" && e.user === "ann"));

  // Without the cookie the backend refuses: terminal disconnect 4501.
  const stranger = new Centrifuge(url, { websocket: WebSocket });
  cleanup.push(async () => stranger.disconnect());
  const refused = new Promise((resolve) => stranger.once("disconnected", resolve));
  stranger.connect();
  const d = await refused;
  assert.equal(d.code, 4501);
});
