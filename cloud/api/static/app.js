// EdgeGLM dashboard: plain JavaScript over the admin API (/api/...), charts drawn as inline SVG.
// Text from the API (the GLM's descriptions, ids) is always set with textContent, never as HTML.
"use strict";

const POLL_FEED_MS = 2000;
const POLL_FLEET_MS = 3000;
const POLL_POLICY_MS = 5000;
const POLL_CHARTS_MS = 10000;
const FEED_PAGE = 30;
const SILENT_AFTER_S = 60;
const PALETTE = ["#3f6fd8", "#1f9d63", "#d0453b", "#c98a12", "#8b5cf6", "#0e9aa7", "#db2777", "#65a30d"];
const SVG = "http://www.w3.org/2000/svg";

const state = { known: new Set(), older: [], cursor: null, edges: [], historyOpen: null, firstFeed: true };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function count(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString(); }

function ago(seconds) {
  if (!seconds) return "–";
  const d = Math.max(0, Date.now() / 1000 - seconds);
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

function clock(seconds) { return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "–"; }

function edgeColor(edgeId) {
  const index = state.edges.indexOf(edgeId);
  return PALETTE[(index < 0 ? state.edges.length : index) % PALETTE.length];
}

function markUpdated(ok) {
  $("updated").textContent = ok ? `updated ${new Date().toLocaleTimeString()}` : "cannot reach the API";
  document.querySelector(".live-dot").classList.toggle("stale", !ok);
}

// ------------------------------------------------------------------ health and fleet

async function refreshHealth() {
  const pill = $("health");
  try {
    const response = await fetch("/healthz");
    const body = await response.json();
    pill.textContent = body.status.toLowerCase().replace("_", " ");
    pill.className = `pill ${response.ok ? "ok" : "warn"}`;
    $("policy-version").textContent = `v${body.policy_version}`;
  } catch (err) {
    pill.textContent = "unreachable";
    pill.className = "pill bad";
  }
}

function edgeCard(edge) {
  const status = edge.status || {};
  const counters = status.counters || {};
  // The state the edge last reported, unless the cloud has not heard from it for a while.
  let stateName = edge.state && edge.state !== "unspecified" ? edge.state : "online";
  if (!edge.live) stateName = "stale";
  else if (!edge.connected && Date.now() / 1000 - edge.last_seen > SILENT_AFTER_S) stateName = "offline";
  const behind = edge.policy_version < edge.policy_version_current;
  return el("article", { class: "edge", "data-edge": edge.edge_id },
    el("div", { class: "edge-head" },
      el("span", { class: "edge-id", title: edge.site_id ? `site ${edge.site_id}` : "no site" }, edge.edge_id),
      el("span", { class: `pill ${stateName}`, title: edge.live ? "" : "last known before the cloud restarted" },
        stateName)),
    el("dl", { class: "kv" },
      el("dt", {}, "policy"),
      el("dd", { class: behind ? "behind" : "" },
        `v${edge.policy_version}` + (behind ? ` (v${edge.policy_version_current} pending)` : "")),
      el("dt", {}, "model"), el("dd", {}, [status.model_name || edge.model_name, status.model_version || edge.model_version]
        .filter(Boolean).join(" ") || "–"),
      el("dt", {}, "frames read"), el("dd", {}, count(counters.frames_read)),
      el("dt", {}, "mined / sent"), el("dd", {}, `${count(counters.samples_mined)} / ${count(counters.samples_sent)}`),
      el("dt", {}, "bytes sent"), el("dd", {}, bytes(counters.bytes_sent === undefined ? null : Number(counters.bytes_sent))),
      el("dt", {}, "outbox"), el("dd", {}, `${count(status.outbox_samples || 0)} (${bytes(Number(status.outbox_bytes || 0))})`),
      el("dt", {}, "samples at cloud"), el("dd", {}, count(edge.samples)),
      el("dt", {}, "last seen"), el("dd", {}, ago(edge.last_seen))));
}

async function refreshFleet() {
  const edges = await api("/api/edges");
  for (const edge of edges) if (!state.edges.includes(edge.edge_id)) state.edges.push(edge.edge_id);
  const box = $("edges");
  box.replaceChildren(...(edges.length ? edges.map(edgeCard) : [el("p", { class: "empty" }, "No edge has connected yet.")]));
  const online = edges.filter((e) => e.live && e.connected).length;
  const autonomous = edges.filter((e) => e.state === "autonomous").length;
  $("fleet-summary").replaceChildren(
    el("span", {}, el("strong", {}, edges.length), " edges"),
    el("span", {}, el("strong", {}, online), " connected"),
    el("span", {}, el("strong", {}, autonomous), " autonomous"));
  const select = $("f-edge");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "" }, "all edges"),
    ...state.edges.map((id) => el("option", { value: id, selected: id === chosen }, id)));
}

