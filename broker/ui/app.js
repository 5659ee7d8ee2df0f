// stream-broker console: one page, hash routes, plain DOM. Every number
// comes from the JSON API under /api/v1 (docs/console-api.md); pages poll it
// while they are shown. Data is put into the page as text nodes only.
"use strict";

// ---------- helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.kind = body && body.error;
  }
}

async function api(path, opts) {
  const init = { headers: { Accept: "application/json" } };
  if (opts && opts.method) init.method = opts.method;
  if (opts && opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  const resp = await fetch(path, init);
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

const enc = encodeURIComponent;
const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
function fmtNum(n) { return n === null || n === undefined ? "–" : nf.format(n); }
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
function fmtRate(n, unit) { return `${fmtNum(n)} ${unit}/s`; }
function fmtBps(bytesPerSec) { return `${fmtBytes(Math.round(bytesPerSec))}/s`; }
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  const d = new Date(ms);
  return d.toLocaleString(undefined, { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" })
    + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}
function pct(f) { return `${Math.round(f * 100)}%`; }

function badge(text, kind) { return h("span", { class: `badge ${kind || "muted"}` }, text); }
function statusBadge(status) {
  const kind = { serving: "ok", read_only: "warn", disk_full: "warn", failed: "bad" }[status] || "muted";
  return badge(status.replace("_", " "), kind);
}

// A value shown on a page, with its raw number for tests and tools.
function val(testid, raw, text) {
  return h("span", { "data-testid": testid, "data-value": raw === null || raw === undefined ? "" : String(raw) }, text);
}

function card(label, value, sub) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

function table(caption, headers, rows, opts) {
  const head = h("tr", {}, headers.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label || c)));
  const body = rows.length ? rows : [h("tr", {}, h("td", { colspan: headers.length, class: "note" }, (opts && opts.empty) || "Nothing yet."))];
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h("table", { "data-testid": opts && opts.testid }, h("caption", { class: "skip" }, caption), h("thead", {}, head), h("tbody", {}, body)));
}

function bar(fraction, label, cls) {
  const f = Math.max(0, fraction || 0);
  const b = h("div", { class: `bar ${cls || ""} ${f > 0.9 ? "hot" : ""}`, role: "meter", "aria-label": label,
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(f * 100)), title: `${label}: ${pct(f)}` });
  const fill = h("span");
  fill.style.width = `${Math.min(100, f * 100)}%`;
  b.append(fill);
  return b;
}

// ---------- confirmation ----------

function confirmAction(title, text, okLabel) {
  const dlg = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel || "Confirm";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "cancel";
    dlg.showModal();
    document.getElementById("confirm-cancel").focus();
  });
}

// ---------- charts ----------

// series: [{name, points: [[t_ms, value]]}]; fmt formats axis values.
function lineChart(testid, title, series, fmt) {
  const W = 600, H = 170, L = 56, R = 8, T = 8, B = 22;
  const all = series.flatMap((x) => x.points);
  const t0 = all.length ? Math.min(...all.map((p) => p[0])) : 0;
  const t1 = all.length ? Math.max(...all.map((p) => p[0])) : 1;
  const vmax = Math.max(1e-9, ...all.map((p) => p[1]));
  const x = (t) => L + (t1 === t0 ? 0 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (H - T - B) * (1 - v / vmax);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: y(vmax * f), y2: y(vmax * f) }));
    svg.append(s("text", { class: "axis", x: L - 4, y: y(vmax * f) + 4, "text-anchor": "end" }, fmt(vmax * f)));
  }
  if (all.length) {
    svg.append(s("text", { class: "axis", x: L, y: H - 4 }, new Date(t0).toLocaleTimeString()));
    svg.append(s("text", { class: "axis", x: W - R, y: H - 4, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  }
  series.forEach((ser, i) => {
    if (!ser.points.length) return;
    const pts = ser.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { class: `s${i}`, points: pts, "data-series": ser.name }));
  });
  const last = series.map((ser) => (ser.points.length ? ser.points[ser.points.length - 1][1] : 0));
  const legend = h("div", { class: "legend" }, series.map((ser, i) =>
    h("span", {}, h("span", { class: `sw s${i}` }), `${ser.name}: `, h("b", { "data-testid": `${testid}-last-${i}`, "data-value": last[i] }, fmt(last[i])))));
  return h("figure", { class: "chart", "data-testid": testid, "data-points": String(all.length), "data-t1": String(t1) },
    h("figcaption", {}, title), svg, legend);
}

// ---------- routing and live updates ----------

let timers = [];
let generation = 0;
let overviewCache = null;

function every(ms, fn) {
  const gen = generation;
  let stopped = false;
  const tick = async () => {
    if (stopped || gen !== generation) return;
    try { await fn(); setStatus(`Updated ${new Date().toLocaleTimeString()}`); }
    catch (e) { setStatus(`Update failed: ${e.message}`, true); }
    if (!stopped && gen === generation) timers.push(setTimeout(tick, ms));
  };
  timers.push(setTimeout(tick, ms));
  return () => { stopped = true; };
}

function setStatus(text, error) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("error", !!error);
}

function pollMs() {
  return Math.max(500, (overviewCache && overviewCache.sample_interval_ms) || 1000);
}

function parseHash() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const [path, q] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(q || "") };
}

