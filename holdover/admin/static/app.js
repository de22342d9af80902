// holdover admin page: plain JavaScript, no build step, no external assets.
//
// The token is kept in sessionStorage (this tab only) and sent as
// "Authorization: Bearer <token>" on every call; never in a cookie.  Live data comes from
// GET /api/stream (Server-Sent Events read through fetch(), since EventSource cannot send
// headers); when the stream is down the page polls /api/stream?once=1 every 2 s.
"use strict";

const TOKEN_KEY = "holdover.token";
const PALETTE = ["#2563eb", "#e11d48", "#059669", "#d97706", "#7c3aed", "#0891b2",
                 "#db2777", "#65a30d"];
const STATE_ORDER = {active: 0, starting: 1, draining: 2, failed: 3, retired: 4};

// A link like /#token=... (as `holdover demo` prints) logs in once; the fragment never
// reaches the server and is removed from the address bar at once.
(function tokenFromFragment() {
  const m = /^#token=([A-Za-z0-9_\-]+)$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  snap: null,            // the last overview snapshot
  history: [],           // [{ts, by_revision}] sessions per revision over time
  events: new Map(),     // id -> event
  lastEvent: 0,
  colors: new Map(),     // revision id -> colour
  windowSec: 300,
  revKey: "",            // structure of the rendered revisions (rebuilt only on change)
  abort: null,           // AbortController of the running stream
  live: false,
  busy: new Set(),       // actions in progress
};

const $ = (id) => document.getElementById(id);

// -- small DOM helper: h("tag.cls", {attr: v}, child, ...) --------------------------------
function h(spec, attrs, ...kids) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag);
  if (classes.length) el.className = classes.join(" ");
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    // Through the CSSOM: the page's CSP has no 'unsafe-inline', so style="" is refused.
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

// -- formatting ---------------------------------------------------------------------------
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function fmtDuration(s) {
  if (!s) return "–";
  s = Math.floor(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function fmtTime(ts, withDate) {
  const d = new Date(ts * 1000);
  const t = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit",
                                     hour12: false});
  if (!withDate) return t;
  const today = new Date().toDateString() === d.toDateString();
  return today ? t : `${d.toLocaleDateString()} ${t}`;
}

function colorOf(rid) {
  if (!state.colors.has(rid)) state.colors.set(rid, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(rid);
}

// -- the API ------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

async function api(method, path, body, signal) {
  const headers = {Authorization: `Bearer ${state.token}`, Accept: "application/json"};
  const init = {method, headers, cache: "no-store", signal};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, {message: "the gateway does not answer (is it running?)"});
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401) {
    signOut("The token was refused: " + ((data && data.error && data.error.message) || ""));
    throw new ApiError(401, (data && data.error) || {});
  }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || {message: `HTTP ${resp.status}`});
  return data;
}

// -- notices ------------------------------------------------------------------------------
let noticeTimer = null;
function notify(kind, title, message, logTail) {
  const box = $("notice");
  clearTimeout(noticeTimer);
  if (kind === "ok") noticeTimer = setTimeout(() => { box.hidden = true; }, 8000);
  box.className = `notice ${kind}`;
  $("notice-title").textContent = title;
  $("notice-msg").textContent = message || "";
  const pre = $("notice-log");
  pre.hidden = !logTail;
  pre.textContent = logTail || "";
  box.hidden = false;
}

// -- actions ------------------------------------------------------------------------------
const CONFIRM = {
  retire: (a) => `Retire ${a.revision} now? Its remaining sessions end and are lost.`,
  "worker-restart": (a) => `Restart worker ${a.worker}? Its pinned sessions are lost.`,
};