// ------------------------------------------------------------------ verdict feed

function filterQuery() {
  const params = new URLSearchParams({ limit: String(FEED_PAGE) });
  if ($("f-edge").value) params.set("edge_id", $("f-edge").value);
  if ($("f-decision").value) params.set("decision", $("f-decision").value);
  if ($("f-label").value.trim()) params.set("label", $("f-label").value.trim());
  return params;
}

// A sample is its edge's: (edge_id, sample_id) names it, as the store keys it.
const sampleKey = (v) => `${v.edge_id}\u0000${v.sample_id}`;
const sampleUrl = (v) => `/api/verdicts/${encodeURIComponent(v.edge_id)}/${encodeURIComponent(v.sample_id)}`;

function thumbnail(v, size) {
  if (!v.has_thumbnail) return el("div", { class: "thumb none" }, "no image");
  return el("img", {
    class: "thumb", loading: "lazy", alt: `sample ${v.sample_id}`, width: size, style: size ? `width:${size}px;height:auto` : null,
    src: `${sampleUrl(v)}/thumbnail.jpg`,
  });
}

function verdictItem(v, fresh) {
  const labels = v.labels.length ? v.labels.join(", ") : (v.edge_detections.map((d) => d.label).join(", ") || "nothing");
  const edgeSaw = v.edge_detections.map((d) => `${d.label} ${d.score.toFixed(2)}`).join(", ");
  return el("li", { class: `verdict${fresh ? " fresh" : ""}`, "data-sample-id": v.sample_id, "data-edge-id": v.edge_id, onclick: () => openDetail(v) },
    thumbnail(v),
    el("div", {},
      el("div", { class: "v-head" },
        el("span", { class: `pill ${v.decision}` }, v.decision),
        el("span", { class: "labels" }, labels),
        v.confidence !== null ? el("span", { class: "muted" }, `${Math.round(v.confidence * 100)}%`) : null,
        v.origin && v.origin !== "backend" ? el("span", { class: "pill warn", title: v.origin_detail }, v.origin) : null),
      el("p", { class: "desc" }, v.text || v.origin_detail || "(no description)"),
      el("div", { class: "meta" },
        el("span", { class: "edge-ref", style: `color:${edgeColor(v.edge_id)}` }, `${v.edge_id}${v.camera_id ? " / " + v.camera_id : ""}`),
        el("span", { title: new Date((v.decided_at || 0) * 1000).toISOString() }, clock(v.decided_at)),
        v.mined_reason ? el("span", {}, v.mined_reason.replaceAll("_", " ")) : null,
        edgeSaw ? el("span", { title: "what the edge detected" }, `edge: ${edgeSaw}`) : null,
        el("span", {}, `${v.backend}${v.model ? " · " + v.model : ""}`),
        el("code", { class: "sample-id" }, v.sample_id))));
}

function renderFeed(items) {
  const feed = $("feed");
  const all = items.concat(state.older.filter((o) => !items.some((i) => sampleKey(i) === sampleKey(o))));
  if (!all.length) { feed.replaceChildren(el("li", { class: "empty" }, "No verdict matches.")); return; }
  feed.replaceChildren(...all.map((v) => {
    const fresh = !state.firstFeed && !state.known.has(sampleKey(v));
    state.known.add(sampleKey(v));
    return verdictItem(v, fresh);
  }));
  state.firstFeed = false;
}

async function refreshFeed() {
  const page = await api(`/api/verdicts?${filterQuery()}`);
  if (!state.older.length) state.cursor = page.next_cursor;
  renderFeed(page.items);
  $("more").hidden = !state.cursor;
  state.latest = page.items;
}