async function route() {
  if (location.hash && !location.hash.startsWith("#/")) return; // an in-page anchor (skip link)
  generation++;
  timers.forEach(clearTimeout);
  timers = [];
  const { parts, params } = parseHash();
  const main = document.getElementById("main");
  const section = parts[0] || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const page = {
    overview: () => overviewPage(main),
    streams: () => (parts[1] ? streamPage(main, parts[1]) : streamsPage(main)),
    groups: () => (parts[2] ? groupPage(main, parts[1], parts[2]) : groupsPage(main)),
    browse: () => browsePage(main, params),
    orders: () => (parts[1] ? orderPage(main, parts[1]) : ordersPage(main, params)),
    "dead-letters": () => (parts[1] ? deadLettersPage(main, parts[1]) : deadLetterStreamsPage(main)),
  }[section];
  const gen = generation;
  try {
    main.replaceChildren(h("p", { class: "note" }, "Loading…"));
    if (!page) throw new ApiError(404, { message: `no page ${section}` });
    await page();
    // After a navigation (not the first load) focus moves to the new
    // page's heading, so screen readers announce it and Tab starts there.
    if (gen === generation && gen > 1) {
      const h1 = main.querySelector("h1");
      if (h1 && !main.contains(document.activeElement)) { h1.setAttribute("tabindex", "-1"); h1.focus({ preventScroll: true }); }
    }
  } catch (e) {
    if (gen === generation) main.replaceChildren(h("h1", {}, "Error"), h("div", { class: "error-box", role: "alert" }, e.message));
  }
}

// Replaces `el`'s content unless keyboard focus is inside it (an update
// would move the focus away); the next poll tries again.
function update(el, nodes) {
  const active = document.activeElement;
  if (active && active !== el && el.contains(active)) return false;
  el.replaceChildren(...[nodes].flat(Infinity).filter((n) => n !== null && n !== undefined));
  return true;
}

// Shows `build(await load())` in `el` now and on every poll when the data changed.
async function live(el, load, build) {
  let last = null;
  const run = async () => {
    const data = await load();
    const sig = JSON.stringify(data);
    if (sig !== last && update(el, build(data))) last = sig;
  };
  await run();
  every(pollMs(), run);
}

// ---------- overview ----------

async function overviewPage(main) {
  const cards = h("div", { class: "cards" });
  const charts = h("div", { class: "charts" });
  const failed = h("div");
  main.replaceChildren(h("h1", {}, "Overview"), cards, charts, h("h2", {}, "Failed shards"), failed);
  const render = async () => {
    const [o, t] = await Promise.all([api("/api/v1/overview"), api("/api/v1/throughput")]);
    overviewCache = o;
    document.querySelector('nav a[data-nav="orders"]').hidden = !o.orders_enabled;
    const d = o.disk;
    const diskBar = h("div", { class: "disk" }, bar(d.total_bytes ? d.used_bytes / d.total_bytes : 0, "disk used"));
    if (d.total_bytes) {
      const mark = h("span", { class: "mark", title: "free-space watermark" });
      mark.style.left = `${Math.min(100, (1 - d.watermark_bytes / d.total_bytes) * 100)}%`;
      diskBar.firstChild.append(mark);
    }
    const tp = o.throughput;
    cards.replaceChildren(
      card("Health", o.ready ? badge("ready", "ok") : badge("not ready", "bad"), o.problems.length ? o.problems.join("; ") : "serving everything it holds"),
      card("Version", val("ov-version", o.version, o.version), `quotas ${o.quotas_enforced ? "enforced" : "off"} · console ${o.mutations_enabled ? "read-write" : "read-only"}`),
      card("Durability", val("ov-durability", o.durability.mode, o.durability.mode), o.durability.mode === "interval" ? `fsync every ${o.durability.interval_ms} ms` : o.durability.mode === "always" ? "acknowledged after fdatasync" : "fsync at roll and shutdown only"),
      card("Disk", h("span", {}, val("ov-free", d.free_bytes, fmtBytes(d.free_bytes)), " free"),
        h("span", {}, diskBar, `used ${fmtBytes(d.used_bytes)} of ${fmtBytes(d.total_bytes)} · watermark `, val("ov-watermark", d.watermark_bytes, fmtBytes(d.watermark_bytes)),
          ` · broker data ${fmtBytes(d.data_bytes)}`, d.full ? h("b", {}, " · FULL: writes refused") : "")),
      card("Streams", val("ov-streams", o.streams, fmtNum(o.streams)), h("span", {}, val("ov-shards", o.shards, fmtNum(o.shards)), " shards · ", val("ov-groups", o.groups, fmtNum(o.groups)), " groups")),
      card("In", val("ov-records-in", tp.records_in_per_sec, fmtRate(tp.records_in_per_sec, "rec")), fmtBps(tp.bytes_in_per_sec)),
      card("Out", val("ov-records-out", tp.records_out_per_sec, fmtRate(tp.records_out_per_sec, "rec")), fmtBps(tp.bytes_out_per_sec)),
      card("Throttled", val("ov-throttled", tp.throttled_per_sec, fmtRate(tp.throttled_per_sec, "req")), `since start: ${fmtNum(o.totals.write_throttled)} writes, ${fmtNum(o.totals.read_throttled)} reads`),
      card("Failed shards", val("ov-failed", o.failed_shards.length, fmtNum(o.failed_shards.length)), o.failed_shards.length ? "see below" : "none"),
    );
    const pts = t.points;
    charts.replaceChildren(
      lineChart("chart-records", "Records per second", [
        { name: "in", points: pts.map((p) => [p.t_ms, p.records_in_per_sec]) },
        { name: "out", points: pts.map((p) => [p.t_ms, p.records_out_per_sec]) },
      ], (v) => fmtNum(v)),
      lineChart("chart-bytes", "Bytes per second", [
        { name: "in", points: pts.map((p) => [p.t_ms, p.bytes_in_per_sec]) },
        { name: "out", points: pts.map((p) => [p.t_ms, p.bytes_out_per_sec]) },
      ], (v) => fmtBps(v)),
    );
    update(failed, table("Failed shards", ["Stream", "Shard", "Kind", "Cause"], o.failed_shards.map((f) =>
      h("tr", {}, h("td", {}, h("a", { href: `#/streams/${enc(f.stream)}` }, f.stream)), h("td", {}, f.shard_id), h("td", {}, f.kind), h("td", { class: "wrap" }, f.cause))),
    { empty: "No failed shard.", testid: "failed-shards" }));
  };
  await render();
  every(pollMs(), render);
}

