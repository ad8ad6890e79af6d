// blockwatch dashboard: plain JavaScript over the collector's own API; no build step, no CDN.
// Everything shown comes from /v1/status, /v1/blocks, /v1/timeline, /v1/events and /v1/agents;
// text from the network is only ever set as text, never as markup.
"use strict";

const DAY = 24 * 3600 * 1000;
let token = localStorage.getItem("blockwatch_token") || "";
let lastSeq = 0;
let agents = {};
let status = { cells: [], counts: {} };

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "title") e.title = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const kid of kids) {
    if (kid === null || kid === undefined) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const resp = await fetch(path, { headers });
  if (resp.status === 401 || resp.status === 403) {
    document.getElementById("auth").hidden = false;
    throw new Error("the API needs a token");
  }
  if (!resp.ok) throw new Error(path + ": " + resp.status);
  return resp;
}

const json = async (path) => (await api(path)).json();
const lines = async (path) => (await (await api(path)).text()).split("\n").filter(Boolean).map((l) => JSON.parse(l));

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return Math.round(s) + "s";
  if (s < 5400) return Math.round(s / 60) + "m";
  if (s < 172800) return Math.floor(s / 3600) + "h " + Math.round((s % 3600) / 60) + "m";
  return Math.round(s / 86400) + "d";
}

function clock(iso) {
  const d = new Date(iso);
  return isNaN(d) ? "" : d.toISOString().slice(11, 19);
}

function label(state) {
  return { blocked: "blocked", outage: "outage", vantage_problem: "vantage", unknown: "no data", reachable: "ok" }[state] || state;
}

function renderCounts() {
  const box = document.getElementById("counts");
  box.replaceChildren();
  for (const st of ["blocked", "outage", "vantage_problem", "unknown", "reachable"]) {
    const n = status.counts[st] || 0;
    if (n || st === "blocked") box.append(el("span", { class: "chip " + st, "data-state": st }, `${n} ${label(st)}`));
  }
  document.getElementById("updated").textContent = "updated " + clock(status.generated_at) + " UTC";
}