async function loadOlder() {
  if (!state.cursor) return;
  const params = filterQuery();
  params.set("cursor", state.cursor);
  const page = await api(`/api/verdicts?${params}`);
  state.older = state.older.concat(page.items);
  state.cursor = page.next_cursor;
  renderFeed(state.latest || []);
  $("more").hidden = !state.cursor;
}

function resetFeed() {
  state.older = []; state.cursor = null; state.firstFeed = true;
  refreshFeed().catch(() => markUpdated(false));
}

async function openDetail(item) {
  const v = await api(sampleUrl(item));
  const rows = [
    ["sample", v.sample_id], ["edge / camera", `${v.edge_id} / ${v.camera_id || "–"}`], ["frame", v.frame_seq],
    ["decision", `${v.decision} (${v.confidence === null ? "–" : v.confidence.toFixed(2)})`],
    ["cloud labels", v.labels.join(", ") || "–"],
    ["edge detections", v.edge_detections.map((d) => `${d.label} ${d.score.toFixed(2)}`).join(", ") || "–"],
    ["mined because", v.mined_reason || "–"], ["backend", `${v.backend} ${v.model}`], ["origin", v.origin],
    ["policy at the edge", v.policy_version === null ? "–" : `v${v.policy_version}`], ["uplink", bytes(v.uplink_bytes)],
    ["captured", clock(v.captured_at)], ["received", clock(v.received_at)], ["decided", clock(v.decided_at)],
  ];
  $("detail-body").replaceChildren(
    el("h2", {}, el("span", { class: `pill ${v.decision}` }, v.decision), v.sample_id),
    el("p", { class: "desc" }, v.text || v.origin_detail || "(no description)"),
    el("div", { class: "detail-grid" }, thumbnail(v, 200),
      el("dl", { class: "kv" }, rows.map(([k, val]) => [el("dt", {}, k), el("dd", {}, val ?? "–")]))),
    el("h3", {}, "Verdict as sent"), el("pre", { class: "settings" }, JSON.stringify(v.verdict, null, 2)));
  $("detail").showModal();
}

// ------------------------------------------------------------------ charts

const TICKS = 4;

// A round tick step covering `value` in TICKS steps (whole numbers when `whole`).
function niceStep(value, whole) {
  const raw = Math.max(value / TICKS, whole ? 1 : 1e-9);
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const step of [1, 2, 2.5, 5, 10]) {
    const candidate = step * power;
    if (candidate >= raw && (!whole || Number.isInteger(candidate))) return candidate;
  }
  return 10 * power;
}

// series: [{name, color, dash, points: [[t, y], ...]}]; draws lines over [since, until] on a 0-based y axis.
function lineChart(target, series, since, until, format, whole) {
  const width = target.clientWidth || 600;
  const height = target.clientHeight || 190;
  const pad = { left: 52, right: 10, top: 10, bottom: 34 };
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  target.setAttribute("viewBox", `0 0 ${width} ${height}`);
  target.replaceChildren();
  const ymax = TICKS * niceStep(Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1]))), whole);
  const x = (t) => pad.left + ((t - since) / Math.max(1, until - since)) * w;
  const y = (v) => pad.top + h - (v / ymax) * h;
  for (let i = 0; i <= TICKS; i += 1) {
    const value = (ymax * i) / TICKS;
    target.append(svg("line", { class: "grid", x1: pad.left, x2: pad.left + w, y1: y(value), y2: y(value) }),
      svg("text", { x: pad.left - 6, y: y(value) + 3, "text-anchor": "end" }, format(value)));
  }
  for (let i = 0; i <= TICKS; i += 1) {
    const t = since + ((until - since) * i) / TICKS;
    const anchor = i === 0 ? "start" : i === TICKS ? "end" : "middle";
    target.append(svg("text", { x: x(t), y: pad.top + h + 14, "text-anchor": anchor },
      new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  target.append(svg("line", { class: "axis", x1: pad.left, x2: pad.left + w, y1: y(0), y2: y(0) }));
  if (!series.length) {
    target.append(svg("text", { class: "nodata", x: pad.left + w / 2, y: pad.top + h / 2, "text-anchor": "middle" }, "no data in this span"));
    return;
  }
  for (const s of series) {
    const path = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    target.append(svg("polyline", { class: "line", points: path, stroke: s.color, "stroke-dasharray": s.dash || "none" }));
    for (const p of s.points) {
      target.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: s.points.length > 60 ? 1.2 : 2.4, fill: s.color },
        svg("title", {}, `${s.name}: ${format(p[1])} at ${new Date(p[0] * 1000).toLocaleTimeString()}`)));
    }
  }
  const legend = svg("g", { class: "legend" });
  const names = [...new Set(series.map((s) => s.edge))];
  names.forEach((name, i) => {
    const lx = pad.left + i * 110;
    legend.append(svg("rect", { x: lx, y: height - 11, width: 10, height: 3, fill: edgeColor(name) }),
      svg("text", { x: lx + 14, y: height - 7 }, name));
  });
  target.append(legend);
}