function describe(command, result) {
  if (!result) return "done";
  if (command === "deploy") {
    return result.canary_percent
      ? `${result.revision} is the canary, ${result.canary_percent}% of new sessions`
      : `${result.revision} is active` + (result.previous ? `; ${result.previous} is draining` : "");
  }
  if (command === "rollback") {
    return result.aborted_canary ? `canary ${result.aborted_canary} aborted; ${result.revision} stays active`
      : `${result.revision} is active again` + (result.previous ? `; ${result.previous} is draining` : "");
  }
  if (command === "promote") return `${result.revision} is active` + (result.previous ? `; ${result.previous} is draining` : "");
  if (command === "retire") return `${result.revision} retired; ${result.sessions_ended} session(s) ended`;
  if (command === "drain") return `${result.revision} is ${result.state || "draining"}`;
  if (command.startsWith("worker-")) {
    return `worker ${result.worker}: ${result.action}` +
      (result.sessions_lost ? ` (${result.sessions_lost} session(s) lost)` : "");
  }
  return "done";
}

async function run(command, args, button) {
  const ask = CONFIRM[command];
  if (ask && !window.confirm(ask(args))) return;
  const key = command + JSON.stringify(args);
  if (state.busy.has(key)) return;
  state.busy.add(key);
  if (button) { button.disabled = true; button.classList.add("running"); }
  if (command === "deploy") notify("info", "Deploying…", "starting the new revision's workers and waiting until they are healthy");
  try {
    const result = await api("POST", `/api/${command}`, args);
    notify("ok", `${command}:`, describe(command, result));
    refreshOnce();
  } catch (e) {
    if (e.status === 401) return;
    notify("error", `${command} refused:`, e.message, e.error && e.error.log_tail);
  } finally {
    state.busy.delete(key);
    if (button) { button.disabled = false; button.classList.remove("running"); }
  }
}

// -- rendering: summary ------------------------------------------------------------------
function renderSummary(snap) {
  const st = snap.status;
  $("summary").hidden = false;
  $("sum-mode").textContent = st.mode;
  $("sum-active").textContent = st.active || "–";
  $("sum-canary-box").hidden = !st.canary;
  if (st.canary) {
    const rev = st.revisions.find((r) => r.id === st.canary);
    $("sum-canary").textContent = `${st.canary} (${rev ? rev.canary_percent : "?"}%)`;
  }
  $("sum-sessions").textContent = snap.sessions.total;
  $("sum-lost").textContent = snap.sessions.lost;
  $("sum-deploys").textContent = snap.deploys;
  $("sum-queue").textContent = snap.queue;
  const busy = $("sum-busy");
  busy.hidden = !st.deploying;
  busy.textContent = st.deploying ? `${st.deploying} in progress…` : "";
  $("promote").disabled = !st.canary;
}

// -- rendering: revisions and workers ----------------------------------------------------
function revLabel(rev, st) {
  if (rev.id === st.canary) return `canary ${rev.canary_percent}%`;
  return rev.state;
}

function revClass(rev, st) {
  return rev.id === st.canary ? "canary" : rev.state;
}

function workerButtons(w, st) {
  if (["stopped", "failed", "stopping"].includes(w.state)) return [];
  if (w.node && w.node !== st.node) return [];  // another node's: act on it there
  const b = (label, command, cls) => h(`button.small${cls ? "." + cls : ""}`,
    {type: "button", dataset: {command, worker: w.id}, title: `${command} ${w.id}`}, label);
  return [
    b("Restart", "worker-restart", "warn"),
    w.disabled ? b("Enable", "worker-enable") : b("Disable", "worker-disable"),
    w.standby ? b("Unstandby", "worker-unstandby") : b("Standby", "worker-standby"),
  ];
}

function revButtons(rev, st) {
  const out = [];
  const b = (label, command, cls) => h(`button.small${cls ? "." + cls : ""}`,
    {type: "button", dataset: {command, revision: rev.id}}, label);
  if (rev.id === st.canary) {
    out.push(h("button.small", {type: "button", dataset: {command: "promote"}}, "Promote"));
    out.push(b("Abort canary", "drain", "warn"));
  } else if (rev.state === "active") {
    out.push(b("Drain", "drain"));
  } else if (rev.state === "draining") {
    out.push(b("Retire now", "retire", "danger"));
  }
  return out;
}

