// hlsfarm status page: renders /api/status and a sweep's trials, kept live by the
// coordinator's server-sent events (/api/events). No framework, no network beyond the
// coordinator. Text from the cluster is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  status: null,
  selected: new URLSearchParams(location.search).get("sweep") || "",
  trials: [],
  sortKey: "state",
  sortDir: 1,
  token: sessionStorage.getItem("hlsfarm-token") || "",
  operator: false,
  events: [],
  trialsTimer: null,
  searchColumns: [],
  plotVersion: "",
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function short(key) { return key ? key.slice(0, 12) : ""; }
// What the estimates predicted for a trial, for its seconds cell's tooltip.
function predicted(t) {
  if (t.predicted_seconds === null || t.predicted_seconds === undefined) return "";
  const memory = t.predicted_memory_mib === null || t.predicted_memory_mib === undefined ? "" : `, peak ${t.predicted_memory_mib} MiB`;
  return `predicted ${t.predicted_seconds.toFixed(1)} s${memory}`;
}

function num(v, digits) {
  if (v === null || v === undefined) return "";
  return digits === undefined ? String(v) : Number(v).toFixed(digits);
}
function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}
// A sweep's ETA, with its spread where the learned estimates gave one.
function eta(s) {
  if (s.eta_seconds === null || s.eta_seconds === undefined) return "…";
  const sd = s.eta_sd_seconds;
  return sd !== null && sd !== undefined && sd >= 1 ? `${duration(s.eta_seconds)} ± ${duration(sd)}` : duration(s.eta_seconds);
}
// How long a running trial has run, against its prediction.
function elapsed(t) {
  if (t.seconds === null || t.seconds === undefined) return "";
  const of = t.predicted_seconds === null || t.predicted_seconds === undefined ? "" : ` of ~${duration(t.predicted_seconds)}`;
  return `, ${duration(t.seconds)}${of}`;
}
function when(ms) { return ms ? new Date(ms).toLocaleString() : ""; }
function count(s, k) { return s.counts[k] || 0; }

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const r = await fetch(path, Object.assign({}, options, { headers }));
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

