// Pier's status page: reads the router's status JSON every few seconds and renders it. Read-only.
// Every value from the router (and so from an endpoint) reaches the page through textContent or a
// class name from a fixed list, never as HTML. Rows are keyed by name and updated in place, cell by cell,
// only where a value changed, so 200 endpoints and 1,000 models cost little per refresh.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const MAX_EVENTS = 60;
  const LIST_SHOWN = 6; // endpoint names shown in a model's cell before "+N more"
  const STATUSES = new Set(["healthy", "busy", "offline", "unhealthy", "config_error", "rate_limited", "unknown"]);
  const CIRCUITS = new Set(["closed", "open", "half_open"]);

  const $ = (id) => document.getElementById(id);
  const etags = new Map();
  const latest = { status: null, endpoints: null, models: null, rates: null };
  const received = { status: 0, endpoints: 0 };
  let eventsSince = null;

  // --- fetching -----------------------------------------------------------------------------------

  async function getJSON(url) {
    // Conditional GET by hand: a 304 means "unchanged, keep what you have" (undefined here).
    const headers = { Accept: "application/json" };
    const tag = etags.get(url);
    if (tag) headers["If-None-Match"] = tag;
    const response = await fetch(url, { headers, cache: "no-store" });
    if (response.status === 304) return undefined;
    if (!response.ok) throw new Error(`${url} answered ${response.status}`);
    const etag = response.headers.get("ETag");
    if (etag) etags.set(url, etag);
    return response.json();
  }

  // --- small DOM helpers ---------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, value) {
    const text = value === null || value === undefined ? "" : String(value);
    if (node._text !== text) {
      node._text = text;
      node.textContent = text;
    }
  }

  function setClass(node, value) {
    if (node.className !== value) node.className = value;
  }

  function setTitle(node, value) {
    if (node.title !== value) node.title = value;
  }

  // Put `rows` (already keyed) into `tbody` in this order, moving only rows out of place.
  function place(tbody, rows) {
    let cursor = tbody.firstChild;
    for (const row of rows) {
      if (row === cursor) cursor = cursor.nextSibling;
      else tbody.insertBefore(row, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      tbody.removeChild(cursor);
      cursor = next;
    }
  }

  function fmt(value, digits, unit) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toFixed(digits) + (unit || "");
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 90) return `${Math.round(seconds)}s ago`;
    if (seconds < 5400) return `${Math.round(seconds / 60)}m ago`;
    return `${Math.round(seconds / 3600)}h ago`;
  }

  function names(list) {
    if (list.length <= LIST_SHOWN) return list.join(", ");
    return `${list.slice(0, LIST_SHOWN).join(", ")} +${list.length - LIST_SHOWN} more`;
  }

  // --- endpoints ------------------------------------------------------------------------------------

  const endpointRows = new Map();

  function endpointRow(name) {
    const tr = el("tr");
    const cells = {};
    const add = (key, className, label) => {
      const td = el("td", className);
      if (label) td.dataset.label = label; // the field's name on a phone, where rows become cards
      tr.appendChild(td);
      cells[key] = td;
      return td;
    };
    const who = add("who");
    cells.name = who.appendChild(el("span", "name"));
    cells.url = who.appendChild(el("span", "sub"));
    const status = add("status", "", "Status");
    cells.badge = status.appendChild(el("span", "badge"));
    cells.reason = status.appendChild(el("span", "sub"));
    add("priority", "num", "Priority");
    add("latency", "num", "Latency");
    add("version", "", "DMR");
    add("inflight", "num", "In flight");
    const circuit = add("circuit", "", "Circuit");
    cells.circuitBadge = circuit.appendChild(el("span", "badge"));
    add("models", "", "Models");
    add("rps", "num", "Req/s");
    add("errors", "num", "Errors");
    add("p95", "num", "p95");
    tr.dataset.name = name;
    tr._cells = cells;
    setText(cells.name, name);
    return tr;
  }

  function reasonOf(ep) {
    if (ep.marked_down) return "marked down: a request could not connect";
    if (ep.last_error) return ep.last_error;
    if (!ep.known) return "no state from the health worker";
    if (ep.status !== "healthy" && ep.consecutive_failures) return `${ep.consecutive_failures} failed checks`;
    return "";
  }

  function warmCounts(models) {
    // endpoint -> number of models the warm-up worker has warm there
    const counts = new Map();
    if (!models) return counts;
    for (const row of Object.values(models)) {
      for (const [endpoint, warm] of Object.entries(row.warm || {})) {
        if (warm.phase === "warm") counts.set(endpoint, (counts.get(endpoint) || 0) + 1);
      }
    }
    return counts;
  }

  function renderEndpoints() {
    const data = latest.endpoints;
    if (!data) return;
    const since = (performance.now() - received.endpoints) / 1000;
    const warm = warmCounts(latest.models);
    const measured = latest.rates && latest.rates.enabled && latest.rates.window_s > 0; // a baseline exists
    const rates = measured ? latest.rates.endpoints : null;
    const filter = $("endpoint-filter").value.trim().toLowerCase();
    const rows = [];
    const seen = new Set();
    let shown = 0;
    for (const ep of data.endpoints) {
      const name = String(ep.name);
      let tr = endpointRows.get(name);
      if (!tr) {
        tr = endpointRow(name);
        endpointRows.set(name, tr);
      }
      seen.add(name);
      rows.push(tr);
      const c = tr._cells;
      const status = STATUSES.has(ep.status) ? ep.status : "unknown";
      setText(c.url, ep.url);
      setText(c.badge, ep.status);
      setClass(c.badge, `badge st-${status}`);
      tr.dataset.status = status;
      const checked = ep.state_age_s === null ? "" : `checked ${age(ep.state_age_s + since)}`;
      setText(c.reason, [reasonOf(ep), checked].filter(Boolean).join(" · "));
      setText(c.priority, ep.priority);
      setText(c.latency, fmt(ep.latency_ms, 0, " ms"));
      setText(c.version, ep.version || "–");
      const limit = ep.max_concurrent > 0 ? ` / ${ep.max_concurrent}` : "";
      setText(c.inflight, `${ep.in_flight}${limit}`);
      const circuit = ep.circuit && CIRCUITS.has(ep.circuit.state) ? ep.circuit.state : "closed";
      setText(c.circuitBadge, circuit.replaceAll("_", "-"));
      setClass(c.circuitBadge, `badge st-${circuit}`);
      const pulled = (ep.models || []).length;
      const loaded = (ep.loaded || []).length;
      setText(c.models, `${pulled} pulled · ${loaded} loaded · ${warm.get(name) || 0} kept warm`);
      // No entry while the rates are on: the router has sent it nothing yet.
      const rate = rates ? rates[name] || { requests_per_s: 0, error_rate: null, p95_ms: null } : null;
      setText(c.rps, rate ? fmt(rate.requests_per_s, 2) : "–");
      setText(c.errors, rate && rate.error_rate !== null ? fmt(rate.error_rate * 100, 1, "%") : "–");
      setText(c.p95, rate ? fmt(rate.p95_ms, 0, " ms") : "–");
      const hidden = filter !== "" && !name.toLowerCase().includes(filter);
      if (tr.hidden !== hidden) tr.hidden = hidden;
      if (!hidden) shown += 1;
    }
    for (const name of endpointRows.keys()) if (!seen.has(name)) endpointRows.delete(name);
    place($("endpoints").tBodies[0], rows);
    setText($("endpoint-count"), filter ? `${shown} of ${rows.length}` : `${rows.length}`);
    const note = $("rates-note");
    const off = latest.rates && !latest.rates.enabled ? latest.rates.reason : "";
    setText(note, off);
    note.hidden = !off;
  }

  // --- models ---------------------------------------------------------------------------------------

  const modelRows = new Map();

  function modelRow(name) {
    const tr = el("tr");
    const cells = {};
    const labels = { warm: "Warm", loading: "Loading", cold: "Cold", failed: "Failed" };
    for (const key of ["name", "warm", "loading", "cold", "failed"]) {
      const td = el("td", key === "name" ? "name" : `where ${key}`);
      if (labels[key]) td.dataset.label = labels[key];
      tr.appendChild(td);
      cells[key] = td;
    }
    tr.dataset.model = name;
    tr._cells = cells;
    setText(cells.name, name);
    return tr;
  }

  // Where one model is warm, loading or pulling, cold (pulled, not loaded) or failed (a warm-up error).
  function placesOf(row) {
    const loaded = new Set(row.loaded_on || []);
    const loading = new Set(row.loading_on || []);
    const warmStates = row.warm || {};
    const everywhere = new Set([
      ...(row.listed_on || []), ...(row.pulled_on || []), ...loaded, ...loading, ...Object.keys(warmStates),
    ]);
    const out = { warm: [], loading: [], cold: [], failed: [] };
    for (const endpoint of everywhere) {
      const phase = warmStates[endpoint] ? warmStates[endpoint].phase : null;
      if (loading.has(endpoint) || phase === "loading") out.loading.push(endpoint);
      else if (phase === "pulling") out.loading.push(`${endpoint} (pulling)`);
      else if (loaded.has(endpoint)) out.warm.push(endpoint);
      else if (phase === "failed") out.failed.push(endpoint);
      else out.cold.push(endpoint);
    }
    return out;
  }

  function renderModels() {
    const data = latest.models;
    if (!data) return;
    const filter = $("model-filter").value.trim().toLowerCase();
    const rows = [];
    const seen = new Set();
    let shown = 0;
    for (const [name, row] of Object.entries(data)) {
      let tr = modelRows.get(name);
      if (!tr) {
        tr = modelRow(name);
        modelRows.set(name, tr);
      }
      seen.add(name);
      rows.push(tr);
      const places = placesOf(row);
      for (const key of ["warm", "loading", "cold", "failed"]) {
        const list = places[key];
        setText(tr._cells[key], names(list));
        setTitle(tr._cells[key], list.length > LIST_SHOWN ? list.join(", ") : "");
      }
      const hidden = filter !== "" && !name.toLowerCase().includes(filter);
      if (tr.hidden !== hidden) tr.hidden = hidden;
      if (!hidden) shown += 1;
    }
    for (const name of modelRows.keys()) if (!seen.has(name)) modelRows.delete(name);
    place($("models").tBodies[0], rows);
    setText($("model-count"), filter ? `${shown} of ${rows.length}` : `${rows.length}`);
  }

  // --- summary and events ---------------------------------------------------------------------------

  function renderSummary() {
    const s = latest.status;
    if (!s) return;
    const e = s.endpoints || {};
    const parts = [
      `${e.routable ?? 0} of ${e.total ?? 0} endpoints routable`,
      `${s.models ?? 0} models`,
      `${(s.runtime && s.runtime.in_flight) || 0} in flight`,
      s.redis && s.redis.connected ? "Redis connected" : "Redis unreachable: routing on the last state",
      `router ${s.version} (${s.instance_id || "pid " + s.pid})`,
    ];
    setText($("summary"), parts.join(" · "));
    const link = $("grafana");
    const url = typeof s.grafana_url === "string" && /^https?:\/\//i.test(s.grafana_url) ? s.grafana_url : "";
    if (url) {
      if (link.getAttribute("href") !== url) link.setAttribute("href", url);
      link.hidden = false;
    } else {
      link.hidden = true;
    }
  }

  function describeEvent(ev) {
    switch (ev.kind) {
      case "status_changed":
        return `${ev.previous || "?"} → ${ev.status}${ev.reason ? ": " + ev.reason : ""}`;
      case "models_changed": {
        const bits = [];
        if (ev.added && ev.added.length) bits.push(`+ ${ev.added.join(", ")}`);
        if (ev.removed && ev.removed.length) bits.push(`− ${ev.removed.join(", ")}`);
        return bits.join("  ") || "models changed";
      }
      case "loaded_changed":
        return `loaded: ${(ev.loaded || []).join(", ") || "none"}${
          ev.loading && ev.loading.length ? "; loading: " + ev.loading.join(", ") : ""}`;
      case "version_changed":
        return `DMR ${ev.version || "?"}`;
      case "warm_changed":
        return `${ev.model}: ${ev.phase}${ev.reason ? " (" + ev.reason + ")" : ""}`;
      case "endpoint_added":
        return `added (${ev.status || "unknown"})`;
      case "endpoint_removed":
        return "removed";
      default:
        return ev.reason || "";
    }
  }

  function addEvents(list) {
    const ol = $("events");
    const fragment = document.createDocumentFragment();
    for (const ev of list) {
      const li = el("li");
      const when = new Date(ev.at * 1000);
      const time = li.appendChild(el("time", "", when.toLocaleTimeString()));
      time.dateTime = when.toISOString();
      li.appendChild(el("span", "kind", ev.kind.replaceAll("_", " ")));
      li.appendChild(el("span", "name", ev.endpoint));
      li.appendChild(document.createTextNode(" " + describeEvent(ev)));
      fragment.prepend(li); // newest first
    }
    ol.prepend(fragment);
    while (ol.children.length > MAX_EVENTS) ol.lastElementChild.remove();
  }

  async function pollEvents() {
    const query = eventsSince === null ? "limit=20" : `since=${encodeURIComponent(eventsSince)}&limit=100`;
    const data = await getJSON(`internal/events?${query}`);
    if (!data) return;
    eventsSince = data.last_id;
    if (data.events.length) addEvents(data.events);
  }

  // --- the loop -------------------------------------------------------------------------------------

  function problem(text) {
    const node = $("problem");
    setText(node, text);
    node.hidden = !text;
  }

  async function refresh() {
    const [status, endpoints, models, rates] = await Promise.all([
      getJSON("internal/status"),
      getJSON("internal/status/endpoints"),
      getJSON("internal/status/models"),
      getJSON("internal/status/rates"),
    ]);
    const now = performance.now();
    if (status !== undefined) { latest.status = status; received.status = now; }
    if (endpoints !== undefined) { latest.endpoints = endpoints; received.endpoints = now; }
    if (models !== undefined) latest.models = models;
    if (rates !== undefined) latest.rates = rates;
    const started = performance.now();
    renderSummary();
    renderEndpoints();
    if (models !== undefined) renderModels();
    // How long the last render held the main thread (the browser test's "no freezing" budget reads it).
    document.body.dataset.renderMs = (performance.now() - started).toFixed(1);
    try {
      await pollEvents();
    } catch (error) {
      problem(`routing changes unavailable: ${error.message}`);
      return;
    }
    problem("");
  }

  async function loop() {
    try {
      await refresh();
      setText($("updated"), `updated ${new Date().toLocaleTimeString()}`);
      document.body.dataset.ready = "true";
    } catch (error) {
      problem(`cannot reach the router: ${error.message}`);
    }
    setTimeout(loop, REFRESH_MS);
  }

  $("endpoint-filter").addEventListener("input", renderEndpoints);
  $("model-filter").addEventListener("input", renderModels);
  loop();
})();