// ---------- streams ----------

async function streamsPage(main) {
  const list = h("div");
  const o = overviewCache || await api("/api/v1/overview");
  overviewCache = o;
  const create = o.mutations_enabled ? createStreamForm() : h("p", { class: "note" }, "Read-only console: creating streams is turned off (console.mutations).");
  main.replaceChildren(h("h1", {}, "Streams"), list, h("h2", {}, "Create a stream"), create);
  await live(list, () => api("/api/v1/streams"), ({ streams }) =>
    table("Streams", ["Name", { label: "Shards", num: 1 }, { label: "Retention", num: 1 }, { label: "Records", num: 1 }, { label: "Size", num: 1 }, { label: "In", num: 1 }, { label: "Out", num: 1 }, "State"],
      streams.map((st) => h("tr", { "data-stream": st.name },
        h("td", {}, h("a", { href: `#/streams/${enc(st.name)}` }, st.name)),
        h("td", { class: "num" }, val("shards", st.open_shards, fmtNum(st.open_shards))),
        h("td", { class: "num" }, `${st.retention_hours} h`),
        h("td", { class: "num" }, val("records", st.records, fmtNum(st.records))),
        h("td", { class: "num" }, fmtBytes(st.bytes)),
        h("td", { class: "num" }, fmtRate(st.rates.records_in_per_sec, "rec")),
        h("td", { class: "num" }, fmtRate(st.rates.records_out_per_sec, "rec")),
        h("td", {}, st.failed_shards ? badge(`${st.failed_shards} failed`, "bad") : badge("ok", "ok")))),
      { empty: "No stream yet.", testid: "streams-table" }));
}

function createStreamForm() {
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_.\\-]{1,128}", autocomplete: "off" });
  const shards = h("input", { name: "shards", type: "number", min: "1", value: "1", required: true });
  const retention = h("input", { name: "retention", type: "number", min: "24", max: "168", value: "24", required: true });
  const msg = h("p", { role: "status" });
  const form = h("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { name: name.value, shard_count: Number(shards.value), retention_hours: Number(retention.value) };
    if (!(await confirmAction("Create stream", `Create stream "${body.name}" with ${body.shard_count} shard(s), retention ${body.retention_hours} h?`, "Create"))) return;
    try { await api("/api/v1/streams", { method: "POST", body }); msg.textContent = `Created ${body.name}.`; location.hash = `#/streams/${enc(body.name)}`; }
    catch (e) { msg.textContent = e.message; msg.className = "error-box"; }
  } },
  h("label", {}, "Name", name), h("label", {}, "Shards", shards), h("label", {}, "Retention (hours)", retention), h("button", { type: "submit" }, "Create…"));
  return h("div", {}, form, msg);
}

// Shards as a tree: children (made by a split or merge) under their parents.
function shardTree(shards, stream, quotas) {
  const ids = new Set(shards.map((x) => x.shard_id));
  const kids = new Map();
  const roots = [];
  for (const sh of shards) {
    const parent = [sh.parent_shard_id, sh.adjacent_parent_shard_id].find((p) => p && ids.has(p));
    if (parent) { if (!kids.has(parent)) kids.set(parent, []); kids.get(parent).push(sh); } else roots.push(sh);
  }
  const item = (sh, seen) => {
    if (seen.has(sh.shard_id)) return null;
    seen.add(sh.shard_id);
    const r = sh.rates;
    const parents = [sh.parent_shard_id, sh.adjacent_parent_shard_id].filter(Boolean);
    const box = h("div", { class: `shard ${sh.state === "closed" ? "closed" : ""}`, "data-shard": sh.shard_id },
      h("div", { class: "head" }, h("b", {}, sh.shard_id), badge(sh.state, sh.state === "open" ? "ok" : "muted"), statusBadge(sh.status),
        parents.length ? h("span", { class: "note" }, `from ${parents.join(" + ")}`) : null,
        h("a", { href: `#/browse?stream=${enc(stream)}&shard=${enc(sh.shard_id)}` }, "Browse")),
      sh.failure ? h("div", { class: "error-box" }, `${sh.failure.kind}: ${sh.failure.cause}`) : null,
      h("div", { class: "grid" },
        h("div", { class: "mono", title: `${sh.starting_hash_key} – ${sh.ending_hash_key}` }, h("span", {}, "hash"), `${abbrev(sh.starting_hash_key)} – ${abbrev(sh.ending_hash_key)}`),
        h("div", {}, h("span", {}, "first seq"), val("first-seq", sh.first_sequence_number, fmtNum(sh.first_sequence_number))),
        h("div", {}, h("span", {}, "next seq"), val("next-seq", sh.next_sequence_number, fmtNum(sh.next_sequence_number))),
        h("div", {}, h("span", {}, "records"), fmtNum(sh.records), " · ", fmtBytes(sh.bytes)),
        h("div", {}, h("span", {}, "last arrival"), fmtTime(sh.last_arrival_ms)),
        h("div", {}, h("span", {}, "write"), `${fmtRate(r.write_records_per_sec, "rec")} · ${fmtBytes(r.write_bytes_per_sec)}/s of ${fmtNum(quotas.write_records_per_sec)} rec/s, ${fmtBytes(quotas.write_bytes_per_sec)}/s`,
          bar(sh.write_quota_used, `${sh.shard_id} write quota used`)),
        h("div", {}, h("span", {}, "read"), `${fmtRate(r.read_calls_per_sec, "call")} · ${fmtBytes(r.read_bytes_per_sec)}/s of ${fmtNum(quotas.read_calls_per_sec)} calls/s, ${fmtBytes(quotas.read_bytes_per_sec)}/s`,
          bar(sh.read_quota_used, `${sh.shard_id} read quota used`, "read")),
        h("div", {}, h("span", {}, "throttled"), val("throttled", r.write_throttled_per_sec + r.read_throttled_per_sec,
          `${fmtNum(r.write_throttled_per_sec)} writes/s, ${fmtNum(r.read_throttled_per_sec)} reads/s`))));
    const children = (kids.get(sh.shard_id) || []).map((c) => item(c, seen)).filter(Boolean);
    return h("li", {}, box, children.length ? h("ul", {}, children) : null);
  };
  const seen = new Set();
  return h("ul", { class: "tree", "data-testid": "shard-tree", "aria-label": "Shards" }, roots.map((sh) => item(sh, seen)).filter(Boolean));
}