// Zero-filled points per bucket so that a quiet bucket shows as 0, not as a line across the gap.
function filled(rows, key, since, until, bucket) {
  const byT = new Map(rows.map((r) => [r.t, r[key]]));
  const points = [];
  for (let t = Math.floor(since / bucket) * bucket; t < until; t += bucket) points.push([t + bucket / 2, byT.get(t) || 0]);
  return points;
}

async function refreshCharts() {
  const span = Number($("span").value);
  const bucket = Math.max(5, Math.round(span / 60));
  const until = Date.now() / 1000;
  const since = until - span;
  const query = `bucket_s=${bucket}&since=${since}&until=${until}`;
  const [uplink, mix] = await Promise.all([api(`/api/series/uplink?${query}`), api(`/api/series/verdicts?${query}`)]);
  for (const edge of Object.keys(uplink.series).concat(Object.keys(mix.series))) {
    if (!state.edges.includes(edge)) state.edges.push(edge);
  }
  const uplinkSeries = Object.entries(uplink.series).map(([edge, rows]) => ({
    edge, name: edge, color: edgeColor(edge), points: filled(rows, "bytes", since, until, bucket),
  }));
  lineChart($("chart-uplink"), uplinkSeries, since, until, bytes, false);
  const dashes = { confirmed: "none", rejected: "6 3", unsure: "1.5 3" };
  const mixSeries = Object.entries(mix.series).flatMap(([edge, rows]) =>
    Object.entries(dashes).map(([decision, dash]) => ({
      edge, name: `${edge} ${decision}`, color: edgeColor(edge), dash, points: filled(rows, decision, since, until, bucket),
    })));
  lineChart($("chart-verdicts"), mixSeries, since, until, (v) => String(Math.round(v)), true);
}

// ------------------------------------------------------------------ policy

function layer(title, entry, open) {
  return el("details", { class: "layer", open },
    el("summary", {}, el("strong", {}, title), el("span", { class: "pill" }, `v${entry.version}`),
      el("span", { class: "muted" }, ago(entry.issued_at))),
    el("pre", { class: "settings" }, JSON.stringify(entry.settings, null, 2)));
}

async function refreshPolicy() {
  const body = await api("/api/policies?limit=30");
  const current = body.current;
  $("policy-key").textContent = `signed by ${current.key_id}`;
  const layers = [layer("fleet", current.fleet, false)];
  for (const [id, entry] of Object.entries(current.sites)) layers.push(layer(`site ${id}`, entry, false));
  for (const [id, entry] of Object.entries(current.edges)) layers.push(layer(`edge ${id}`, entry, true));
  const openNow = new Set([...document.querySelectorAll("#layers details[open] strong")].map((s) => s.textContent));
  if (openNow.size) layers.forEach((d) => { d.open = openNow.has(d.querySelector("strong").textContent); });
  $("layers").replaceChildren(...layers);
  showRules(current.fleet.settings.mining.watch_rules || []);
  $("history").replaceChildren(...body.history.map((record) => el("tr", {
    class: state.historyOpen === record.version ? "selected" : "",
    "data-version": record.version,
    onclick: () => showHistory(record),
  },
  el("td", {}, `v${record.version}`),
  el("td", {}, record.scope + (record.scope_id ? ` ${record.scope_id}` : "")),
  el("td", { title: new Date(record.created_at * 1000).toISOString() }, ago(record.created_at)),
  el("td", { class: "reason" }, record.reason))));
}

// ------------------------------------------------------------------ watch rules (fleet policy)

