// The admin dashboard: reads /metrics (what Prometheus reads) and calls
// /admin/api/<method> — the Centrifugo server API methods behind the admin
// password. Its state is on `window.admin` for the browser tests.
import { LineChart } from "/assets/chart.js";

const $ = (id) => document.getElementById(id);
const admin = (window.admin = { signedIn: false, refreshes: 0, connections: {}, channels: [], presence: [], events: [] });
let authorization = "";

async function api(method, params = {}) {
  const res = await fetch(`/admin/api/${method}`, {
    method: "POST",
    headers: { Authorization: authorization, "Content-Type": "application/json" },
    body: JSON.stringify(params),
  });
  if (res.status === 401) throw new Error("wrong password");
  if (!res.ok) throw new Error(`${res.status} ${await res.text()}`);
  const body = await res.json();
  if (body.error) throw new Error(`${body.error.code} ${body.error.message}`);
  return body.result;
}

$("login").onsubmit = async (event) => {
  event.preventDefault();
  authorization = `Basic ${btoa(`admin:${$("password").value}`)}`;
  try {
    await api("info");
  } catch (error) {
    $("login-error").textContent = error.message;
    return;
  }
  admin.signedIn = true;
  $("login").classList.add("hidden");
  $("dashboard").classList.remove("hidden");
  refresh();
  setInterval(refresh, 1000);
};

// Prometheus text → [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-z_]+)(?:\{(.*)\})? ([-+0-9.eE]+|NaN)$/);
    if (!m) continue;
    const labels = Object.fromEntries([...(m[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

const rates = new LineChart(
  $("rates"),
  [
    { label: "publications/s", color: "#1f6feb" },
    { label: "deliveries/s", color: "#1a7f37" },
  ],
  { points: 90 },
);
let previous = null;

async function refresh() {
  const samples = parseMetrics(await (await fetch("/metrics")).text());
  const total = (name) => samples.filter((s) => s.name === name).reduce((a, s) => a + s.value, 0);
  admin.connections = {};
  for (const s of samples.filter((s) => s.name === "tidings_connections")) {
    admin.connections[`${s.labels.protocol} ${s.labels.transport}`] = s.value;
  }
  $("connections").replaceChildren(
    ...Object.entries(admin.connections).map(([name, n]) => {
      const el = document.createElement("div");
      el.className = "stat";
      el.innerHTML = `<b>${n}</b><span></span>`;
      el.lastChild.textContent = name;
      return el;
    }),
  );
  const now = { t: Date.now(), pubs: total("tidings_publications_total"), deliveries: total("tidings_deliveries_total") };
  if (previous) {
    const seconds = (now.t - previous.t) / 1000;
    rates.push(0, (now.pubs - previous.pubs) / seconds);
    rates.push(1, (now.deliveries - previous.deliveries) / seconds);
  }
  rates.draw();
  previous = now;

  const { channels } = await api("channels");
  admin.channels = Object.entries(channels).map(([name, c]) => ({ name, subscribers: c.num_clients }));
  $("channels").tBodies[0].replaceChildren(
    ...admin.channels.map((c) => row([c.name, c.subscribers], "presence", () => showPresence(c.name))),
  );
  if (selected) await showPresence(selected);

  admin.events = (await api("recent")).events;
  $("events-list").replaceChildren(
    ...admin.events.slice(0, 30).map((e) => {
      const li = document.createElement("li");
      li.textContent = `${new Date(e.time_ms).toLocaleTimeString()} ${e.kind}: ${e.detail}`;
      return li;
    }),
  );
  admin.refreshes += 1;
}

function row(cells, action, onClick) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  const td = document.createElement("td");
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = action;
  button.onclick = onClick;
  td.append(button);
  tr.append(td);
  return tr;
}

let selected = "";
async function showPresence(channel) {
  selected = channel;
  $("presence-channel").textContent = channel;
  let clients = {};
  try {
    clients = (await api("presence", { channel })).presence;
  } catch {
    // a channel without presence (say, a Mercure topic)
  }
  admin.presence = Object.values(clients).map((c) => ({ user: c.user, client: c.client }));
  $("presence").tBodies[0].replaceChildren(
    ...admin.presence.map((c) =>
      row([c.user, c.client.slice(0, 8)], "disconnect", async () => {
        await api("disconnect", { user: c.user, client: c.client });
        showPresence(channel);
      }),
    ),
  );
}

$("publish-form").onsubmit = async (event) => {
  event.preventDefault();
  const text = $("publish-data").value;
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = text;
  }
  try {
    const r = await api("publish", { channel: $("publish-channel").value, data });
    $("publish-result").textContent = `published at offset ${r.offset}`;
  } catch (error) {
    $("publish-result").textContent = error.message;
  }
};

$("history-form").onsubmit = async (event) => {
  event.preventDefault();
  try {
    await api("history_remove", { channel: $("history-channel").value });
    $("history-result").textContent = "removed";
  } catch (error) {
    $("history-result").textContent = error.message;
  }
};