function abbrev(key) { return key.length > 12 ? `${key.slice(0, 6)}…${key.slice(-4)}` : key; }

async function streamPage(main, name) {
  const head = h("div");
  const tree = h("div");
  const o = overviewCache || await api("/api/v1/overview");
  overviewCache = o;
  const first = await api(`/api/v1/streams/${enc(name)}`);
  main.replaceChildren(h("h1", {}, `Stream ${name}`), head,
    h("h2", {}, "Retention"), o.mutations_enabled ? retentionEditor(first) : h("p", { class: "note" }, "Read-only console: changing retention is turned off (console.mutations)."),
    h("h2", {}, "Resharding"), o.mutations_enabled ? reshardEditor(first) : h("p", { class: "note" }, "Read-only console: splitting, merging and rescaling are turned off (console.mutations)."),
    h("h2", {}, "Shards"), tree);
  await live(head, () => api(`/api/v1/streams/${enc(name)}`), (st) => {
    update(tree, shardTree(st.shards, name, st.quotas));
    return h("dl", { class: "kv" },
      h("dt", {}, "Shards"), h("dd", {}, val("stream-shards", st.open_shards, fmtNum(st.open_shards))),
      h("dt", {}, "Records"), h("dd", {}, val("stream-records", st.records, fmtNum(st.records)), ` · ${fmtBytes(st.bytes)}`),
      h("dt", {}, "Retention"), h("dd", {}, val("stream-retention", st.retention_hours, `${st.retention_hours} hours`)),
      h("dt", {}, "Rates"), h("dd", {}, `in ${fmtRate(st.rates.records_in_per_sec, "rec")} (${fmtBps(st.rates.bytes_in_per_sec)}), out ${fmtRate(st.rates.records_out_per_sec, "rec")} (${fmtBps(st.rates.bytes_out_per_sec)})`),
      h("dt", {}, "Quota per shard"), h("dd", {}, `write ${fmtNum(st.quotas.write_records_per_sec)} rec/s and ${fmtBytes(st.quotas.write_bytes_per_sec)}/s; read ${fmtNum(st.quotas.read_calls_per_sec)} calls/s and ${fmtBytes(st.quotas.read_bytes_per_sec)}/s${st.quotas_enforced ? "" : " (not enforced)"}`),
      h("dt", {}, "Largest record"), h("dd", {}, fmtBytes(st.max_record_bytes)),
      h("dt", {}, "Durability"), h("dd", {}, st.durability),
      h("dt", {}, "Created"), h("dd", {}, fmtTime(st.created_at_ms)),
      h("dt", {}, "Consumer groups"), h("dd", {}, st.groups.length ? st.groups.map((g, i) => [i ? ", " : "", h("a", { href: `#/groups/${enc(name)}/${enc(g)}` }, g)]) : "none"));
  });
}

function retentionEditor(st) {
  const input = h("input", { type: "number", min: "24", max: "168", value: String(st.retention_hours), "aria-label": "New retention in hours" });
  const msg = h("span", { role: "status" });
  return h("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    const hours = Number(input.value);
    if (!(await confirmAction("Change retention", `Change the retention of "${st.name}" to ${hours} hours? Records older than that become eligible for deletion.`, "Change"))) return;
    try { await api(`/api/v1/streams/${enc(st.name)}/retention`, { method: "PUT", body: { retention_hours: hours } }); msg.textContent = "Changed."; }
    catch (e) { msg.textContent = e.message; }
  } }, input, h("button", { type: "submit", class: "secondary" }, "Change retention…"), msg);
}

// Split one open shard, merge two adjacent open ones, or rescale (UpdateShardCount).
function reshardEditor(st) {
  const box = h("div", { "data-testid": "reshard" });
  const msg = h("span", { role: "status" });
  const render = (st) => {
    const open = st.shards.filter((x) => x.state === "open")
      .sort((a, b) => (BigInt(a.starting_hash_key) < BigInt(b.starting_hash_key) ? -1 : 1));
    const pairs = [];
    for (let i = 1; i < open.length; i++) {
      if (BigInt(open[i - 1].ending_hash_key) + 1n === BigInt(open[i].starting_hash_key)) pairs.push([open[i - 1].shard_id, open[i].shard_id]);
    }
    const done = async (title, text, label, path, body) => {
      if (!(await confirmAction(title, text, label))) return;
      try {
        await api(`/api/v1/streams/${enc(st.name)}/${path}`, { method: "POST", body });
        msg.textContent = "Done.";
        render(await api(`/api/v1/streams/${enc(st.name)}`));
      } catch (e) { msg.textContent = e.message; }
    };
    const splitSel = h("select", { "aria-label": "Shard to split" }, open.map((x) => h("option", { value: x.shard_id }, x.shard_id)));
    const mergeSel = h("select", { "aria-label": "Adjacent shards to merge" }, pairs.map(([a, b]) => h("option", { value: `${a} ${b}` }, `${a} + ${b}`)));
    const count = h("input", { type: "number", min: "1", value: String(open.length), "aria-label": "Open shards wanted" });
    box.replaceChildren(
      h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault();
        done("Split shard", `Split ${splitSel.value} of "${st.name}" in the middle of its hash range? It closes (and stays readable); two children take its writes.`, "Split", "split", { shard_id: splitSel.value }); } },
        splitSel, h("button", { type: "submit", class: "secondary", disabled: open.length ? null : true }, "Split…")),
      h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault();
        const [a, b] = mergeSel.value.split(" ");
        done("Merge shards", `Merge ${a} and ${b} of "${st.name}"? Both close (and stay readable); one child takes their writes.`, "Merge", "merge", { shard_id: a, adjacent_shard_id: b }); } },
        mergeSel, h("button", { type: "submit", class: "secondary", disabled: pairs.length ? null : true }, "Merge…")),
      h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault();
        const n = Number(count.value);
        done("Rescale stream", `Rescale "${st.name}" from ${open.length} to ${n} open shards (UpdateShardCount, at most double or half; a limited number per day)?`, "Rescale", "scale", { target_shard_count: n }); } },
        count, h("button", { type: "submit", class: "secondary" }, "Rescale…")),
      msg);
  };
  render(st);
  return box;
}

