// The demo page: a ticker over SSE, a chat over WebSocket, and a latency
// meter receiving the same ticker publications over both. Its state is on
// `window.demo` so the browser tests can read what a person would see.
import { CentrifugoClient } from "/assets/client.js";
import { LineChart, quantile } from "/assets/chart.js";

const TICKER = "demo:ticker";
const CHAT = "demo:chat";
const $ = (id) => document.getElementById(id);

function transportStats() {
  return { count: 0, last: 0, gaps: 0, repeats: 0, reconnects: 0, bytes: 0, latencies: [], since: Date.now() };
}

const demo = (window.demo = {
  sse: transportStats(),
  ws: transportStats(),
  ticks: 0,
  chat: { messages: [], presence: [] },
  user: new URLSearchParams(location.search).get("name") || `guest-${Math.random().toString(36).slice(2, 6)}`,
});

// Counts one ticker publication on a transport: missing and repeated
// sequence numbers are what a reconnect must never produce.
function track(stats, tick, replayed, bytes) {
  stats.count += 1;
  stats.bytes += bytes;
  if (stats.last && tick.seq <= stats.last) stats.repeats += 1;
  else if (stats.last && tick.seq > stats.last + 1) stats.gaps += tick.seq - stats.last - 1;
  stats.last = Math.max(stats.last, tick.seq);
  if (!replayed && tick.sent >= stats.since) {
    stats.latencies.push(Date.now() - tick.sent);
    if (stats.latencies.length > 2000) stats.latencies.shift();
  }
}

// ---- Ticker over SSE (Mercure) ----
let source;
let lastEventId = "";
function openTicker() {
  const url = new URL("/.well-known/mercure", location.origin);
  url.searchParams.append("match", TICKER);
  if (lastEventId) url.searchParams.append("last_event_id", lastEventId);
  demo.sse.since = Date.now();
  source = new EventSource(url);
  source.onopen = () => setStatus("sse-status", "connected", true);
  source.onerror = () => setStatus("sse-status", "reconnecting…", false);
  source.onmessage = (event) => {
    const tick = JSON.parse(event.data);
    const replayed = tick.sent < demo.sse.since;
    // The event as it crossed the wire: `id: …`, `data: …` and a blank line.
    const bytes = event.lastEventId.length + event.data.length + 13;
    lastEventId = event.lastEventId;
    track(demo.sse, tick, replayed, bytes);
    demo.ticks += 1;
    renderTicker(tick);
  };
}
$("drop-sse").onclick = () => {
  source.close();
  demo.sse.reconnects += 1;
  setStatus("sse-status", "dropped — reopening…", false);
  setTimeout(openTicker, 500);
};

const previous = new Map();
function renderTicker(tick) {
  const body = $("ticker").tBodies[0];
  body.replaceChildren(
    ...tick.quotes.map((q) => {
      const row = document.createElement("tr");
      const up = q.price >= (previous.get(q.symbol) ?? q.price);
      previous.set(q.symbol, q.price);
      row.className = up ? "up" : "down";
      row.innerHTML = `<th></th><td>${q.price.toFixed(2)}</td><td>${q.change >= 0 ? "▲" : "▼"} ${Math.abs(q.change).toFixed(2)}</td>`;
      row.firstChild.textContent = q.symbol;
      return row;
    }),
  );
}

function setStatus(id, text, ok) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("ok", ok);
}

// ---- Chat and the WebSocket half of the meter (Centrifugo) ----
async function startWebSocket() {
  const res = await fetch(`/demo/session?name=${encodeURIComponent(demo.user)}`);
  if (!res.ok) {
    setStatus("ws-status", "demo mode is off (start with `tidings serve --demo`)", false);
    return;
  }
  const { token } = await res.json();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new CentrifugoClient(`${scheme}://${location.host}/connection/websocket`, token);
  demo.client = client;
  client.addEventListener("connected", () => setStatus("ws-status", `connected as ${demo.user}`, true));
  client.addEventListener("disconnected", () => {
    demo.ws.reconnects += 1;
    setStatus("ws-status", "reconnecting…", false);
  });

  client.subscribe(TICKER, {
    // The push as it crossed the wire: the JSON reply and a 2- to 4-byte frame header.
    publication: (p, { replayed }) => {
      const size = JSON.stringify({ push: { channel: TICKER, pub: p } }).length;
      track(demo.ws, p.data, replayed, size + (size > 125 ? 4 : 2));
    },
    subscribed: () => (demo.ws.since = Date.now()),
  });

  let historyLoaded = false;
  client.subscribe(CHAT, {
    publication: (p) => addMessage(p),
    join: () => refreshPresence(client),
    leave: () => refreshPresence(client),
    subscribed: async () => {
      refreshPresence(client);
      if (historyLoaded) return;
      historyLoaded = true;
      for (const p of await client.history(CHAT, 20)) addMessage(p);
    },
  });
  client.connect();

  $("chat-input").placeholder = `Say something as ${demo.user}`;
  $("chat-form").onsubmit = async (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text) return;
    $("chat-input").value = "";
    await client.publish(CHAT, { text });
  };
  $("drop-ws").onclick = () => client.drop();
}

const seenMessages = new Set();
function addMessage(p) {
  const key = p.offset;
  if (seenMessages.has(key)) return;
  seenMessages.add(key);
  const user = p.info?.user || "server";
  const text = typeof p.data === "string" ? p.data : p.data?.text ?? JSON.stringify(p.data);
  demo.chat.messages.push({ user, text });
  const item = document.createElement("li");
  const who = document.createElement("b");
  who.textContent = user;
  item.append(who, ` ${text}`);
  $("messages").append(item);
  $("messages").scrollTop = $("messages").scrollHeight;
}

async function refreshPresence(client) {
  const clients = await client.presence(CHAT).catch(() => ({}));
  demo.chat.presence = [...new Set(Object.values(clients).map((c) => c.user))].sort();
  $("presence").textContent = demo.chat.presence.join(", ") || "nobody";
}

// ---- The meter ----
const chart = new LineChart(
  $("latency"),
  [
    { label: "SSE", color: "#1f6feb" },
    { label: "WebSocket", color: "#d9480f" },
  ],
  { unit: " ms" },
);
const shown = { sse: 0, ws: 0 };
setInterval(() => {
  for (const [i, name] of ["sse", "ws"].entries()) {
    const s = demo[name];
    for (const v of s.latencies.slice(shown[name])) chart.push(i, v);
    shown[name] = s.latencies.length;
    const row = $(`meter-${name}`);
    const fmt = (v) => (Number.isNaN(v) ? "–" : `${v} ms`);
    const values = {
      count: s.count,
      p50: fmt(quantile(s.latencies, 0.5)),
      p99: fmt(quantile(s.latencies, 0.99)),
      reconnects: s.reconnects,
      gaps: s.gaps,
      repeats: s.repeats,
      bytes: s.bytes.toLocaleString("en"),
    };
    for (const cell of row.querySelectorAll("td")) cell.textContent = values[cell.dataset.k];
  }
  chart.draw();
}, 500);

openTicker();
startWebSocket();