function structureKey(st) {
  return JSON.stringify([st.active, st.canary, st.revisions.map((r) => [r.id, r.state,
    r.canary_percent, r.workers.map((w) => [w.id, w.node, w.state, w.pid, w.port, w.standby,
      w.disabled])])]);
}

// -- rendering: the nodes of a cluster ---------------------------------------------------
function renderNodes(snap) {
  const nodes = snap.status.nodes;
  $("nodes-card").hidden = !nodes;
  if (!nodes) return;
  $("nodes").replaceChildren(...nodes.map((n) => h(`tr.${n.ready ? "w-ready" : "w-starting"}`, {},
    h("td", {}, h("b", {}, n.name), n.this ? h("span.flag", {}, "this node") : null),
    h("td", {}, n.advertise || "–"),
    h("td.num", {}, n.this ? "–" : `${n.age}s ago`),
    h("td", {}, h(`span.wstate.${n.ready ? "ready" : "starting"}`, {}, n.ready ? "ready" : "not ready")),
    h("td.num", {}, n.sessions))));
}

function visibleRevisions(st) {
  return st.revisions
    .filter((r) => !["retired", "failed"].includes(r.state))
    .sort((a, b) => (STATE_ORDER[a.state] - STATE_ORDER[b.state]) || (b.created_at - a.created_at));
}

function renderRevisions(snap) {
  const st = snap.status;
  const key = structureKey(st);
  const box = $("revisions");
  if (key !== state.revKey) {
    state.revKey = key;
    box.replaceChildren(...visibleRevisions(st).map((rev) => buildRevision(rev, st)));
    const gone = st.revisions.filter((r) => ["retired", "failed"].includes(r.state));
    $("retired").replaceChildren(...(gone.length ? [h("span", {}, "Earlier revisions: "),
      ...gone.map((r) => h(`span.chip.${r.state}`, {title: r.command || ""}, `${r.id} · ${r.state}`))] : []));
  }
  // Numbers that change every second are updated in place, so buttons never move
  // under the pointer.
  for (const rev of st.revisions) {
    const el = box.querySelector(`[data-rev="${CSS.escape(rev.id)}"]`);
    if (!el) continue;
    el.querySelector(".rev-sessions").textContent = rev.sessions;
    rev.workers.forEach((w, i) => {
      const row = el.querySelector(`tr[data-index="${i}"]`);
      if (!row) return;
      const set = (cls, v) => { const c = row.querySelector(cls); if (c) c.textContent = v; };
      set(".w-uptime", fmtDuration(w.uptime));
      set(".w-restarts", w.restarts);
      set(".w-inflight", w.inflight);
      set(".w-sessions", w.sessions);
      set(".w-requests", w.requests === undefined ? "–" : w.requests);
      set(".w-mem", fmtBytes(w.rss));
      set(".w-cpu", w.cpu === null || w.cpu === undefined ? "–" : `${w.cpu}%`);
    });
  }
}