function renderMatrix() {
  const table = document.getElementById("matrix");
  const cells = status.cells;
  document.getElementById("matrix-empty").hidden = cells.length > 0;
  const targets = [...new Set(cells.map((c) => c.target))].sort();
  const regions = [...new Set(cells.map((c) => c.region))].sort();
  const by = new Map(cells.map((c) => [c.target + "\u0000" + c.region, c]));
  const head = el("tr", {}, el("th"), ...regions.map((r) => el("th", {}, r)));
  const rows = targets.map((t) =>
    el("tr", {}, el("th", { class: "target" }, t), ...regions.map((r) => {
      const c = by.get(t + "\u0000" + r);
      if (!c) return el("td", { class: "none" });
      const since = c.since ? "since " + ago(c.since) : (c.latest ? "seen " + ago(c.latest.started_at) + " ago" : "");
      const tip = [t + " in " + r + ": " + c.state, c.block ? c.block.summary : "", c.latest ? "latest: " + c.latest.outcome + " at " + c.latest.started_at : ""].filter(Boolean).join("\n");
      const td = el("td", { class: c.state, title: tip, "data-target": t, "data-region": r, "data-state": c.state }, el("b", {}, label(c.state)), since);
      if (c.block) td.addEventListener("click", () => { location.hash = "#block/" + c.block.seq; });
      return td;
    })));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

function pairBands(events, startKind, endKind, keyOf) {
  const open = new Map();
  const bands = [];
  for (const e of events) {
    const k = keyOf(e);
    if (e.kind === startKind && !open.has(k)) open.set(k, e);
    if (e.kind === endKind && open.has(k)) { bands.push({ key: k, from: open.get(k).onset, to: e.onset, e: open.get(k) }); open.delete(k); }
  }
  for (const [k, e] of open) bands.push({ key: k, from: e.onset, to: null, e });
  return bands;
}

async function renderTimelines() {
  const now = Date.now();
  const from = new Date(now - DAY).toISOString();
  const to = new Date(now).toISOString();
  const box = document.getElementById("timelines");
  const [blocks, outageEv, vantageEv] = await Promise.all([
    json(`/v1/blocks?from=${from}&limit=10000`),
    Promise.all(["outage_started", "outage_ended"].map((k) => lines(`/v1/events?kind=${k}&limit=100000`))),
    Promise.all(["vantage_down", "vantage_up"].map((k) => lines(`/v1/events?kind=${k}&limit=100000`))),
  ]);
  const bySeq = (a, b) => a.seq - b.seq;
  const outages = pairBands(outageEv.flat().sort(bySeq), "outage_started", "outage_ended", (e) => e.target);
  const vantages = pairBands(vantageEv.flat().sort(bySeq), "vantage_down", "vantage_up", (e) => e.agent_id + "\u0000" + e.region);
  const targets = [...new Set(status.cells.map((c) => c.target))].sort();
  const regions = [...new Set(status.cells.map((c) => c.region))].sort();
  const pos = (iso) => Math.min(100, Math.max(0, ((iso ? Date.parse(iso) : now) - (now - DAY)) / DAY * 100));
  const band = (cls, f, t, tip) => el("div", { class: "tl-band " + cls, title: tip, style: `left:${pos(f)}%;width:${Math.max(0.2, pos(t) - pos(f))}%` });
  const parts = [];
  for (const t of targets) {
    let mix = {};
    try { mix = (await json(`/v1/timeline?target=${encodeURIComponent(t)}&from=${from}&to=${to}&step=15m`)).regions || {}; } catch (e) { mix = {}; }
    const rows = regions.filter((r) => status.cells.some((c) => c.target === t && c.region === r)).map((r) => {
      const track = el("div", { class: "tl-track" });
      for (const b of mix[r] || []) {
        const failing = b.total ? (b.total - (b.outcomes.ok || 0)) / b.total : 0;
        if (failing > 0) track.append(el("div", { class: "tl-mix", title: `${b.start}: ${b.total} probes, ${Math.round(failing * 100)}% failing`, style: `left:${pos(b.start)}%;width:${100 / 96}%;height:${Math.round(failing * 100)}%` }));
      }
      for (const o of outages.filter((o) => o.key === t)) track.append(band("outage", o.from, o.to, `${t} outage from ${o.from}`));
      for (const v of vantages.filter((v) => v.e.region === r)) track.append(band("vantage", v.from, v.to, `vantage ${v.e.agent_id} down from ${v.from}`));
      for (const b of blocks.blocks.filter((b) => b.target === t && b.region === r)) {
        const x = band("block", b.onset, b.end, `${t} blocked in ${r} from ${b.onset}${b.end ? " to " + b.end : " (open)"}`);
        x.addEventListener("click", () => { location.hash = "#block/" + b.id; });
        track.append(x);
      }
      return el("div", { class: "tl-row" }, el("div", { class: "tl-label" }, r), track);
    });
    const axis = el("div", { class: "tl-axis" }, ...[24, 18, 12, 6, 0].map((h) => el("span", {}, h ? `-${h}h` : "now")));
    parts.push(el("div", { class: "timeline" }, el("h3", {}, t), ...rows, axis));
  }
  box.replaceChildren(...parts);
}

function eventItem(e) {
  const where = [e.target !== "*" ? e.target : null, e.region !== "*" ? e.region : null, e.agent_id].filter(Boolean).join(" / ");
  const li = el("li", {}, el("span", { class: "when" }, clock(e.detected_at)), el("span", { class: "kind " + e.kind }, e.kind), where, el("div", { class: "muted" }, e.summary || ""));
  if (e.kind === "block_started") { li.style.cursor = "pointer"; li.addEventListener("click", () => { location.hash = "#block/" + e.seq; }); }
  return li;
}

async function pollFeed() {
  const feed = document.getElementById("feed");
  try {
    const path = lastSeq ? `/v1/events?after=${lastSeq}&limit=1000` : "/v1/events?last=50";
    const evs = await lines(path);
    for (const e of evs) { lastSeq = Math.max(lastSeq, e.seq); feed.prepend(eventItem(e)); }
    while (feed.children.length > 200) feed.lastChild.remove();
    document.getElementById("feed-state").textContent = "live · " + clock(new Date().toISOString()) + " UTC";
    if (evs.length) { await refreshStatus(); }
  } catch (e) {
    document.getElementById("feed-state").textContent = "not updating: " + e.message;
  }
}

async function refreshAgents() {
  agents = await json("/v1/agents");
  const head = el("tr", {}, ...["agent", "region", "version", "state", "spool", "egress network", "last seen"].map((h) => el("th", {}, h)));
  const rows = Object.entries(agents).map(([id, a]) => {
    const state = a.silent ? "silent" : a.connected ? "connected" : a.stopped ? "stopped" : "disconnected";
    const net = a.egress ? [a.egress.asn ? "AS" + a.egress.asn : "", a.egress.as_org, a.egress.country].filter(Boolean).join(" · ") || a.egress.address : "";
    return el("tr", { "data-agent": id }, el("td", {}, id), el("td", {}, a.region), el("td", {}, a.version),
      el("td", {}, el("span", { class: "dot " + (a.silent ? "silent" : a.connected ? "on" : "off") }), state),
      el("td", {}, String(a.spooled)), el("td", {}, net), el("td", {}, ago(a.last_seen) + " ago"));
  });
  document.getElementById("agents").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

async function refreshStatus() {
  status = await json("/v1/status");
  renderCounts();
  renderMatrix();
}

/// "2 of 2 agents in hk saw openai's 403 unsupported_country_region_territory from 08:02:24; us, de fine."
function evidenceWords(b) {
  const inRegion = Object.values(agents).filter((a) => a.region === b.region).length;
  const failing = b.agents.length;
  const total = Math.max(inRegion, failing);
  const answer = b.dominant_outcome === "http_geo_blocked" || b.signature === "geo"
    ? `${b.target}'s refusal` : `${b.dominant_outcome || "failures"}`;
  const fine = status.cells.filter((c) => c.target === b.target && c.region !== b.region && c.state === "reachable").map((c) => c.region);
  let s = `${failing} of ${total} agent${total === 1 ? "" : "s"} in ${b.region} saw ${answer}`;
  if (b.summary) {
    const m = b.summary.match(/\b(\d{3})\b[^;]*?([a-z_]{6,})/);
    if (m && b.signature === "geo") s = `${failing} of ${total} agent${total === 1 ? "" : "s"} in ${b.region} saw ${b.target}'s ${m[1]} ${m[2]}`;
  }
  s += ` from ${clock(b.onset)} UTC`;
  s += fine.length ? `; ${fine.join(", ")} fine.` : ".";
  return s;
}

async function showBlock() {
  const page = document.getElementById("block-page");
  const m = location.hash.match(/^#block\/(\d+)$/);
  if (!m) { page.hidden = true; return; }
  const id = Number(m[1]);
  const res = await json(`/v1/blocks?after=${id - 1}&limit=1`);
  const b = res.blocks.find((x) => x.id === id);
  if (!b) { page.hidden = true; return; }
  document.getElementById("block-title").textContent = `${b.target} blocked in ${b.region}` + (b.end ? " (ended)" : " (open)");
  document.getElementById("block-words").textContent = evidenceWords(b);
  const facts = [["onset", b.onset], ["detected", `${b.detected_at} (${Math.round((Date.parse(b.detected_at) - Date.parse(b.onset)) / 1000)} s after onset)`],
    ["ended", b.end || "still open"], ["duration", ago(new Date(Date.now() - b.duration_seconds * 1000).toISOString())],
    ["signature", b.signature], ["dominant outcome", b.dominant_outcome], ["agents", b.agents.join(", ")],
    ["failing / ok", `${b.failing} / ${b.ok}`], ["summary", b.summary], ["event", `#${b.id}` + (b.ended_seq ? `, ended by #${b.ended_seq}` : "")]];
  document.getElementById("block-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "—")]));
  page.hidden = false;
  page.scrollIntoView({ behavior: "smooth" });
}

document.getElementById("auth-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = document.getElementById("auth-token").value.trim();
  localStorage.setItem("blockwatch_token", token);
  document.getElementById("auth").hidden = true;
  start();
});
document.querySelector("#block-page .close").addEventListener("click", (ev) => { ev.preventDefault(); location.hash = ""; });
window.addEventListener("hashchange", () => showBlock().catch(() => {}));

async function start() {
  try {
    await Promise.all([refreshStatus(), refreshAgents()]);
    await pollFeed();
    await renderTimelines();
    await showBlock();
    document.body.dataset.ready = "1";
  } catch (e) {
    document.getElementById("updated").textContent = e.message;
  }
}

start();
setInterval(() => pollFeed(), 2000);
setInterval(() => refreshStatus().catch(() => {}), 5000);
setInterval(() => refreshAgents().catch(() => {}), 10000);
setInterval(() => renderTimelines().catch(() => {}), 60000);