// A change needs the operator's token in the Authorization header (cloud/api/auth.py: a session only
// reads); the token field is read for the one request and emptied, never stored.
async function changeRules(method, ruleId, body) {
  const token = $("rule-token").value;
  $("rule-token").value = "";
  const headers = { Accept: "application/json", "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`/api/policies/fleet/watch-rules/${encodeURIComponent(ruleId)}`,
    { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = answer.detail === undefined ? [] : [answer.detail].flat();
    const problems = detail.map((d) => (typeof d === "string" ? d : `${d.loc}: ${d.msg}`)).join("; ");
    throw new Error(`HTTP ${response.status}: ${problems || answer.error || "refused"}`);
  }
  return answer;
}

function words(value) { return value.split(",").map((w) => w.trim()).filter((w) => w); }

function showRules(rules) {
  $("rule-rows").replaceChildren(...(rules.length ? rules.map((rule) => el("tr", { "data-rule-id": rule.rule_id },
    el("td", { class: "mono" }, rule.rule_id), el("td", {}, rule.text), el("td", {}, rule.labels.join(", ")),
    el("td", {}, rule.camera_ids.length ? rule.camera_ids.join(", ") : "all"),
    el("td", {}, rule.severity + (rule.zone.length ? ` (zone of ${rule.zone.length} points)` : "")),
    el("td", {}, el("button", { type: "button", class: "rule-delete", onclick: async () => {
      try {
        const done = await changeRules("DELETE", rule.rule_id);
        $("rule-status").textContent = `removed ${rule.rule_id}: policy v${done.version}`;
        await refreshPolicy();
      } catch (error) { $("rule-status").textContent = `not removed: ${error.message}`; }
    } }, "remove"))))
    : [el("tr", {}, el("td", { colspan: 6, class: "empty" }, "No watch rule."))]));
}

$("rule-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const ruleId = $("rule-id").value.trim();
  const body = { text: $("rule-text").value.trim(), labels: words($("rule-labels").value),
    camera_ids: words($("rule-cameras").value), severity: $("rule-severity").value };
  try {
    const done = await changeRules("PUT", ruleId, body);
    $("rule-status").textContent = `saved ${ruleId}: policy v${done.version}`;
    $("rule-form").reset();
    await refreshPolicy();
  } catch (error) { $("rule-status").textContent = `not saved: ${error.message}`; }
});

function showHistory(record) {
  state.historyOpen = state.historyOpen === record.version ? null : record.version;
  const detail = $("history-detail");
  detail.hidden = state.historyOpen === null;
  detail.textContent = record.settings === null ? "(override removed)" : JSON.stringify(record.settings, null, 2);
  document.querySelectorAll("#history tr").forEach((row) => {
    row.classList.toggle("selected", Number(row.dataset.version) === state.historyOpen);
  });
}

// ------------------------------------------------------------------ closed loop (when the service runs it)

// The closed loop's per-camera rules, as the dashboard names them and shows their values.
const RULES = {
  motion_min_area_fraction: { title: "motion rule", value: (v) => `area ≥ ${v.toFixed(4)}`, hits: "rejected" },
  random_audit_rate: { title: "audit rate", value: (v) => `${(v * 100).toFixed(2)}% of frames`, hits: "contradicted" },
  watch_reask_interval_s: { title: "watch re-ask", value: (v) => (v > 0 ? `every ${v.toFixed(0)} s` : "off"), hits: "changed" },
};