function buildRevision(rev, st) {
  const created = rev.created_at ? `created ${fmtTime(rev.created_at, true)}` : "";
  const head = h("div.rev-head", {},
    h("span.swatch", {style: {background: colorOf(rev.id)}}),
    h("h3", {}, rev.id),
    h(`span.badge.${revClass(rev, st)}`, {}, revLabel(rev, st)),
    h("span.rev-meta", {}, h("b.rev-sessions", {}, rev.sessions), " sessions"),
    h("span.rev-meta.muted", {title: rev.release_dir || ""}, created),
    h("code.rev-cmd", {title: rev.command}, rev.command),
    h("span.spacer"),
    ...revButtons(rev, st));
  const rows = rev.workers.map((w, i) => {
    const flags = [w.standby ? h("span.flag", {}, "standby") : null,
                   w.disabled ? h("span.flag.off", {}, "disabled") : null,
                   w.crash_loop ? h("span.flag.bad", {}, "crash loop") : null];
    return h(`tr.w-${w.state}`, {dataset: {index: String(i), worker: w.id}},
      h("td", {}, h("b", {}, w.id), ...flags),
      ...(st.nodes ? [h("td", {}, w.node || "")] : []),
      h("td.num", {}, w.pid || "–"),
      h("td.num", {}, w.port || "–"),
      h("td", {}, h(`span.wstate.${w.state}`, {}, w.state)),
      h("td.num.w-uptime", {}, fmtDuration(w.uptime)),
      h("td.num.w-restarts", {}, w.restarts),
      h("td.num.w-inflight", {}, w.inflight),
      h("td.num.w-sessions", {}, w.sessions),
      h("td.num.w-requests", {}, w.requests === undefined ? "–" : w.requests),
      h("td.num.w-mem", {}, fmtBytes(w.rss)),
      h("td.num.w-cpu", {}, w.cpu === null || w.cpu === undefined ? "–" : `${w.cpu}%`),
      h("td.acts", {}, ...workerButtons(w, st)));
  });
  const heads = ["worker", ...(st.nodes ? ["node"] : []), "pid", "port", "state", "uptime",
    "restarts", "in flight", "sessions", "requests", "memory", "CPU", ""];
  const plain = new Set(["worker", "node", "state", ""]);
  const table = h("table.workers", {},
    h("thead", {}, h("tr", {}, ...heads.map((t) => h(plain.has(t) ? "th" : "th.num", {}, t)))),
    h("tbody", {}, ...rows));
  return h(`div.rev.${revClass(rev, st)}`, {dataset: {rev: rev.id}}, head, table);
}

// -- rendering: the sessions chart -------------------------------------------------------
function addSample(ts, byRevision) {
  const hist = state.history;
  if (hist.length && ts <= hist[hist.length - 1].ts) return;
  hist.push({ts, by_revision: byRevision});
  const cutoff = ts - 3700;
  while (hist.length && hist[0].ts < cutoff) hist.shift();
}

