// The real centrifuge-js SDK (npm `centrifuge`, with the `ws` package)
// against tidings: connect with a JWT, subscribe, receive publications, see
// join/leave and presence, lose the connection and recover the missed
// publications with `recovered: true`; a Mercure EventSource subscriber
// on the same channel sees the same publications in the same order; and
// with permessage-deflate on, `ws` negotiates it and both directions are
// compressed.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Centrifuge } from "centrifuge";
import { EventSource } from "eventsource";
import { Proxy, waitFor, jwt, nowSecs, centPublish, startCentrifugoHub } from "./lib/harness.mjs";

const SECRET = "centrifuge-js-test-secret";
const API_KEY = "centrifuge-js-test-api-key";

const startHub = () => startCentrifugoHub(SECRET, API_KEY);

async function api(hub, method, params) {
  const res = await fetch(hub.url(`/api/${method}`), {
    method: "POST",
    headers: { "X-API-Key": API_KEY, "Content-Type": "application/json" },
    body: JSON.stringify(params),
  });
  assert.equal(res.status, 200);
  const body = await res.json();
  assert.ok(!body.error, JSON.stringify(body.error));
  return body.result;
}

function client(url, user, extra = {}) {
  return new Centrifuge(url, {
    websocket: WebSocket,
    token: jwt({ sub: user, exp: nowSecs() + 3600, info: { name: user } }, SECRET),
    minReconnectDelay: 50,
    maxReconnectDelay: 200,
    ...extra,
  });
}

const hubs = [];
after(async () => {
  for (const h of hubs) {
    await h.stop().catch(() => {});
    h.cleanup();
  }
});

test("connect with a JWT, subscribe, publications, join/leave and presence", async () => {
  const hub = await startHub();
  hubs.push(hub);
  const url = `ws://127.0.0.1:${hub.port}/connection/websocket`;
  const alice = client(url, "alice");
  const connected = new Promise((resolve) => alice.once("connected", resolve));
  alice.connect();
  const ctx = await connected;
  assert.ok(ctx.client, "no client id");

  // Centrifugo v6 pushes joins and leaves to subscribers that ask.
  const sub = alice.newSubscription("chat:room", { joinLeave: true });
  const got = [];
  const joins = [];
  const leaves = [];
  sub.on("publication", (c) => got.push(c.data));
  sub.on("join", (c) => joins.push(c.info.user));
  sub.on("leave", (c) => leaves.push(c.info.user));
  const subscribed = new Promise((resolve) => sub.once("subscribed", resolve));
  sub.subscribe();
  await subscribed;

  assert.equal(await centPublish(hub, API_KEY, "chat:room", { text: "from the API" }), 1);
  await waitFor(() => got.length === 1, "the publication sent with cent");
  assert.deepEqual(got[0], { text: "from the API" });

  // A second client joins, publishes from the client side, then leaves.
  const bob = client(url, "bob");
  bob.connect();
  const bobSub = bob.newSubscription("chat:room");
  bobSub.subscribe();
  await bobSub.ready(5000);
  await waitFor(() => joins.includes("bob"), "bob's join");
  const presence = await sub.presence();
  const users = Object.values(presence.clients).map((c) => c.user).sort();
  assert.deepEqual(users, ["alice", "bob"]);
  const stats = await sub.presenceStats();
  assert.deepEqual([stats.numClients, stats.numUsers], [2, 2]);
  await bobSub.publish({ text: "hi from bob" });
  await waitFor(() => got.length === 2, "bob's publication");
  assert.deepEqual(got[1], { text: "hi from bob" });
  bob.disconnect();
  await waitFor(() => leaves.includes("bob"), "bob's leave");

  const history = await sub.history({ limit: 10 });
  assert.deepEqual(history.publications.map((p) => p.data.text), ["from the API", "hi from bob"]);
  alice.disconnect();
});