function ratio(value) { return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`; }

async function refreshLoop() {
  const loop = await api("/api/closed-loop");
  $("loop").hidden = !loop.enabled;
  if (!loop.enabled) return;
  $("loop-targets").textContent = `(targets: recall ${ratio(loop.target_recall)}, precision ${ratio(loop.target_precision)})`;
  const rows = [];
  for (const [edge, classes] of Object.entries(loop.edges)) {
    for (const [label, entry] of Object.entries(classes)) {
      const last = entry.last_evaluation;
      rows.push(el("tr", {},
        el("td", { style: `color:${edgeColor(edge)}` }, edge), el("td", {}, label),
        el("td", { class: "mono" }, `${entry.band.low.toFixed(2)}–${entry.band.high.toFixed(2)}`),
        el("td", {}, `${count(entry.pairs)} (${count(entry.audit_pairs)} audit)`),
        el("td", {}, ratio(entry.recall)), el("td", {}, ratio(entry.precision)), el("td", {}, ratio(entry.upload)),
        el("td", { class: "reason", title: last ? last.why : "" }, last ? `${ago(last.at)}: ${last.why}` : "not yet")));
    }
  }
  for (const [edge, cameras] of Object.entries(loop.rules || {})) {
    for (const [camera, rules] of Object.entries(cameras)) {
      for (const [name, rule] of Object.entries(rules)) {
        const shown = RULES[name] || { title: name, value: (v) => String(v), hits: "against" };
        const last = rule.last_evaluation;
        const moves = rule.history.map((m) => `v${m.version} ${ago(m.at)}: ${shown.value(m.value)}, ${m.reason}`).join("\n");
        rows.push(el("tr", { title: moves, "data-rule": name },
          el("td", { style: `color:${edgeColor(edge)}` }, edge), el("td", {}, `${camera}: ${shown.title}`),
          el("td", { class: "mono" }, shown.value(rule.value)),
          el("td", {}, `${count(rule.samples)} (${count(rule.hits)} ${shown.hits})`),
          el("td", {}, "–"), el("td", {}, "–"), el("td", {}, `${rule.history.length} moves`),
          el("td", { class: "reason", title: last ? last.why : "" }, last ? `${ago(last.at)}: ${last.why}` : "not yet")));
      }
    }
  }
  $("loop-rows").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "empty" }, "No pair yet."))]));
}

// ------------------------------------------------------------------ model rollout (when the service has a registry)

async function refreshRollout() {
  const body = await api("/api/rollout");
  const rollout = body.enabled && body.rollout;
  $("rollout").hidden = !rollout;
  if (!rollout) return;
  $("rollout-stage").textContent = rollout.stage.replace("_", " ");
  $("rollout-stage").className = `pill ${rollout.stage === "rolled_back" ? "bad" : rollout.stage === "promoted" ? "ok" : "warn"}`;
  $("rollout-model").textContent = `${rollout.model.name} ${rollout.model.version}`;
  const judged = (j) => j.confirmed + j.rejected;
  $("rollout-health").textContent = `cloud rejects ${ratio(body.canary_rejection_rate)} of ${count(judged(rollout.canary))} `
    + `canary samples on it, ${ratio(body.baseline_rejection_rate)} of ${count(judged(body.baseline))} on the baseline `
    + `(${rollout.baseline_versions.map((v) => v || "configured").join(", ")}); `
    + `bound +${ratio(body.config.max_rejection_increase)}`;
  $("rollout-canaries").replaceChildren(...rollout.canaries.map((edge) => el("tr", { "data-canary": edge },
    el("td", { style: `color:${edgeColor(edge)}` }, edge),
    el("td", {}, rollout.switched[edge] ? ago(rollout.switched[edge]) : "not yet"))));
  $("rollout-history").replaceChildren(...rollout.history.map((entry) => el("li", {},
    el("strong", {}, entry.stage.replace("_", " ")), ` ${ago(entry.at)} by ${entry.who}: ${entry.why}`)));
}

// ------------------------------------------------------------------ polling

function every(ms, task) {
  const run = async () => {
    try { await task(); markUpdated(true); } catch (err) { console.warn(err); markUpdated(false); }
    setTimeout(run, ms);
  };
  run();
}

$("filters").addEventListener("change", resetFeed);
$("f-label").addEventListener("input", () => { clearTimeout(state.labelTimer); state.labelTimer = setTimeout(resetFeed, 400); });
$("filters").addEventListener("submit", (event) => { event.preventDefault(); resetFeed(); });
$("more").addEventListener("click", () => loadOlder().catch(() => markUpdated(false)));
$("span").addEventListener("change", () => refreshCharts().catch(() => markUpdated(false)));
window.addEventListener("resize", () => { clearTimeout(state.resizeTimer); state.resizeTimer = setTimeout(refreshCharts, 200); });

every(POLL_FLEET_MS, async () => { await refreshHealth(); await refreshFleet(); });
every(POLL_FEED_MS, refreshFeed);
every(POLL_POLICY_MS, async () => { await refreshPolicy(); await refreshLoop(); await refreshRollout(); });
every(POLL_CHARTS_MS, refreshCharts);