function niceMax(v) {
  if (v <= 4) return 4;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function renderChart() {
  const box = $("chart");
  const W = Math.max(box.clientWidth, 300);
  const H = Math.max(box.clientHeight, 200);
  const pad = {l: 36, r: 56, t: 10, b: 24};
  const now = state.snap ? state.snap.ts : Date.now() / 1000;
  // The window, or less when the history is shorter (at least a minute).
  const first = state.history.length ? state.history[0].ts : now;
  const t0 = Math.min(Math.max(now - state.windowSec, first), now - 60);
  const span = now - t0;
  const pts = state.history.filter((p) => p.ts >= t0 - 10);
  const ids = [];
  const known = state.snap ? state.snap.status.revisions : [];
  for (const r of known) if (!["retired", "failed"].includes(r.state)) ids.push(r.id);
  for (const p of pts) for (const [rid, n] of Object.entries(p.by_revision)) {
    if (n > 0 && !ids.includes(rid)) ids.push(rid);
  }
  let max = 0;
  for (const p of pts) for (const rid of ids) max = Math.max(max, p.by_revision[rid] || 0);
  max = niceMax(max);
  const x = (ts) => pad.l + ((ts - t0) / span) * (W - pad.l - pad.r);
  const y = (v) => pad.t + (1 - v / max) * (H - pad.t - pad.b);
  const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                           "aria-label": "sessions per revision over time"});
  for (let i = 0; i <= 4; i++) {
    const v = (max / 4) * i;
    root.append(svg("line", {x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: "grid"}));
    const label = svg("text", {x: pad.l - 6, y: y(v) + 4, class: "axis", "text-anchor": "end"});
    label.textContent = Number.isInteger(v) ? v : v.toFixed(1);
    root.append(label);
  }
  const step = [10, 15, 30, 60, 120, 300, 600, 900].find((s) => span / s <= 7) || 1800;
  for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
    const label = svg("text", {x: x(t), y: H - 6, class: "axis", "text-anchor": "middle"});
    label.textContent = step < 60 ? fmtTime(t) : fmtTime(t).slice(0, 5);
    root.append(label);
    root.append(svg("line", {x1: x(t), x2: x(t), y1: H - pad.b, y2: H - pad.b + 4, class: "tick"}));
  }
  const clip = svg("clipPath", {id: "plot"});
  clip.append(svg("rect", {x: pad.l, y: 0, width: W - pad.l - pad.r, height: H}));
  root.append(clip);
  const legend = [];
  for (const rid of ids) {
    const color = colorOf(rid);
    const rev = known.find((r) => r.id === rid);
    const born = rev && rev.created_at ? rev.created_at - 5 : 0;  // no line before it existed
    const series = pts.filter((p) => p.ts >= born || p.by_revision[rid])
      .map((p) => [x(p.ts), y(p.by_revision[rid] || 0)]);
    const last = pts.length ? (pts[pts.length - 1].by_revision[rid] || 0) : 0;
    legend.push(h("span.item", {dataset: {series: rid}}, h("span.swatch", {style: {background: color}}),
      `${rid} `, h("b", {}, last)));
    if (!series.length) continue;
    // Session counts change in steps: hold each value until the next sample.
    const line = series.map(([a, b], i) => i ? `H${a.toFixed(1)}V${b.toFixed(1)}`
      : `M${a.toFixed(1)},${b.toFixed(1)}`).join("");
    const area = `${line}L${series[series.length - 1][0].toFixed(1)},${y(0)}L${series[0][0].toFixed(1)},${y(0)}Z`;
    root.append(svg("path", {d: area, fill: color, class: "area", "clip-path": "url(#plot)"}));
    root.append(svg("path", {d: line, stroke: color, class: "line", "clip-path": "url(#plot)",
                             "data-series": rid}));
    const [lx, ly] = series[series.length - 1];
    root.append(svg("circle", {cx: lx, cy: ly, r: 3, fill: color}));
    const tag = svg("text", {x: lx + 6, y: ly + 4, class: "value", fill: color});
    tag.textContent = `${rid} ${last}`;
    root.append(tag);
  }
  if (!ids.length || !pts.length) {
    const empty = svg("text", {x: W / 2, y: H / 2, class: "axis", "text-anchor": "middle"});
    empty.textContent = "no sessions yet";
    root.append(empty);
  }
  box.replaceChildren(root);
  $("legend").replaceChildren(...legend);
}

// -- rendering: events -------------------------------------------------------------------
function addEvents(events) {
  for (const e of events) {
    state.events.set(e.id, e);
    state.lastEvent = Math.max(state.lastEvent, e.id);
  }
  if (state.events.size > 300) {
    const ids = [...state.events.keys()].sort((a, b) => a - b);
    for (const id of ids.slice(0, ids.length - 300)) state.events.delete(id);
  }
}

let renderedEvents = -1;
function renderEvents() {
  if (renderedEvents === state.lastEvent) return;
  renderedEvents = state.lastEvent;
  const rows = [...state.events.values()].sort((a, b) => b.id - a.id).map((e) =>
    h("tr", {dataset: {kind: e.kind}},
      h("td.nowrap.muted", {title: new Date(e.ts * 1000).toISOString()}, fmtTime(e.ts, true)),
      h("td", {}, h(`span.kind.k-${e.kind.replace(/[^a-z-]/g, "")}`, {}, e.kind)),
      h("td", {}, e.revision || ""),
      h("td", {}, e.worker || ""),
      h("td.msg", {}, e.message)));
  $("events").replaceChildren(...(rows.length ? rows :
    [h("tr", {}, h("td.muted", {colspan: "5"}, "no events yet"))]));
}

// -- live data ---------------------------------------------------------------------------
function apply(snap) {
  state.snap = snap;
  for (const r of snap.status.revisions) colorOf(r.id);
  addSample(snap.ts, snap.sessions.by_revision);
  if (snap.events) addEvents(snap.events);
  renderSummary(snap);
  renderNodes(snap);
  renderRevisions(snap);
  renderChart();
  renderEvents();
}

