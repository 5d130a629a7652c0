// Live dashboard of the push server: one WebSocket (docs/push-protocol.md), three channels,
// two uPlot charts and an alert feed. No build step and no framework: the page is small, and
// every dependency is served by the push server itself (uPlot is vendored by `make install`).
//
// State is kept per window key with the newest pane only (a pane replaces an earlier one, never
// adds to it), so replays, Postgres recovery and late duplicates can never double-count.

const CHANNELS = { fixed: "aggregates.fixed", sliding: "aggregates.sliding", alerts: "alerts" };
const MAX_WINDOWS = 240;      // distinct window ends kept per chart
const MAX_SERIES = 5;         // busiest keys drawn per chart
const MAX_ALERTS = 100;
const PING_EVERY_MS = 25000;
const COLORS = ["#4cc2ff", "#ffb74d", "#3ddc84", "#ff6b9d", "#b39ddb"];

const $ = (id) => document.getElementById(id);

class WindowState {
  /** Newest pane per window key of one aggregate kind, and the chart that shows them. */
  constructor(kind) {
    this.kind = kind;
    this.windows = new Map();          // window key -> payload (newest pane)
    this.panes = new Map();            // window key -> that pane's revision (the entry's pane)
    this.dimensions = new Set();
    this.updates = 0;
    this.chart = null;
    this.chartKeys = "";
    this.select = $(`dimension-${kind}`);
    this.select.addEventListener("change", () => this.draw(true));
  }

  apply(pub) {
    const old = this.panes.get(pub.key);
    if (old !== undefined && old >= pub.pane) return false;   // stale or repeated pane (revision)
    this.panes.set(pub.key, pub.pane);
    this.windows.set(pub.key, pub.data);
    this.updates += 1;
    if (!this.dimensions.has(pub.data.dimension)) {
      this.dimensions.add(pub.data.dimension);
      const option = document.createElement("option");
      option.value = option.textContent = pub.data.dimension;
      this.select.append(option);
    }
    this.prune();
    return true;
  }

  prune() {
    if (this.windows.size <= MAX_WINDOWS * 20) return;
    const ends = [...new Set([...this.windows.values()].map((w) => w.window_end_ms))].sort((a, b) => a - b);
    const cutoff = ends[Math.max(0, ends.length - MAX_WINDOWS)];
    for (const [key, w] of this.windows) {
      if (w.window_end_ms < cutoff) {
        this.windows.delete(key);
        this.panes.delete(key);
      }
    }
  }

  series() {
    const dimension = this.select.value;
    const rows = [...this.windows.values()].filter((w) => w.dimension === dimension);
    const totals = new Map();
    for (const w of rows) totals.set(w.key, (totals.get(w.key) || 0) + w.count);
    const keys = [...totals.entries()].sort((a, b) => b[1] - a[1]).slice(0, MAX_SERIES).map((e) => e[0]).sort();
    const xs = [...new Set(rows.map((w) => w.window_end_ms))].sort((a, b) => a - b).slice(-MAX_WINDOWS);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = keys.map(() => xs.map(() => null));
    for (const w of rows) {
      const k = keys.indexOf(w.key), i = index.get(w.window_end_ms);
      if (k >= 0 && i !== undefined) ys[k][i] = w.count;
    }
    return { keys, data: [xs.map((x) => x / 1000), ...ys] };
  }

  draw(force = false) {
    const box = $(`chart-${this.kind}`);
    $(`${this.kind}-count`).textContent = String(this.updates);
    if (!window.uPlot) return;
    const { keys, data } = this.series();
    const signature = keys.join("\u0000");
    if (!this.chart || force || signature !== this.chartKeys) {
      if (this.chart) this.chart.destroy();
      this.chartKeys = signature;
      this.chart = new window.uPlot({
        width: Math.max(320, box.clientWidth || 560), height: 240,
        scales: { x: { time: true } },
        axes: [{ stroke: "#8a94a3", grid: { stroke: "#242c36" } },
               { stroke: "#8a94a3", grid: { stroke: "#242c36" }, label: "events / window" }],
        series: [{}, ...keys.map((k, i) => ({ label: k, stroke: COLORS[i % COLORS.length], width: 2,
                                             points: { show: true, size: 4 }, spanGaps: true }))],
      }, data, box);
    } else {
      this.chart.setData(data);
    }
    box.dataset.points = String(data[0].length);
    box.dataset.series = String(keys.length);
  }
}

class AlertFeed {
  constructor() { this.count = 0; this.seen = new Set(); this.list = $("alert-feed"); }