async function act(what, path, body) {
  try {
    const r = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    say(`${what}: ${JSON.stringify(r)}`);
  } catch (e) {
    say(`${what} failed: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------- sweeps

function progressBar(s) {
  const total = Object.values(s.counts).reduce((a, b) => a + b, 0) || 1;
  const ok = count(s, "succeeded") + count(s, "reused");
  const bad = count(s, "failed") + count(s, "dead") + count(s, "cancelled");
  const run = count(s, "leased");
  const bar = el("div", { class: "bar", title: `${ok} ok, ${bad} failed, ${run} running of ${total}` });
  let left = 0;
  for (const [cls, n] of [["ok", ok], ["bad", bad], ["run", run]]) {
    const w = (100 * n) / total;
    const span = el("span", { class: cls });
    span.style.left = `${left}%`;
    span.style.width = `${w}%`;
    bar.append(span);
    left += w;
  }
  const pct = Math.round((100 * (ok + bad)) / total);
  return el("div", {}, bar, el("small", { class: "muted" }, `${ok + bad} / ${total} (${pct}%)`));
}

function renderSweeps(status) {
  const body = $("sweeps").tBodies[0];
  body.replaceChildren();
  const sweeps = [...status.sweeps].sort((a, b) => b.submitted_unix_ms - a.submitted_unix_ms);
  $("no-sweeps").hidden = sweeps.length > 0;
  for (const s of sweeps) {
    const unfinished = count(s, "queued") + count(s, "leased");
    const failed = count(s, "failed") + count(s, "dead");
    const buttons = el("td", {});
    if (state.operator) {
      if (unfinished > 0) {
        buttons.append(el("button", { onclick: (e) => { e.stopPropagation(); act("cancel", `/api/sweeps/${s.id}/cancel`); } }, "Cancel"));
      }
      if (failed + count(s, "cancelled") > 0) {
        buttons.append(el("button", { onclick: (e) => { e.stopPropagation(); act("retry", `/api/sweeps/${s.id}/retry`); } }, "Retry"));
      }
    }
    const row = el("tr", {
      class: `selectable${s.id === state.selected ? " selected" : ""}`,
      "data-sweep": s.id,
      onclick: () => selectSweep(s.id),
    },
    el("td", {}, s.name || "(unnamed)"),
    el("td", {}, el("code", {}, s.id)),
    el("td", { class: "num" }, s.priority),
    el("td", {}, progressBar(s)),
    el("td", { class: "num" }, count(s, "queued")),
    el("td", { class: "num" }, count(s, "leased")),
    el("td", { class: "num" }, count(s, "succeeded")),
    el("td", { class: "num" }, failed + count(s, "cancelled")),
    el("td", { class: "num" }, count(s, "reused")),
    el("td", {}, unfinished === 0 ? "done" : eta(s)),
    el("td", {}, when(s.submitted_unix_ms)),
    buttons);
    body.append(row);
  }
}

// ---------------------------------------------------------------- trials

function selectSweep(id) {
  state.selected = id;
  const url = new URL(location.href);
  url.searchParams.set("sweep", id);
  history.replaceState(null, "", url);
  if (state.status) renderSweeps(state.status);
  loadTrials();
}

async function loadTrials() {
  if (!state.selected) return;
  try {
    const r = await api(`/api/sweeps/${encodeURIComponent(state.selected)}/trials`);
    state.trials = r.trials;
    $("trials-title").textContent = r.sweep ? `${r.sweep.name} (${r.sweep.id})` : state.selected;
    $("trials-section").hidden = false;
    renderGates(r.sweep);
    renderPlot(r.sweep);
    renderSearchHeads();
    renderTrials();
  } catch (e) {
    say(`cannot load the trials of ${state.selected}: ${e.message}`, true);
  }
}

function scheduleTrials() {
  if (state.trialsTimer) return;
  state.trialsTimer = setTimeout(() => { state.trialsTimer = null; loadTrials(); }, 300);
}

// A funnel's gate lines: how many trials each gate sent on, kept as backups, held back.
function renderGates(sweep) {
  const gates = (sweep && sweep.gates) || [];
  $("gates").hidden = gates.length === 0;
  $("gates").replaceChildren(...gates.map((g) => el("li", {}, g)));
}

// The live plot, fetched again only when a trial has ended since it was drawn.
function renderPlot(sweep) {
  if (!sweep) return;
  const ended = ["succeeded", "failed", "cancelled", "dead", "reused"].reduce((a, k) => a + (sweep.counts[k] || 0), 0);
  const version = `${sweep.id}:${ended}:${(sweep.gates || []).length}`;
  if (version === state.plotVersion) return;
  state.plotVersion = version;
  const base = `/api/sweeps/${encodeURIComponent(sweep.id)}`;
  $("pareto-link").href = `${base}/pareto.svg`;
  $("ranking-link").href = `${base}/ranking.csv`;
  const img = $("pareto");
  img.onload = () => { $("choice").hidden = false; };
  img.onerror = () => { $("choice").hidden = true; };
  img.src = `${base}/pareto.svg?v=${encodeURIComponent(version)}`;
}

// One column per hyperparameter and metric the search recorded, before Failure.
function renderSearchHeads() {
  const names = [...new Set(state.trials.flatMap((t) => Object.keys(t.search || {})))].sort();
  if (names.join("\n") === state.searchColumns.join("\n")) return;
  state.searchColumns = names;
  const row = $("trials").tHead.rows[0];
  for (const th of [...row.cells]) if (th.dataset.search) th.remove();
  for (const name of names) {
    const th = el("th", { "data-key": `search.${name}`, "data-search": "1", title: "from the search" }, name);
    th.addEventListener("click", () => sortBy(th.dataset.key));
    row.insertBefore(th, $("failure-head"));
  }
}

function sortBy(key) {
  state.sortDir = state.sortKey === key ? -state.sortDir : 1;
  state.sortKey = key;
  renderTrials();
}

function field(t, k) {
  return k.startsWith("search.") ? (t.search || {})[k.slice(7)] : t[k];
}

function accuracy(t) {
  if (t.float_accuracy === null || t.float_accuracy === undefined) return "";
  const f = Number(t.float_accuracy).toFixed(4);
  return t.accuracy === null || t.accuracy === undefined ? f : `${f} → ${Number(t.accuracy).toFixed(4)}`;
}

function compare(a, b) {
  const k = state.sortKey;
  const x = field(a, k), y = field(b, k);
  if (x === y) return 0;
  if (x === null || x === undefined || x === "") return 1;
  if (y === null || y === undefined || y === "") return -1;
  return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * state.sortDir;
}

function renderTrials() {
  const filter = $("filter").value.trim().toLowerCase();
  const only = $("state-filter").value;
  const rows = state.trials.filter((t) => {
    if (only && t.state !== only) return false;
    if (!filter) return true;
    return [t.key, t.model, t.settings, t.worker, t.stage, t.class, t.reason, t.selection].join(" ").toLowerCase().includes(filter);
  }).sort(compare);
  for (const th of $("trials").tHead.rows[0].cells) {
    th.classList.toggle("asc", th.dataset.key === state.sortKey && state.sortDir > 0);
    th.classList.toggle("desc", th.dataset.key === state.sortKey && state.sortDir < 0);
  }
  $("trial-count").textContent = `${rows.length} of ${state.trials.length} trials`;
  const body = $("trials").tBodies[0];
  body.replaceChildren();
  for (const t of rows) {
    const files = el("td", {});
    if (t.state === "succeeded" || t.state === "reused" || t.state === "failed") {
      files.append(el("a", { href: `/api/trials/${t.key}/result.json`, target: "_blank" }, "result.json"), " ",
        el("a", { href: `/api/trials/${t.key}/artifacts.tar.gz` }, "tarball"));
    }
    body.append(el("tr", { "data-trial": t.key, "data-state": t.state },
      el("td", { class: `state-${t.state}` }, t.state),
      el("td", { title: t.key }, t.model || short(t.key)),
      el("td", { class: "wrap" }, t.settings),
      el("td", { class: "wrap", title: t.phase || "" }, t.phase && t.state === "leased" ? `${t.stage}: ${t.phase.split(" · ").slice(0, 3).join(" · ")}` : t.stage),
      el("td", {}, t.worker),
      el("td", { class: "num" }, t.attempt),
      el("td", { class: "num", title: predicted(t) }, t.seconds == null && t.predicted_seconds != null ? `~${num(t.predicted_seconds, 1)}` : num(t.seconds, 1)),
      el("td", { class: "num" }, num(t.lut)),
      el("td", { class: "num" }, num(t.ff)),
      el("td", { class: "num" }, num(t.dsp)),
      el("td", { class: "num" }, num(t.bram)),
      el("td", { class: "num" }, num(t.latency_cycles)),
      el("td", { class: t.fidelity_warning ? "wrap fidelity-warning" : "wrap", title: t.max_abs_diff === null ? "" : `max |diff| ${t.max_abs_diff}` },
        t.fidelity || (t.max_abs_diff === null ? "" : `max|diff| ${Number(t.max_abs_diff).toPrecision(3)}`)),
      el("td", { class: "num" }, accuracy(t)),
      el("td", { class: "wrap" }, t.selection || ""),
      ...state.searchColumns.map((name) => {
        const v = (t.search || {})[name];
        return el("td", { class: typeof v === "number" ? "num" : "" }, v === undefined || v === null ? "" : (typeof v === "number" ? num(v, Number.isInteger(v) ? 0 : 4) : String(v)));
      }),
      el("td", { class: "reason", title: t.reason }, t.class ? `${t.class}: ${t.reason}` : ""),
      files));
  }
}

// ---------------------------------------------------------------- workers, seats, failures

function renderWorkers(status) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  $("no-workers").hidden = status.workers.length > 0;
  for (const w of status.workers) {
    const running = el("td", {});
    for (const t of w.trials) running.append(el("div", {}, el("code", {}, short(t.trial)), ` ${t.stage || "starting"}${t.phase ? ` — ${t.phase}` : ""} (attempt ${t.attempt}${elapsed(t)})`));
    const tools = Object.entries(w.tools).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
    const buttons = el("td", {});
    if (state.operator && !w.draining) {
      buttons.append(el("button", { onclick: () => act("drain", `/api/workers/${encodeURIComponent(w.id)}/drain`) }, "Drain"));
    }
    body.append(el("tr", { "data-worker": w.id },
      el("td", {}, w.id), el("td", {}, w.hostname), el("td", { class: "num" }, `${w.trials.length} / ${w.slots}`),
      el("td", { class: "num" }, w.cores), el("td", { class: "num" }, `${Math.round(w.memory_mib / 1024)} GiB`),
      el("td", { class: "wrap" }, w.formats.join(", ")), el("td", { class: "wrap" }, tools), running,
      el("td", { class: "num" }, `${w.heartbeat_age_seconds.toFixed(1)} s ago`),
      el("td", {}, w.draining ? "draining" : "serving"), buttons));
  }
}

function renderSeats(status) {
  const body = $("seats").tBodies[0];
  body.replaceChildren();
  $("no-seats").hidden = status.seats.length > 0;
  for (const s of status.seats) {
    body.append(el("tr", {}, el("td", {}, s.feature), el("td", { class: "num" }, s.in_use), el("td", { class: "num" }, s.limit || "unlimited")));
  }
}

function renderFailures(status) {
  const body = $("failures").tBodies[0];
  body.replaceChildren();
  $("no-failures").hidden = status.recent_failures.length > 0;
  for (const f of status.recent_failures.slice(0, 20)) {
    body.append(el("tr", {}, el("td", {}, el("code", {}, short(f.trial))), el("td", {}, f.sweep),
      el("td", { class: `state-${f.state}` }, f.state), el("td", {}, f.class), el("td", { class: "reason" }, f.reason)));
  }
}

function renderEvents(events) {
  state.events = events.concat(state.events).slice(0, 200);
  const list = $("events");
  list.replaceChildren();
  for (const e of state.events) {
    const who = [e.sweep, short(e.trial), e.worker].filter(Boolean).join(" ");
    list.append(el("li", {}, `${new Date(e.time_unix_ms).toLocaleTimeString()} ${e.kind} ${who} ${e.state} ${e.message}`.replace(/\s+/g, " ")));
  }
}

function render(status) {
  state.status = status;
  const running = status.workers.reduce((a, w) => a + w.trials.length, 0);
  const slots = status.workers.reduce((a, w) => a + w.slots, 0);
  $("summary").textContent = `${status.sweeps.length} sweeps · ${status.workers.length} workers · ${running} / ${slots} slots busy`;
  renderSweeps(status);
  renderWorkers(status);
  renderSeats(status);
  renderFailures(status);
  if (!state.selected && status.sweeps.length > 0) {
    const newest = [...status.sweeps].sort((a, b) => b.submitted_unix_ms - a.submitted_unix_ms)[0];
    selectSweep(newest.id);
  }
}

// ---------------------------------------------------------------- live updates and auth

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "badge on"; });
  source.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "badge off"; });
  source.addEventListener("status", (m) => {
    const data = JSON.parse(m.data);
    render(data.status);
    if (data.events.length) renderEvents(data.events);
    if (state.selected && (data.events.length === 0 || data.events.some((e) => !e.sweep || e.sweep === state.selected))) {
      scheduleTrials();
    }
  });
}

async function checkToken() {
  $("forget-token").hidden = !state.token;
  if (!state.token) { state.operator = false; $("role").textContent = "read-only"; return; }
  try {
    await api("/api/auth");
    state.operator = true;
    $("role").textContent = "operator";
  } catch (e) {
    state.operator = false;
    $("role").textContent = `read-only (${e.message})`;
  }
  if (state.status) render(state.status);
}

$("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem("hlsfarm-token", state.token);
  checkToken();
});
$("forget-token").addEventListener("click", () => {
  state.token = "";
  sessionStorage.removeItem("hlsfarm-token");
  checkToken();
});
$("filter").addEventListener("input", renderTrials);
$("state-filter").addEventListener("change", renderTrials);
for (const th of $("trials").tHead.rows[0].cells) {
  if (!th.dataset.key) continue;
  th.addEventListener("click", () => sortBy(th.dataset.key));
}

checkToken();
connect();
if (state.selected) loadTrials();