// ---------- consumer groups ----------

async function groupsPage(main) {
  const list = h("div");
  main.replaceChildren(h("h1", {}, "Consumer groups"), list);
  await live(list, () => api("/api/v1/groups"), ({ groups }) =>
    table("Consumer groups", ["Stream", "Group", { label: "Members", num: 1 }, { label: "Generation", num: 1 }, { label: "Lag (records)", num: 1 }, { label: "Lag (age)", num: 1 }],
      groups.map((g) => h("tr", { "data-group": `${g.stream}/${g.group}` },
        h("td", {}, h("a", { href: `#/streams/${enc(g.stream)}` }, g.stream)),
        h("td", {}, h("a", { href: `#/groups/${enc(g.stream)}/${enc(g.group)}` }, g.group)),
        h("td", { class: "num" }, val("members", g.members, fmtNum(g.members))),
        h("td", { class: "num" }, fmtNum(g.generation)),
        h("td", { class: "num" }, val("lag-records", g.lag_records, fmtNum(g.lag_records))),
        h("td", { class: "num" }, fmtMs(g.lag_ms)))),
      { empty: "No consumer group yet.", testid: "groups-table" }));
}

async function groupPage(main, stream, group) {
  const head = h("div"), charts = h("div", { class: "charts" }), members = h("div"), shards = h("div");
  const o = overviewCache || await api("/api/v1/overview");
  overviewCache = o;
  main.replaceChildren(h("h1", {}, `Group ${group}`), head, charts, h("h2", {}, "Members"), members, h("h2", {}, "Shards"), shards,
    h("h2", {}, "Reset"), o.mutations_enabled ? resetForm(stream, group) : h("p", { class: "note" }, "Read-only console: resetting groups is turned off (console.mutations)."));
  const render = async () => {
    const g = await api(`/api/v1/streams/${enc(stream)}/groups/${enc(group)}`);
    const start = g.start.position === "at_timestamp" ? `at ${fmtTime(g.start.timestamp_ms)}` : g.start.position.replace("_", " ");
    head.replaceChildren(h("dl", { class: "kv" },
      h("dt", {}, "Stream"), h("dd", {}, h("a", { href: `#/streams/${enc(stream)}` }, stream)),
      h("dt", {}, "Generation"), h("dd", {}, val("group-generation", g.generation, fmtNum(g.generation))),
      h("dt", {}, "Lag"), h("dd", {}, val("group-lag-records", g.lag_records, fmtNum(g.lag_records)), " records · oldest unprocessed ", val("group-lag-ms", g.lag_ms, fmtMs(g.lag_ms))),
      h("dt", {}, "Starts at"), h("dd", {}, start),
      h("dt", {}, "Session timeout"), h("dd", {}, fmtMs(g.session_timeout_ms))));
    const hist = g.history;
    const perShard = hist.length && hist[hist.length - 1].shards;
    const recSeries = [{ name: "all shards", points: hist.map((p) => [p.t_ms, p.lag_records]) }];
    if (perShard && g.shards.length > 1) g.shards.slice(0, 2).forEach((sh, i) => recSeries.push({ name: sh.shard_id, points: hist.filter((p) => p.shards).map((p) => [p.t_ms, p.shards[i][0]]) }));
    charts.replaceChildren(
      lineChart("chart-lag-records", "Lag in records", recSeries, (v) => fmtNum(v)),
      lineChart("chart-lag-ms", "Lag in time (oldest unprocessed record)", [{ name: "max over shards", points: hist.map((p) => [p.t_ms, p.lag_ms]) }], (v) => fmtMs(Math.round(v))));
    update(members, table("Members", ["Member", "Client", "Leases", { label: "Last heartbeat", num: 1 }], g.members.map((m) =>
      h("tr", {}, h("td", { class: "mono" }, m.member_id), h("td", {}, m.client_id || "–"),
        h("td", { class: "wrap" }, m.leases.map((l) => `${l.shard_id} (lease ${l.epoch}${l.revoking ? ", revoking" : ""})`).join(", ") || "none"),
        h("td", { class: "num" }, `${fmtMs(m.last_heartbeat_age_ms)} ago`))), { empty: "No live member.", testid: "members-table" }));
    update(shards, table("Shards", ["Shard", "Owner", { label: "Lease", num: 1 }, { label: "Checkpoint", num: 1 }, { label: "Lag (records)", num: 1 }, { label: "Lag (age)", num: 1 }], g.shards.map((sh) =>
      h("tr", { "data-shard": sh.shard_id }, h("td", {}, sh.shard_id), h("td", { class: "mono" }, sh.owner || "unassigned"),
        h("td", { class: "num" }, sh.epoch ? `${sh.epoch}${sh.revoking ? " (revoking)" : ""}` : "–"),
        h("td", { class: "num" }, val("checkpoint", sh.checkpoint, fmtNum(sh.checkpoint))),
        h("td", { class: "num" }, val("lag-records", sh.lag_records, fmtNum(sh.lag_records))),
        h("td", { class: "num" }, val("lag-ms", sh.lag_ms, fmtMs(sh.lag_ms))))), { testid: "group-shards-table" }));
  };
  await render();
  every(pollMs(), render);
}