test("centrifuge-js refreshes its subscription token and stays subscribed past its expiry", async () => {
  const hub = await startCentrifugoHub(SECRET, API_KEY, {
    TIDINGS_CENTRIFUGO_EXPIRED_SUB_CLOSE_DELAY: "1s",
  });
  hubs.push(hub);
  const c = client(`ws://127.0.0.1:${hub.port}/connection/websocket`, "vera");
  let refreshes = 0;
  const sub = c.newSubscription("$vip", {
    // Each token lives 2 s: the hub ends the subscription 1 s after that
    // unless the SDK sends `sub_refresh` with the next one.
    getToken: async () => {
      refreshes += 1;
      return jwt({ sub: "vera", channel: "$vip", exp: nowSecs() + 2 }, SECRET);
    },
  });
  const states = [];
  const got = [];
  sub.on("state", (ctx) => states.push(ctx.newState));
  sub.on("unsubscribed", (ctx) => states.push(`unsubscribed ${ctx.code}`));
  sub.on("publication", (ctx) => got.push(ctx.data.n));
  c.connect();
  sub.subscribe();
  await waitFor(() => sub.state === "subscribed", "subscribed");
  await new Promise((r) => setTimeout(r, 6000));
  assert.ok(refreshes >= 3, `token fetched ${refreshes} times`);
  assert.deepEqual(states, ["subscribing", "subscribed"], "never dropped");
  await api(hub, "publish", { channel: "$vip", data: { n: 1 } });
  await waitFor(() => got.length === 1, "a publication after the first token expired");
  c.disconnect();
});

test("a dropped connection recovers the missed publications", async () => {
  const hub = await startHub();
  hubs.push(hub);
  const proxy = new Proxy(hub.port);
  const port = await proxy.listen();
  const c = client(`ws://127.0.0.1:${port}/connection/websocket`, "carol");
  const sub = c.newSubscription("chat:recover");
  const got = [];
  const subscribedEvents = [];
  sub.on("publication", (ctx) => got.push(ctx.data.n));
  sub.on("subscribed", (ctx) => subscribedEvents.push(ctx));
  c.connect();
  sub.subscribe();
  await waitFor(() => subscribedEvents.length === 1, "first subscribe");
  for (let n = 1; n <= 3; n++) await api(hub, "publish", { channel: "chat:recover", data: { n } });
  await waitFor(() => got.length === 3, "live publications");

  proxy.cut();
  for (let n = 4; n <= 8; n++) await api(hub, "publish", { channel: "chat:recover", data: { n } });
  proxy.resume();
  await waitFor(() => subscribedEvents.length === 2, "resubscribe after reconnect");
  await waitFor(() => got.length === 8, "recovered publications");
  const again = subscribedEvents[1];
  assert.equal(again.wasRecovering, true);
  assert.equal(again.recovered, true);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8]);
  c.disconnect();
  proxy.close();
});

