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
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";
import { promisify } from "node:util";
import { EventSource } from "eventsource";

const BIN = process.env.TIDINGS_BIN ?? new URL("../../target/debug/tidings", import.meta.url).pathname;
const run = promisify(execFile);

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

class Hub {
  constructor(port, dataDir) {
    this.env = {
      ...process.env,
      TIDINGS_LISTEN: `127.0.0.1:${port}`,
      TIDINGS_DATA_DIR: dataDir,
      TIDINGS_MERCURE_KEY: "node-client-test-key",
      TIDINGS_MERCURE_SSE_RETRY: "100",
      TIDINGS_LOG_LEVEL: "warn",
    };
  }
  async start() {
    this.proc = spawn(BIN, ["serve"], { env: this.env, stdio: ["ignore", "pipe", "inherit"] });
    await new Promise((resolve, reject) => {
      this.proc.stdout.once("data", (d) => (String(d).includes("listening") ? resolve() : reject(new Error(String(d)))));
      this.proc.once("exit", (code) => reject(new Error(`hub exited with ${code}`)));
    });
  }
  async stop() {
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.proc.kill("SIGTERM");
    assert.equal(await exited, 0, "hub did not exit cleanly");
  }
  async publish(topic, data) {
    const { stdout } = await run(BIN, ["publish", "--topic", topic, "--data", data], { env: this.env });
    return stdout.trim();
  }
}

// Forwards connections to the hub; `cut()` drops them and refuses new ones
// until `resume()`.
class Proxy {
  constructor(target) {
    this.target = target;
    this.open = true;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      if (!this.open) return client.destroy();
      const upstream = net.connect(target, "127.0.0.1");
      this.sockets.add(client).add(upstream);
      client.pipe(upstream).pipe(client);
      const done = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on("error", done).on("close", done);
      upstream.on("error", done).on("close", done);
    });
  }
  listen() {
    return new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => resolve(this.server.address().port)));
  }
  cut() {
    this.open = false;
    for (const s of this.sockets) s.destroy();
  }
  resume() {
    this.open = true;
  }
  close() {
    this.cut();
    this.server.close();
  }
}

function waitFor(predicate, what, ms = 10000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, 20);
    };
    tick();
  });
}

test("eventsource recovers every missed update, in order, across drops and a hub restart", async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "tidings-es-"));
  const port = await freePort();
  const hub = new Hub(port, dataDir);
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
      return hub.publish("https://example.com/ticker", String(n));
    };

    for (let i = 1; i <= 3; i++) await pub(i);
    await hub.publish("https://example.com/other", "not for us");
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
    rmSync(dataDir, { recursive: true, force: true });
  }
});