  apply(pub) {
    const a = pub.data;
    if (this.seen.has(a.alert_id)) return false;       // replays may repeat an alert
    this.seen.add(a.alert_id);
    this.count += 1;
    const li = document.createElement("li");
    li.dataset.alertId = a.alert_id;
    const cells = [["score", Number(a.score).toFixed(3)], ["model", a.model_version], ["user", a.user_id],
                   ["event", a.event_id], ["time", new Date(a.event_time_ms).toLocaleTimeString()]];
    for (const [cls, text] of cells) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;           // never innerHTML: payloads are data, not markup
      li.append(span);
    }
    this.list.prepend(li);
    while (this.list.children.length > MAX_ALERTS) this.list.lastElementChild.remove();
    $("alerts-count").textContent = String(this.count);
    return true;
  }
}

class PushClient {
  /** One connection with reconnect-and-recover: it resubscribes with the last offset per channel. */
  constructor(onPub) {
    this.onPub = onPub;
    this.offsets = {};
    this.ws = null;
    this.token = "";
    this.nextId = 1;
    this.attempt = 0;
    this.timer = null;
    this.subscribed = new Set();
  }

  start(token) {
    this.token = token;
    this.attempt = 0;
    if (this.ws) this.ws.close(1000);
    this.open();
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    this.ws = ws;
    status("connecting");
    this.subscribed.clear();
    ws.onopen = () => this.send({ type: "connect", id: this.nextId++, token: this.token });
    ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    ws.onclose = (event) => this.closed(ws, event);
  }

  send(doc) { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(doc)); }

  receive(msg) {
    switch (msg.type) {
      case "connected":
        this.attempt = 0;
        status("live", `live as ${msg.user}`);
        for (const channel of Object.values(CHANNELS)) {
          if (!msg.channels.includes(channel)) continue;
          const since = this.offsets[channel];
          this.send({ type: "subscribe", id: this.nextId++, channel, ...(since ? { since } : {}) });
        }
        clearInterval(this.timer);
        this.timer = setInterval(() => this.send({ type: "ping" }), PING_EVERY_MS);
        break;
      case "subscribed":
        if (!this.offsets[msg.channel] && msg.offset) this.offsets[msg.channel] = msg.offset;
        this.subscribed.add(msg.channel);
        document.body.dataset.subscriptions = String(this.subscribed.size);
        if (msg.recovered === false) notice(`${msg.channel}: some updates were lost while disconnected`);
        break;
      case "pub":
        if (msg.source !== "postgres") this.offsets[msg.channel] = msg.offset;
        this.onPub(msg);
        setText(`${shortName(msg.channel)}-offset`, this.offsets[msg.channel] || msg.offset);
        break;
      case "error":
        notice(`${msg.code}: ${msg.message}`);
        break;
      default:
        break;   // pong and future message types
    }
  }

  closed(ws, event) {
    if (ws !== this.ws) return;
    clearInterval(this.timer);
    const fatal = event.code >= 4500 && event.code <= 4999;
    if (fatal || event.code === 4002) {
      status("closed", `closed: ${event.code} ${event.reason || ""}`.trim());
      notice(event.code === 4002 ? "token expired: paste a new one" : `server refused: ${event.reason}`);
      return;
    }
    const delay = Math.min(30000, 500 * 2 ** this.attempt++) * (0.5 + Math.random() / 2);
    status("connecting", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
    setTimeout(() => this.open(), delay);
  }
}

function shortName(channel) { return channel === CHANNELS.alerts ? "alerts" : channel.split(".")[1]; }
function setText(id, text) { const el = $(id); if (el) el.textContent = text; }
function status(state, text) { const el = $("status"); el.dataset.state = state; el.textContent = text || state; }
function notice(text) { const el = $("notice"); el.textContent = text; el.hidden = false; }

function main() {
  const charts = { [CHANNELS.fixed]: new WindowState("fixed"), [CHANNELS.sliding]: new WindowState("sliding") };
  const alerts = new AlertFeed();
  const dirty = new Set();
  if (!window.uPlot) notice("chart library missing: run `make install` (it vendors uPlot from npm)");

  const client = new PushClient((pub) => {
    const chart = charts[pub.channel];
    if (chart) { if (chart.apply(pub)) dirty.add(chart); } else if (pub.channel === CHANNELS.alerts) alerts.apply(pub);
  });
  // Redraw at most four times a second, however fast updates arrive.
  setInterval(() => { for (const chart of dirty) chart.draw(); dirty.clear(); }, 250);

  const input = $("token");
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("sa-token", input.value.trim());
    client.start(input.value.trim());
  });
  // Dev convenience: /dashboard/#token=<jwt>. A fragment never reaches the server or its logs.
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) history.replaceState(null, "", location.pathname);
  const token = fromHash || sessionStorage.getItem("sa-token");
  if (token) { input.value = token; client.start(token); }
}

main();