test("Mercure and Centrifugo subscribers see the same publications in the same order", async () => {
  const hub = await startHub();
  hubs.push(hub);
  const c = client(`ws://127.0.0.1:${hub.port}/connection/websocket`, "dave");
  const sub = c.newSubscription("chat:shared");
  const viaWs = [];
  sub.on("publication", (ctx) => viaWs.push(JSON.stringify(ctx.data)));
  c.connect();
  sub.subscribe();
  await sub.ready(5000);

  const url = new URL(hub.url("/.well-known/mercure"));
  url.searchParams.append("match", "chat:shared");
  const es = new EventSource(url);
  const viaSse = [];
  es.onmessage = (e) => viaSse.push(e.data);
  await new Promise((resolve) => (es.onopen = resolve));

  const mercureToken = jwt(
    {
      iss: "tidings",
      aud: hub.url("/.well-known/mercure"),
      exp: nowSecs() + 60,
      authorization_details: [{ type: "https://mercure.rocks/authorization-detail", actions: ["publish"], topics: [{ match: "*" }] }],
    },
    "!ChangeThisMercureHubJWTSecretKey!",
    "at+jwt",
  );
  const expected = [];
  for (let i = 0; i < 6; i++) {
    const data = JSON.stringify({ i });
    expected.push(data);
    if (i % 2 === 0) {
      const res = await fetch(hub.url("/.well-known/mercure"), {
        method: "POST",
        headers: { Authorization: `Bearer ${mercureToken}`, "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ topic: "chat:shared", data }),
      });
      assert.equal(res.status, 200);
    } else {
      await api(hub, "publish", { channel: "chat:shared", data: { i } });
    }
  }
  await waitFor(() => viaWs.length === 6 && viaSse.length === 6, "both subscribers");
  assert.deepEqual(viaWs, expected);
  assert.deepEqual(viaSse, expected);
  es.close();
  c.disconnect();
});

test("the protobuf build of centrifuge-js: binary frames, payloads unchanged", async () => {
  const { Centrifuge: ProtobufCentrifuge } = await import("centrifuge/build/protobuf");
  const hub = await startHub();
  hubs.push(hub);
  const c = new ProtobufCentrifuge(`ws://127.0.0.1:${hub.port}/connection/websocket`, {
    websocket: WebSocket,
    token: jwt({ sub: "erin", exp: nowSecs() + 3600 }, SECRET),
  });
  const sub = c.newSubscription("chat:binary");
  const got = [];
  sub.on("publication", (ctx) => got.push(Buffer.from(ctx.data).toString()));
  c.connect();
  sub.subscribe();
  await sub.ready(5000);
  await api(hub, "publish", { channel: "chat:binary", data: { via: "api" } });
  // A binary payload published by a protobuf client reaches it byte for byte.
  await sub.publish(new TextEncoder().encode("raw bytes \u00e9"));
  await waitFor(() => got.length === 2, "protobuf publications");
  assert.deepEqual(got, ['{"via":"api"}', "raw bytes \u00e9"]);
  const history = await sub.history({ limit: 5 });
  assert.equal(history.publications.length, 2);
  c.disconnect();
});

test("permessage-deflate: ws negotiates it, every message compressed both ways (JSON and Protobuf)", async () => {
  const { Centrifuge: ProtobufCentrifuge } = await import("centrifuge/build/protobuf");
  const hub = await startCentrifugoHub(SECRET, API_KEY, { TIDINGS_CENTRIFUGO_WEBSOCKET_COMPRESSION: "true" });
  hubs.push(hub);
  // `ws` compresses messages of 1 KiB and more by default: threshold 0
  // makes the SDK's every command a compressed one.
  const sockets = [];
  class CompressingWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { perMessageDeflate: { threshold: 0 } });
      sockets.push(this);
    }
  }
  const url = `ws://127.0.0.1:${hub.port}/connection/websocket`;
  for (const [Sdk, decode] of [
    [Centrifuge, (d) => d],
    [ProtobufCentrifuge, (d) => JSON.parse(Buffer.from(d).toString())],
  ]) {
    const c = new Sdk(url, {
      websocket: CompressingWebSocket,
      token: jwt({ sub: "zip", exp: nowSecs() + 3600 }, SECRET),
    });
    const sub = c.newSubscription("chat:zipped");
    const got = [];
    sub.on("publication", (ctx) => got.push(decode(ctx.data)));
    c.connect();
    sub.subscribe();
    await sub.ready(5000);
    const socket = sockets.at(-1);
    assert.match(socket.extensions, /permessage-deflate/);
    const long = "compressible ".repeat(50);
    await api(hub, "publish", { channel: "chat:zipped", data: { via: "api", long } });
    const mine = { via: "client", long };
    await sub.publish(Sdk === Centrifuge ? mine : new TextEncoder().encode(JSON.stringify(mine)));
    await waitFor(() => got.length === 2, "compressed publications");
    assert.deepEqual(got, [{ via: "api", long }, mine]);
    // Fewer bytes came in than the two publications hold.
    assert.ok(socket._socket.bytesRead < 2 * long.length, `${socket._socket.bytesRead} bytes read`);
    const history = await sub.history({ limit: 5 });
    assert.equal(history.publications.length, got.length);
    c.disconnect();
    got.length = 0;
    await api(hub, "history_remove", { channel: "chat:zipped" });
  }
});
