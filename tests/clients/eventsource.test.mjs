// The real npm `eventsource` client against tidings: subscribe, receive,
// lose the connection, reconnect with its own Last-Event-ID and get exactly
// the missed updates, in order, none twice — also across a hub restart
// (durable history on disk).
//
// A small TCP proxy sits between the client and the hub so the test can cut
// the client's connection (and refuse its reconnects) while publishing
// directly to the hub.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { EventSource } from "eventsource";
import { BIN, Hub, Proxy, freePort, waitFor } from "./lib/harness.mjs";

const run = promisify(execFile);

async function publish(hub, topic, data) {
  const { stdout } = await run(BIN, ["publish", "--topic", topic, "--data", data], { env: hub.env });
  return stdout.trim();
}

test("eventsource recovers every missed update, in order, across drops and a hub restart", async () => {
  const port = await freePort();
  const hub = new Hub(port, { TIDINGS_MERCURE_KEY: "node-client-test-key", TIDINGS_MERCURE_SSE_RETRY: "100" });
  await hub.start();
  const proxy = new Proxy(port);
  const proxyPort = await proxy.listen();

  const received = [];
  const ids = [];
  let opens = 0;
  const url = new URL(`http://127.0.0.1:${proxyPort}/.well-known/mercure`);
  url.searchParams.append("match", "https://example.com/ticker");
  const es = new EventSource(url);
  es.onopen = () => opens++;
  es.onmessage = (e) => {
    received.push(e.data);
    ids.push(e.lastEventId);
  };
  try {
    await waitFor(() => opens === 1, "the first open");
    const published = [];
    const pub = async (n) => {
      published.push(String(n));
      return publish(hub, "https://example.com/ticker", String(n));
    };

    for (let i = 1; i <= 3; i++) await pub(i);
    await publish(hub, "https://example.com/other", "not for us");
    await waitFor(() => received.length === 3, "live updates");

    // Drop the connection; publish while the client is cut off.
    proxy.cut();
    for (let i = 4; i <= 6; i++) await pub(i);
    proxy.resume();
    await waitFor(() => received.length === 6, "replay after a dropped connection");
    assert.ok(opens >= 2, "the client never reconnected");

    // Restart the hub while the client is cut off; publish to the new process.
    proxy.cut();
    await hub.stop();
    await hub.start();
    for (let i = 7; i <= 9; i++) await pub(i);
    proxy.resume();
    await waitFor(() => received.length === 9, "replay across a hub restart");
    await pub(10);
    await waitFor(() => received.length === 10, "live after the restart");
    await new Promise((r) => setTimeout(r, 300));

    assert.deepEqual(received, published, "lost, repeated or reordered updates");
    assert.equal(new Set(ids).size, ids.length, "an id was delivered twice");
    assert.ok(opens >= 3);
  } finally {
    es.close();
    proxy.close();
    await hub.stop().catch(() => {});
    hub.cleanup();
  }
});