function resetForm(stream, group) {
  const to = h("select", { name: "to" }, ["trim_horizon", "latest", "timestamp", "sequence"].map((v) => h("option", { value: v }, v.replace("_", " "))));
  const time = h("input", { type: "datetime-local", step: "1" });
  const shard = h("input", { placeholder: "shardId-000000000000" });
  const seq = h("input", { type: "number", min: "0" });
  const msg = h("p", { role: "status" });
  const form = h("form", { class: "inline", onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { to: to.value };
    if (to.value === "timestamp") body.timestamp_ms = new Date(time.value).getTime();
    if (to.value === "sequence") { body.shard_id = shard.value; body.sequence_number = Number(seq.value); }
    if (!(await confirmAction("Reset group", `Move every checkpoint of "${group}" to ${to.value.replace("_", " ")}? Records may be skipped or processed again. The group must have no live member.`, "Reset"))) return;
    try { await api(`/api/v1/streams/${enc(stream)}/groups/${enc(group)}/reset`, { method: "POST", body }); msg.textContent = "Reset."; msg.className = ""; }
    catch (e) { msg.textContent = e.message; msg.className = "error-box"; }
  } }, h("label", {}, "To", to), h("label", {}, "Time (for timestamp)", time), h("label", {}, "Shard (for sequence)", shard), h("label", {}, "Sequence", seq), h("button", { type: "submit", class: "danger" }, "Reset…"));
  return h("div", {}, form, msg);
}

// ---------- message browser ----------

function b64bytes(b64) { return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)); }

function decodeAs(bytes, mode) {
  let text = null;
  try { text = new TextDecoder("utf-8", { fatal: true }).decode(bytes); } catch (_) { text = null; }
  if (mode === "auto" || mode === "json") {
    if (text !== null) { try { return { kind: "json", value: JSON.parse(text) }; } catch (_) { /* not JSON */ } }
    if (mode === "json") return { kind: "error", value: "not JSON" };
  }
  if ((mode === "auto" || mode === "text") && text !== null) return { kind: "text", value: text };
  if (mode === "text") return { kind: "error", value: "not UTF-8 text" };
  return { kind: "hex", value: bytes };
}

function hexDump(bytes) {
  const lines = [];
  const n = Math.min(bytes.length, 65536);
  for (let i = 0; i < n; i += 16) {
    const row = Array.from(bytes.slice(i, Math.min(i + 16, n)));
    lines.push(`${i.toString(16).padStart(8, "0")}  ${row.map((b) => b.toString(16).padStart(2, "0")).join(" ").padEnd(47)}  ${row.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("")}`);
  }
  if (bytes.length > n) lines.push(`… ${bytes.length - n} more bytes`);
  return lines.join("\n");
}

