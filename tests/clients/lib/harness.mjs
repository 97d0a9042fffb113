// Shared helpers for the client tests: run a tidings hub, cut connections
// with a proxy, mint tokens, wait for conditions.
import { spawn, execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHmac } from "node:crypto";
import net from "node:net";
import assert from "node:assert/strict";

export const BIN = process.env.TIDINGS_BIN ?? new URL("../../../target/debug/tidings", import.meta.url).pathname;

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export class Hub {
  constructor(port, env = {}) {
    this.port = port;
    this.dataDir = mkdtempSync(join(tmpdir(), "tidings-client-"));
    this.env = {
      ...process.env,
      TIDINGS_LISTEN: `127.0.0.1:${port}`,
      TIDINGS_DATA_DIR: this.dataDir,
      TIDINGS_LOG_LEVEL: "warn",
      ...env,
    };
  }
  url(path) {
    return `http://127.0.0.1:${this.port}${path}`;
  }
  async start() {
    this.proc = spawn(BIN, ["serve", ...(this.args ?? [])], { env: this.env, stdio: ["ignore", "pipe", "inherit"] });
    await new Promise((resolve, reject) => {
      this.proc.stdout.once("data", (d) => (String(d).includes("listening") ? resolve() : reject(new Error(String(d)))));
      this.proc.once("exit", (code) => reject(new Error(`hub exited with ${code}`)));
    });
  }
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    const exited = new Promise((resolve) => this.proc.once("exit", resolve));
    this.proc.kill("SIGTERM");
    assert.equal(await exited, 0, "hub did not exit cleanly");
  }
  cleanup() {
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

// A hub for the Centrifugo SDK tests: token key, API key, fast pings, and the
// shared `chat` namespace of tests/clients/tidings.toml.
export async function startCentrifugoHub(secret, apiKey, env = {}) {
  const hub = new Hub(await freePort(), {
    TIDINGS_CENTRIFUGO_TOKEN_KEY: secret,
    TIDINGS_CENTRIFUGO_API_KEY: apiKey,
    TIDINGS_CENTRIFUGO_PING_INTERVAL: "2s",
    ...env,
  });
  hub.args = ["--config", new URL("../tidings.toml", import.meta.url).pathname];
  await hub.start();
  return hub;
}

// Forwards connections; `cut()` drops them and refuses new ones until `resume()`.
// With `refuseWebSocket`, it behaves like a corporate proxy that passes HTTP
// but answers every WebSocket upgrade with 403.
export class Proxy {
  constructor(target, { refuseWebSocket = false } = {}) {
    this.open = true;
    this.sockets = new Set();
    this.refusedUpgrades = 0;
    this.server = net.createServer((client) => {
      if (!this.open) return client.destroy();
      if (refuseWebSocket) {
        client.once("data", (head) => {
          if (/^upgrade:\s*websocket/im.test(head.toString("latin1"))) {
            this.refusedUpgrades += 1;
            client.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
          }
          client.unshift(head);
          this.forward(client, target);
        });
        client.on("error", () => client.destroy());
        return;
      }
      this.forward(client, target);
    });
  }
  forward(client, target) {
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

export function waitFor(predicate, what, ms = 10000) {
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

// HS256 JWT.
export function jwt(claims, secret, typ = "JWT") {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export function nowSecs() {
  return Math.floor(Date.now() / 1000);
}

// Publishes through PyPI `cent` (the real backend SDK), run by the Python
// of the test virtual environment.
export async function centPublish(hub, apiKey, channel, data) {
  const python = process.env.TIDINGS_PYTHON ?? "python3";
  const script = [
    "import json, sys",
    "from cent import Client, PublishRequest",
    "c = Client(sys.argv[1], sys.argv[2])",
    "print(c.publish(PublishRequest(channel=sys.argv[3], data=json.loads(sys.argv[4]))).offset)",
  ].join("\n");
  const { stdout } = await promisify(execFile)(python, ["-c", script, hub.url("/api"), apiKey, channel, JSON.stringify(data)]);
  return Number(stdout.trim());
}
