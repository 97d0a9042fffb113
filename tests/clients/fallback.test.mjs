// The real centrifuge-js SDK behind a proxy that passes HTTP but refuses
// every WebSocket upgrade (as some corporate proxies do). Its transport
// list starts with WebSocket; it must fall back to HTTP streaming (and, in
// the second test, to SSE), receive publications, lose the connection and
// recover exactly what it missed, and publish through `/emulation`.
//
// Also a plain EventSource on `/connection/uni_sse` (no SDK): after a drop
// it resumes with its own Last-Event-ID and loses nothing.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Centrifuge } from "centrifuge";
import { EventSource } from "eventsource";
import { Proxy, waitFor, jwt, nowSecs, centPublish, startCentrifugoHub } from "./lib/harness.mjs";

const SECRET = "fallback-test-secret";
const API_KEY = "fallback-test-api-key";

const cleanup = [];
after(async () => {
  for (const f of cleanup.reverse()) await f();
});

async function startHub() {
  const hub = await startCentrifugoHub(SECRET, API_KEY);
  cleanup.push(async () => {
    await hub.stop().catch(() => {});
    hub.cleanup();
  });
  return hub;
}

for (const fallback of ["http_stream", "sse"]) {
  test(`centrifuge-js falls back from a refused WebSocket to ${fallback}`, async () => {
    const hub = await startHub();
    const proxy = new Proxy(hub.port, { refuseWebSocket: true });
    const base = `127.0.0.1:${await proxy.listen()}`;
    cleanup.push(async () => proxy.close());

    const client = new Centrifuge(
      [
        { transport: "websocket", endpoint: `ws://${base}/connection/websocket` },
        { transport: fallback, endpoint: `http://${base}/connection/${fallback}` },
      ],
      {
        websocket: WebSocket,
        eventsource: EventSource,
        emulationEndpoint: `http://${base}/emulation`,
        token: jwt({ sub: "walled", exp: nowSecs() + 3600 }, SECRET),
        minReconnectDelay: 50,
        maxReconnectDelay: 200,
      },
    );
    cleanup.push(async () => client.disconnect());
    const transports = [];
    client.on("connected", (ctx) => transports.push(ctx.transport));
    const connected = new Promise((resolve) => client.once("connected", resolve));
    client.connect();
    await connected;
    assert.ok(proxy.refusedUpgrades >= 1, "the WebSocket upgrade was tried and refused");
    assert.equal(transports[0], fallback);

    const channel = `chat:${fallback}`;
    const sub = client.newSubscription(channel);
    const got = [];
    sub.on("publication", (ctx) => got.push(ctx.data.n));
    const subscribed = new Promise((resolve) => sub.once("subscribed", resolve));
    sub.subscribe();
    await subscribed;
    for (const n of [1, 2]) await centPublish(hub, API_KEY, channel, { n });
    await waitFor(() => got.length === 2, "the first two publications");

    // The proxy drops everything; three publications happen meanwhile.
    const resubscribed = new Promise((resolve) => sub.once("subscribed", resolve));
    proxy.cut();
    for (const n of [3, 4, 5]) await centPublish(hub, API_KEY, channel, { n });
    proxy.resume();
    const ctx = await resubscribed;
    assert.equal(ctx.wasRecovering, true);
    assert.equal(ctx.recovered, true, "recovered from history");
    await waitFor(() => got.length === 5, "the missed publications");
    assert.deepEqual(got, [1, 2, 3, 4, 5], "nothing lost, nothing repeated");
    assert.equal(transports.at(-1), fallback, "reconnected over the fallback again");

    // Commands go through /emulation: a publish reaches the subscription,
    // and presence answers.
    await sub.publish({ n: 6 });
    await waitFor(() => got.length === 6, "the client's own publication");
    const presence = await sub.presence();
    assert.ok(Object.values(presence.clients).some((c) => c.user === "walled"));
  });
}

test("a plain EventSource on uni_sse resumes with its Last-Event-ID", async () => {
  const hub = await startHub();
  const proxy = new Proxy(hub.port);
  const port = await proxy.listen();
  cleanup.push(async () => proxy.close());
  const connect = JSON.stringify({
    token: jwt({ sub: "plain", exp: nowSecs() + 3600, channels: ["ticks"] }, SECRET),
  });
  const url = `http://127.0.0.1:${port}/connection/uni_sse?cf_connect=${encodeURIComponent(connect)}`;
  const source = new EventSource(url);
  cleanup.push(async () => source.close());
  const ticks = [];
  let connects = 0;
  source.onmessage = (e) => {
    const push = JSON.parse(e.data);
    if (push.connect) connects += 1;
    if (push.pub) ticks.push(push.pub.data.n);
  };
  await waitFor(() => connects === 1, "the connect push");
  for (const n of [1, 2]) await centPublish(hub, API_KEY, "ticks", { n });
  await waitFor(() => ticks.length === 2, "live ticks");

  proxy.cut();
  for (const n of [3, 4, 5]) await centPublish(hub, API_KEY, "ticks", { n });
  proxy.resume();
  await waitFor(() => connects === 2, "the EventSource reconnected by itself");
  await waitFor(() => ticks.length >= 5, "the missed ticks");
  await centPublish(hub, API_KEY, "ticks", { n: 6 });
  await waitFor(() => ticks.length >= 6, "live again");
  assert.deepEqual(ticks, [1, 2, 3, 4, 5, 6], "nothing lost, nothing repeated");
});