function jsonTree(value, key, depth) {
  const label = key === undefined ? null : h("span", { class: "k" }, `${JSON.stringify(key)}: `);
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const open = depth < 2 ? { open: true } : {};
    return h("li", {}, h("details", open, h("summary", {}, label, Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`),
      h("ul", {}, entries.map(([k, v]) => jsonTree(v, Array.isArray(value) ? undefined : k, depth + 1)))));
  }
  const cls = typeof value === "string" ? "s" : typeof value === "number" ? "n" : "b";
  return h("li", {}, label, h("span", { class: cls }, JSON.stringify(value)));
}

function renderData(b64, mode) {
  const d = decodeAs(b64bytes(b64), mode);
  if (d.kind === "json") return h("ul", { class: "json", "data-kind": "json" }, jsonTree(d.value, undefined, 0));
  if (d.kind === "text") return h("pre", { "data-kind": "text" }, d.value);
  if (d.kind === "hex") return h("pre", { "data-kind": "hex" }, hexDump(d.value));
  return h("p", { class: "error-box" }, d.value);
}

async function browsePage(main, params) {
  const { streams } = await api("/api/v1/streams");
  const p = (k, d) => params.get(k) || d;
  const streamSel = h("select", { name: "stream" }, streams.map((st) => h("option", { value: st.name, selected: st.name === p("stream") }, st.name)));
  const shardSel = h("select", { name: "shard" });
  const start = h("select", { name: "start" }, [["newest", "newest first"], ["oldest", "oldest first"], ["sequence", "from a sequence"], ["timestamp", "from a time"]]
    .map(([v, t]) => h("option", { value: v, selected: v === p("start", "newest") }, t)));
  const seq = h("input", { name: "sequence", type: "number", min: "0", value: p("sequence", "") });
  const time = h("input", { name: "time", type: "datetime-local", step: "1", value: p("time", "") });
  const key = h("input", { name: "key", value: p("key", ""), placeholder: "exact partition key", autocomplete: "off" });
  const toSeq = h("input", { name: "to_sequence", type: "number", min: "0", value: p("to_sequence", "") });
  const limit = h("input", { name: "limit", type: "number", min: "1", value: p("limit", "25") });
  const decode = h("select", { name: "decode" }, [["auto", "auto"], ["json", "JSON"], ["text", "text"], ["hex", "hex"]].map(([v, t]) => h("option", { value: v, selected: v === p("decode", "auto") }, t)));
  const out = h("div");
  const fillShards = async () => {
    shardSel.replaceChildren();
    if (!streamSel.value) return;
    const st = await api(`/api/v1/streams/${enc(streamSel.value)}`);
    for (const sh of st.shards) shardSel.append(h("option", { value: sh.shard_id, selected: sh.shard_id === p("shard") }, sh.shard_id));
  };
  streamSel.addEventListener("change", fillShards);
  const query = (extra) => {
    const q = new URLSearchParams();
    q.set("start", start.value);
    if (start.value === "sequence" && seq.value !== "") q.set("sequence", seq.value);
    if (start.value === "timestamp" && time.value) q.set("timestamp_ms", String(new Date(time.value).getTime()));
    if (key.value) q.set("key", key.value);
    if (toSeq.value !== "" && start.value !== "newest") q.set("to_sequence", toSeq.value);
    q.set("limit", limit.value || "25");
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q;
  };
  const load = async (extra) => {
    if (!streamSel.value || !shardSel.value) { out.replaceChildren(h("p", { class: "note" }, "Create a stream first.")); return; }
    if (key.value && start.value === "newest") start.value = "oldest"; // a search runs forward
    const base = `/api/v1/streams/${enc(streamSel.value)}/shards/${enc(shardSel.value)}/records`;
    const q = query(extra);
    const page = await api(`${base}?${q}`);
    const dl = new URLSearchParams(q); dl.set("format", "jsonl"); dl.set("limit", String(Math.max(Number(limit.value) || 25, 1)));
    const nav = h("div", { class: "toolbar" },
      page.older_before !== null && page.older_before !== undefined ? h("button", { type: "button", class: "secondary", onclick: () => load({ before: String(page.older_before) }) }, "Older") : null,
      page.order === "oldest_first" && !page.end_reached ? h("button", { type: "button", class: "secondary", onclick: () => { start.value = "sequence"; seq.value = String(page.next_sequence); load(); } }, key.value ? "Search on" : "Next") : null,
      h("a", { href: `${base}?${dl}`, download: "", "data-testid": "download" }, "Download as JSON lines"),
      h("span", { class: "note" }, `${page.shard_id}: sequences ${fmtNum(page.first_sequence_number)} to ${fmtNum(page.next_sequence_number - 1)}`,
        page.scanned ? ` · scanned ${fmtNum(page.scanned)}, ${page.end_reached ? "reached the end" : `go on from ${page.next_sequence}`}` : ""));
    out.replaceChildren(nav, h("div", { class: "records", "data-testid": "records" }, page.records.length ? page.records.map((r) =>
      h("article", { class: "record", "data-seq": String(r.sequence_number) },
        h("header", {}, h("span", {}, "seq ", h("b", { "data-testid": "record-seq" }, String(r.sequence_number))), h("span", {}, "key ", h("b", { "data-testid": "record-key" }, r.partition_key)),
          h("span", {}, "arrived ", h("b", { "data-value": String(r.arrival_timestamp_ms) }, fmtTime(r.arrival_timestamp_ms))), h("span", {}, fmtBytes(r.data_bytes))),
        renderData(r.data_base64, decode.value))) : h("p", { class: "note" }, "No record in this range.")));
    const hash = new URLSearchParams({ stream: streamSel.value, shard: shardSel.value, start: start.value, decode: decode.value, limit: limit.value });
    if (seq.value) hash.set("sequence", seq.value);
    if (key.value) hash.set("key", key.value);
    if (time.value) hash.set("time", time.value);
    history.replaceState(null, "", `#/browse?${hash}`);
  };
  const form = h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); load().catch((e) => out.replaceChildren(h("div", { class: "error-box", role: "alert" }, e.message))); } },
    h("label", {}, "Stream", streamSel), h("label", {}, "Shard", shardSel), h("label", {}, "Start", start), h("label", {}, "Sequence", seq), h("label", {}, "Time", time),
    h("label", {}, "Partition key", key), h("label", {}, "Up to sequence", toSeq), h("label", {}, "Limit", limit), h("label", {}, "Show as", decode), h("button", { type: "submit" }, "Load"));
  main.replaceChildren(h("h1", {}, "Messages"), form, out);
  await fillShards();
  if (streams.length) await load();
  else out.replaceChildren(h("p", { class: "note" }, "No stream yet."));
}

// ---------- orders ----------

const ORDER_DATES = [["orderDate", "placed"], ["fulfillmentDate", "fulfilled"], ["sentToDeliveryDate", "queued"], ["deliveryDate", "delivered"]];

async function ordersPage(main, params) {
  const status = h("select", { name: "status" }, [["", "all"], ["placed", "placed"], ["fulfilled", "fulfilled"], ["delivered", "delivered"]]
    .map(([v, t]) => h("option", { value: v, selected: v === (params.get("status") || "") }, t)));
  const list = h("div");
  const form = h("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/orders?status=${enc(status.value)}`; } },
    h("label", {}, "Status", status), h("button", { type: "submit" }, "Show"));
  main.replaceChildren(h("h1", {}, "Orders"), form, list);
  const cursor = params.get("cursor");
  const q = new URLSearchParams({ limit: "50" });
  if (status.value) q.set("status", status.value);
  if (cursor) q.set("cursor", cursor);
  await live(list, () => api(`/api/v1/orders?${q}`), (page) => {
    const next = page.nextCursor ? h("a", { href: `#/orders?status=${enc(status.value)}&cursor=${enc(page.nextCursor)}` }, "Next page") : null;
    return [table("Orders", ["Order", "Status", "Name", "Product", { label: "Qty", num: 1 }, ...ORDER_DATES.map(([, t]) => t)], page.orders.map((o) =>
      h("tr", { "data-order": o.orderId }, h("td", { class: "mono" }, h("a", { href: `#/orders/${enc(o.orderId)}` }, o.orderId)), h("td", {}, badge(o.status, o.status === "delivered" ? "ok" : "warn")),
        h("td", {}, o.name), h("td", {}, o.productId), h("td", { class: "num" }, String(o.quantity)),
        ORDER_DATES.map(([k]) => h("td", {}, fmtTime(o[k]))))), { empty: "No order.", testid: "orders-table" }), next];
  });
}