function setLive(mode) {
  state.live = mode === "live";
  $("live-dot").className = `dot ${mode}`;
  $("live-text").textContent = {live: "live", polling: "polling every 2 s",
                                offline: "gateway unreachable", connecting: "connecting"}[mode];
}

async function refreshOnce() {
  try {
    apply(await api("GET", `/api/stream?once=1&after=${state.lastEvent}`));
    return true;
  } catch (e) {
    return false;
  }
}

async function readStream(signal) {
  const resp = await fetch(`/api/stream?after=${state.lastEvent}`, {
    headers: {Authorization: `Bearer ${state.token}`, Accept: "text/event-stream"},
    cache: "no-store", signal});
  if (resp.status === 401) { signOut("The token was refused."); return; }
  if (!resp.ok || !resp.body) throw new Error(`stream: HTTP ${resp.status}`);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      setLive("live");
      apply(JSON.parse(data));
    }
  }
}

async function liveLoop() {
  const ctl = new AbortController();
  state.abort = ctl;
  setLive("connecting");
  while (!ctl.signal.aborted) {
    try {
      await readStream(ctl.signal);
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    if (ctl.signal.aborted || !state.token) return;
    // The stream ended (gateway reload, network): poll every 2 s, then try it again.
    for (let i = 0; i < 3 && !ctl.signal.aborted; i++) {
      setLive((await refreshOnce()) ? "polling" : "offline");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

// -- sign in / out -----------------------------------------------------------------------
function signOut(message) {
  if (state.abort) state.abort.abort();
  state.abort = null;
  state.token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  $("app").hidden = true;
  $("summary").hidden = true;
  $("conn").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

async function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("conn").hidden = false;
  state.revKey = "";
  const [sessions, events] = await Promise.all([
    api("GET", "/api/sessions").catch(() => null),
    api("GET", "/api/events?limit=100").catch(() => null),
  ]);
  if (!state.token) return;
  if (sessions) for (const s of sessions.history) addSample(s.ts, s.by_revision);
  if (events) addEvents(events.events);
  await refreshOnce();
  liveLoop();
}

async function signIn(ev) {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  $("login-submit").disabled = true;
  $("login-error").textContent = "";
  state.token = token;
  try {
    await api("GET", "/api/status");
  } catch (e) {
    $("login-submit").disabled = false;
    if (e.status !== 401) {
      state.token = "";
      $("login-error").textContent = e.message;
    }
    return;
  }
  $("login-submit").disabled = false;
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
}

// -- wiring ------------------------------------------------------------------------------
function onClick(ev) {
  const btn = ev.target.closest("button[data-command], button[data-action]");
  if (!btn) return;
  const command = btn.dataset.command || btn.dataset.action;
  const args = {};
  if (btn.dataset.revision) args.revision = btn.dataset.revision;
  if (btn.dataset.worker) args.worker = btn.dataset.worker;
  run(command, args, btn);
}

function onDeploy(ev) {
  ev.preventDefault();
  const args = {};
  const revision = $("deploy-revision").value.trim();
  const from = $("deploy-from").value.trim();
  const canary = $("deploy-canary").value.trim();
  const workers = $("deploy-workers").value.trim();
  if (revision) args.revision = revision;
  if (from) args.from = from;
  if (canary) args.canary = Number(canary);
  if (workers) args.workers = Number.parseInt(workers, 10);
  run("deploy", args, $("deploy-submit")).then(() => {
    if ($("notice").classList.contains("ok")) $("deploy-form").reset();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => signOut(""));
  $("deploy-form").addEventListener("submit", onDeploy);
  $("notice-close").addEventListener("click", () => { $("notice").hidden = true; });
  document.querySelector("main").addEventListener("click", onClick);
  $("window").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-window]");
    if (!b) return;
    state.windowSec = Number(b.dataset.window);
    for (const x of $("window").children) x.classList.toggle("on", x === b);
    renderChart();
  });
  let resize = null;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(renderChart, 100);
  });
  if (state.token) start();
  else signOut("");
});