async function orderPage(main, id) {
  const body = h("div");
  main.replaceChildren(h("h1", {}, `Order ${id}`), body);
  await live(body, () => api(`/api/v1/orders/${enc(id)}`), (d) => {
    const o = d.order;
    const evLink = (e) => h("a", { href: `#/browse?stream=${enc(e.stream)}&shard=${enc(e.shard_id)}&start=sequence&sequence=${e.sequence_number}&limit=1` }, `${e.stream} #${e.sequence_number}`);
    return [
      h("h2", {}, "Flow"),
      h("ol", { class: "flow", "data-testid": "flow" }, d.steps.map((st) => h("li", { class: st.done ? "done" : "", "data-step": st.step, "data-done": String(st.done) },
        h("div", { class: "step" }, `${st.done ? "✓" : "…"} ${st.step}`),
        h("div", { class: "when" }, st.at_ms ? fmtTime(st.at_ms) : st.done ? "time not recorded" : "pending"),
        h("div", { class: "detail" }, st.detail), st.event ? h("div", { class: "detail" }, evLink(st.event)) : null))),
      h("h2", {}, "Order"),
      h("dl", { class: "kv" }, Object.entries(o).map(([k, v]) => [h("dt", {}, k), h("dd", {}, /Date$/.test(k) ? fmtTime(v) : String(v))])),
      h("h2", {}, "Events"),
      table("Events", ["Arrived", "Type", "Record", "Processed by", "Pending in"], d.events.map((e) =>
        h("tr", {}, h("td", {}, fmtTime(e.arrival_timestamp_ms)), h("td", {}, e.event_type), h("td", {}, evLink(e)), h("td", {}, e.processed_by.join(", ") || "–"), h("td", {}, e.pending_in.join(", ") || "–"))),
      { empty: "No event found.", testid: "events-table" }),
      h("h2", {}, "Dead letters"),
      table("Dead letters of this order", ["Arrived", "Stream", "Error", "Kind"], d.dead_letters.map((x) =>
        h("tr", {}, h("td", {}, fmtTime(x.arrival_timestamp_ms)), h("td", {}, h("a", { href: `#/dead-letters/${enc(x.stream)}` }, x.stream)), h("td", { class: "wrap" }, x.error || "–"), h("td", {}, x.kind || "–"))),
      { empty: "None." }),
    ];
  });
}

// ---------- dead letters ----------

async function deadLetterStreamsPage(main) {
  const list = h("div");
  main.replaceChildren(h("h1", {}, "Dead letters"), h("p", { class: "note" }, "Streams named <source>-dlq hold records their consumers could not handle."), list);
  await live(list, () => api("/api/v1/dead-letters"), ({ streams }) =>
    table("Dead-letter streams", ["Stream", "Source", { label: "Records", num: 1 }, "Newest"], streams.map((x) =>
      h("tr", {}, h("td", {}, h("a", { href: `#/dead-letters/${enc(x.stream)}` }, x.stream)), h("td", {}, x.source_exists ? h("a", { href: `#/streams/${enc(x.source)}` }, x.source) : `${x.source} (missing)`),
        h("td", { class: "num" }, val("dlq-records", x.records, fmtNum(x.records))), h("td", {}, fmtTime(x.newest_arrival_ms)))),
    { empty: "No dead-letter stream.", testid: "dlq-streams" }));
}

async function deadLettersPage(main, stream) {
  const list = h("div");
  const msg = h("p", { role: "status" });
  main.replaceChildren(h("h1", {}, `Dead letters in ${stream}`), msg, list);
  await live(list, () => api(`/api/v1/dead-letters/${enc(stream)}?limit=100`), (d) =>
    table("Dead letters", ["Arrived", "Key", "Error", "Kind", { label: "Attempts", num: 1 }, "Source record", "Payload", ""], d.dead_letters.map((x) =>
      h("tr", { "data-seq": String(x.sequence_number) }, h("td", {}, fmtTime(x.arrival_timestamp_ms)), h("td", { class: "mono" }, x.partition_key),
        h("td", { class: "wrap" }, x.error || "–"), h("td", {}, x.kind || "–"), h("td", { class: "num" }, x.attempts === null ? "–" : String(x.attempts)),
        h("td", {}, x.source_shard_id ? `${x.source_shard_id} #${x.source_sequence_number}` : "–"),
        h("td", { class: "wrap" }, h("details", {}, h("summary", {}, "show"), renderData(x.payload !== null && x.encoding === "utf8" ? btoa(unescape(encodeURIComponent(x.payload))) : x.data_base64, "auto"))),
        h("td", {}, d.mutations_enabled ? h("button", { type: "button", class: "secondary", onclick: async () => {
          if (!(await confirmAction("Replay", `Append this record again to "${d.source}" with key ${x.partition_key}?`, "Replay"))) return;
          try { const r = await api(`/api/v1/dead-letters/${enc(stream)}/replay`, { method: "POST", body: { shard_id: x.shard_id, sequence_number: x.sequence_number } });
            msg.textContent = `Replayed to ${r.stream} ${r.shard_id} #${r.sequence_number}.`; msg.className = ""; }
          catch (e) { msg.textContent = e.message; msg.className = "error-box"; }
        } }, "Replay…") : h("span", { class: "note" }, "read-only")))),
    { empty: "No dead letter.", testid: "dead-letters" }));
}

// ---------- start ----------

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  try { overviewCache = await api("/api/v1/overview"); document.querySelector('nav a[data-nav="orders"]').hidden = !overviewCache.orders_enabled; }
  catch (e) { setStatus(`Broker unreachable: ${e.message}`, true); }
  route();
});
