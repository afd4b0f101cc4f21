// The gateway's usage dashboard: reads /dashboard/usage (the /v1/usage answer) and /metrics,
// and draws tables and small SVG charts. No libraries, nothing loaded from elsewhere.
"use strict";

(() => {
  const KEY_STORE = "gateway-dashboard-key";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6feb", "#e16f24", "#1a7f37", "#8250df", "#cf222e", "#bf8700", "#0a7d8c",
                  "#6e7781"];
  const $ = (id) => document.getElementById(id);

  // --- formatting ------------------------------------------------------------------------
  const fmtInt = (n) => Math.round(n).toLocaleString("en-US");
  // Costs of a cent and more with 4 decimals (2 from $100); smaller ones with the digits they
  // need for three significant figures, so a request's $0.00000400 does not read as $0.0000.
  const fmtCost = (usd) => {
    if (usd >= 100) return "$" + usd.toFixed(2);
    if (usd >= 0.01 || !(usd > 0)) return "$" + usd.toFixed(4);
    return "$" + usd.toFixed(Math.min(10, 2 - Math.floor(Math.log10(usd))));
  };
  // Axis ticks: as many decimals as the step between ticks has, so no two ticks read alike.
  const tickCost = (step) => {
    let decimals = 0;
    while (decimals < 10 && Math.abs(Number(step.toFixed(decimals)) - step) > step * 1e-6) decimals++;
    return (usd) => "$" + usd.toFixed(decimals);
  };
  const fmtRate = (errors, requests) =>
    requests ? (100 * errors / requests).toFixed(1) + "%" : "0.0%";
  const fmtMs = (ms) => (ms == null ? "–" : ms >= 1000 ? (ms / 1000).toFixed(2) + " s"
                                                       : Math.round(ms) + " ms");
  const tokens = (row) => row.prompt_tokens + row.completion_tokens;
  const label = (value) => (value == null ? "(none)" : String(value));

  // --- DOM helpers -----------------------------------------------------------------------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    node.append(...children);
    return node;
  }

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    node.append(...children);
    return node;
  }

  function setText(id, text, value) {
    const node = $(id);
    node.textContent = text;
    if (value !== undefined) node.dataset.value = value;
  }

  function bar(fraction) {
    const width = Math.max(0, Math.min(1, fraction || 0)) * 100;
    return el("td", { class: "bar" },
      svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", "aria-hidden": "true" },
        svg("rect", { x: 0, y: 0, width: width.toFixed(2), height: 10, rx: 1 })));
  }

  // --- data ------------------------------------------------------------------------------
  class AuthNeeded extends Error {}

  // The last N UTC days, today included: what /v1/usage counts by default, and whole days,
  // as the Redis usage store counts them.
  function currentRange() {
    const days = Number(new FormData($("range")).get("days") || 7);
    const to = new Date();
    const from = new Date(Date.UTC(to.getUTCFullYear(), to.getUTCMonth(), to.getUTCDate() - days + 1));
    return { from: from.toISOString(), to: to.toISOString() };
  }

  async function fetchUsage(groupBy, range) {
    const params = new URLSearchParams({ group_by: groupBy, from: range.from, to: range.to });
    const headers = {};
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch("dashboard/usage?" + params, { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    const message = body.error ? body.error.message : response.statusText;
    if (response.status === 401 || response.status === 403) throw new AuthNeeded(message);
    if (!response.ok) throw new Error(`usage: HTTP ${response.status}: ${message}`);
    return body;
  }

  // Each budget's spend in its current period (none configured: an empty list).
  async function fetchBudgets() {
    const headers = {};
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.Authorization = "Bearer " + key;
    const response = await fetch("dashboard/budgets", { headers, cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    const message = body.error ? body.error.message : response.statusText;
    if (response.status === 401 || response.status === 403) throw new AuthNeeded(message);
    if (!response.ok) throw new Error(`budgets: HTTP ${response.status}: ${message}`);
    return body.data;
  }

  // Fallbacks are not in the usage records; /metrics counts them since the process started.
  // null: /metrics is not on this port (server.metrics_port) or did not answer.
  async function fetchFallbacks() {
    try {
      const response = await fetch("metrics", { cache: "no-store" });
      return response.ok ? parseFallbacks(await response.text()) : null;
    } catch {
      return null;
    }
  }

  function parseFallbacks(text) {
    const sums = new Map();
    for (const line of text.split("\n")) {
      const match = /^gateway_fallbacks_total\{(.*)\}\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      for (const [, name, value] of match[1].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
        labels[name] = value.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      }
      const id = [labels.from_model, labels.to_model, labels.reason].join("\u0000");
      const entry = sums.get(id) || { from_model: labels.from_model, to_model: labels.to_model,
                                      reason: labels.reason, count: 0 };
      entry.count += Number(match[2]);
      sums.set(id, entry);
    }
    return [...sums.values()].filter((e) => e.count > 0).sort((a, b) => b.count - a.count);
  }

  function utcDays(range) {
    const days = [];
    const day = new Date(range.from.slice(0, 10) + "T00:00:00Z");
    const last = new Date(range.to);
    for (; day <= last; day.setUTCDate(day.getUTCDate() + 1)) days.push(day.toISOString().slice(0, 10));
    return days;
  }

  // --- tables ----------------------------------------------------------------------------
  function renderBreakdown(table, dim, rows) {
    const max = {
      requests: Math.max(1, ...rows.map((r) => r.requests)),
      tokens: Math.max(1, ...rows.map(tokens)),
      cost: Math.max(1e-12, ...rows.map((r) => r.cost_usd)),
    };
    const head = el("tr", {}, el("th", {}, dim), el("th", {}, "requests"), el("th"),
      el("th", {}, "tokens"), el("th"), el("th", {}, "cost"), el("th"),
      el("th", {}, "cache hits"), el("th", {}, "saved"), el("th", {}, "errors"), el("th", {}, "error rate"), el("th", {}, "p50"), el("th", {}, "p95"));
    const sorted = [...rows].sort((a, b) => b.requests - a.requests);
    const body = sorted.map((row) => {
      const name = label(row[dim]);
      const cell = (field, text, value, extra = {}) =>
        el("td", { ["data-" + dim]: name, "data-field": field, "data-value": value, ...extra },
          text);
      return el("tr", { ["data-" + dim]: name },
        el("td", {}, name),
        cell("requests", fmtInt(row.requests), row.requests),
        bar(row.requests / max.requests),
        cell("tokens", fmtInt(tokens(row)), tokens(row),
          { title: `${fmtInt(row.prompt_tokens)} prompt + ${fmtInt(row.completion_tokens)} completion` }),
        bar(tokens(row) / max.tokens),
        cell("cost_usd", fmtCost(row.cost_usd), row.cost_usd),
        bar(row.cost_usd / max.cost),
        cell("cache_hits", fmtInt(row.cache_hits), row.cache_hits,
          { title: fmtRate(row.cache_hits, row.requests) + " of requests answered by the cache" }),
        cell("saved_usd", fmtCost(row.saved_usd), row.saved_usd,
          { title: "what the cache hits would have cost" }),
        cell("errors", fmtInt(row.errors), row.errors, row.errors ? { class: "bad" } : {}),
        cell("error_rate", fmtRate(row.errors, row.requests), row.requests ? row.errors / row.requests : 0),
        cell("latency_p50", fmtMs(row.latency_ms && row.latency_ms.p50), row.latency_ms ? row.latency_ms.p50 : ""),
        cell("latency_p95", fmtMs(row.latency_ms && row.latency_ms.p95), row.latency_ms ? row.latency_ms.p95 : ""));
    });
    table.replaceChildren(head, ...(body.length ? body : [emptyRow(13, "No requests in this range.")]));
  }

  function renderBudgets(rows) {
    $("budgets-section").hidden = rows.length === 0;
    const head = el("tr", {}, el("th", {}, "budget"), el("th", {}, "period"),
      el("th", {}, "cap"), el("th", {}, "spent"), el("th"), el("th", {}, "left"),
      el("th", {}, "resets"));
    const body = rows.map((row) => {
      const name = row.scope === "total" ? "total" : `${row.scope} ${row.name}`;
      const keys = { "data-scope": row.scope, "data-name": row.name };
      const cell = (field, text, value, extra = {}) =>
        el("td", { ...keys, "data-field": field, "data-value": value, ...extra }, text);
      const used = row.budget_usd > 0 ? row.spent_usd / row.budget_usd : 1;
      return el("tr", keys,
        el("td", {}, name),
        cell("period", row.period_id, row.period),
        cell("budget_usd", fmtCost(row.budget_usd), row.budget_usd),
        cell("spent_usd", fmtCost(row.spent_usd), row.spent_usd),
        bar(used),
        cell("remaining_usd", fmtCost(row.remaining_usd), row.remaining_usd,
          row.remaining_usd > 0 ? {} : { class: "bad" }),
        cell("resets_at", row.resets_at ? row.resets_at.slice(0, 16).replace("T", " ") : "never",
          row.resets_at || ""));
    });
    $("budgets").replaceChildren(head, ...body);
  }

  function renderErrors(rows) {
    const failing = rows.filter((r) => r.errors > 0).sort((a, b) => b.errors - a.errors);
    const head = el("tr", {}, el("th", {}, "feature"), el("th", {}, "model"),
      el("th", {}, "errors"), el("th", {}, "requests"), el("th", {}, "error rate"));
    const body = failing.map((row) => {
      const keys = { "data-feature": label(row.feature), "data-model": label(row.model) };
      return el("tr", keys,
        el("td", {}, label(row.feature)), el("td", {}, label(row.model)),
        el("td", { ...keys, "data-field": "errors", "data-value": row.errors, class: "bad" },
          fmtInt(row.errors)),
        el("td", { ...keys, "data-field": "requests", "data-value": row.requests },
          fmtInt(row.requests)),
        el("td", { ...keys, "data-field": "error_rate" }, fmtRate(row.errors, row.requests)));
    });
    $("errors").replaceChildren(head, ...(body.length ? body : [emptyRow(5, "No errors in this range.")]));
  }

  function renderFallbacks(entries) {
    const table = $("fallbacks");
    if (entries === null) {
      setText("total-fallbacks", "unavailable");
      $("fallbacks-status").textContent = "fallbacks: unavailable (metrics on a separate port)";
      table.replaceChildren();
      return;
    }
    const total = entries.reduce((sum, e) => sum + e.count, 0);
    setText("total-fallbacks", fmtInt(total), total);
    $("fallbacks-status").textContent = "";
    const head = el("tr", {}, el("th", {}, "from model"), el("th", {}, "to model"),
      el("th", {}, "reason"), el("th", {}, "fallbacks"));
    const body = entries.map((e) => {
      const keys = { "data-from-model": e.from_model, "data-to-model": e.to_model,
                     "data-reason": e.reason };
      return el("tr", keys, el("td", {}, e.from_model), el("td", {}, e.to_model),
        el("td", {}, e.reason),
        el("td", { ...keys, "data-field": "count", "data-value": e.count }, fmtInt(e.count)));
    });
    table.replaceChildren(head, ...(body.length ? body : [emptyRow(4, "No fallbacks so far.")]));
  }

  function emptyRow(span, text) {
    return el("tr", {}, el("td", { colspan: span, class: "muted" }, text));
  }

  // --- charts ----------------------------------------------------------------------------
  const W = 560, H = 220, LEFT = 52, RIGHT = 8, TOP = 8, BOTTOM = 22;

  // { series name: { day: value } } from rows grouped by day and `dim`.
  function seriesOf(rows, dim, value) {
    const out = new Map();
    for (const row of rows) {
      const name = label(row[dim]);
      if (!out.has(name)) out.set(name, {});
      out.get(name)[row.day] = (out.get(name)[row.day] || 0) + value(row);
    }
    return out;
  }

  function axes(days, { max, step }, format) {
    const plotH = H - TOP - BOTTOM;
    const parts = [];
    for (let i = 0; i * step <= max * 1.0001; i++) {
      const y = TOP + plotH - (plotH * i * step) / max;
      parts.push(svg("line", { class: "axis", x1: LEFT, x2: W - RIGHT, y1: y, y2: y }));
      parts.push(svg("text", { x: LEFT - 6, y: y + 3, "text-anchor": "end" }, format(i * step)));
    }
    const slot = (W - LEFT - RIGHT) / days.length;
    const every = Math.ceil(days.length / 10);
    days.forEach((day, i) => {
      if (i % every) return;
      parts.push(svg("text", { x: LEFT + slot * (i + 0.5), y: H - 6, "text-anchor": "middle" },
        day.slice(5)));
    });
    return parts;
  }

  function legend(names) {
    return el("div", { class: "legend" }, ...names.map((name, i) =>
      el("span", {}, svg("svg", { width: 10, height: 10, "aria-hidden": "true" },
        svg("rect", { width: 10, height: 10, rx: 2, fill: COLORS[i % COLORS.length] })), " " + name)));
  }

  function stackedBars(target, days, series, dim) {
    const names = [...series.keys()];
    const totals = days.map((d) => names.reduce((s, n) => s + (series.get(n)[d] || 0), 0));
    const scale = niceScale(Math.max(0, ...totals), true);
    const max = scale.max;
    const plotH = H - TOP - BOTTOM;
    const step = (W - LEFT - RIGHT) / days.length;
    const width = Math.max(2, step * 0.7);
    const bars = [];
    days.forEach((day, i) => {
      let base = 0;
      names.forEach((name, j) => {
        const value = series.get(name)[day] || 0;
        if (!value) return;
        const h = (plotH * value) / max;
        const y = TOP + plotH - ((plotH * base) / max) - h;
        bars.push(svg("rect", { x: (LEFT + step * i + (step - width) / 2).toFixed(1),
          y: y.toFixed(1), width: width.toFixed(1), height: h.toFixed(1),
          fill: COLORS[j % COLORS.length], "data-day": day, ["data-" + dim]: name,
          "data-value": value }, svg("title", {}, `${day} ${name}: ${fmtInt(value)}`)));
        base += value;
      });
    });
    target.replaceChildren(
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" }, ...axes(days, scale, fmtInt), ...bars),
      legend(names));
    target.className = "chart";
  }

  function lines(target, days, series, dim) {
    const names = [...series.keys()];
    const all = names.flatMap((n) => days.map((d) => series.get(n)[d] || 0));
    const scale = niceScale(Math.max(0, ...all), false);
    const max = scale.max;
    const plotH = H - TOP - BOTTOM;
    const step = (W - LEFT - RIGHT) / days.length;
    const marks = [];
    names.forEach((name, j) => {
      const color = COLORS[j % COLORS.length];
      const points = days.map((day, i) => {
        const value = series.get(name)[day] || 0;
        return [LEFT + step * (i + 0.5), TOP + plotH - (plotH * value) / max, day, value];
      });
      marks.push(svg("polyline", { fill: "none", stroke: color, "stroke-width": 2,
        points: points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ") }));
      for (const [x, y, day, value] of points) {
        marks.push(svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 3, fill: color,
          "data-day": day, ["data-" + dim]: name, "data-value": value },
          svg("title", {}, `${day} ${name}: ${fmtCost(value)}`)));
      }
    });
    target.replaceChildren(
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" },
        ...axes(days, scale, tickCost(scale.step)), ...marks),
      legend(names));
    target.className = "chart";
  }

  // An axis from 0 to a round maximum at or above `value`, in about four round steps.
  function niceScale(value, integer) {
    if (!(value > 0)) return { max: 1, step: integer ? 1 : 0.25 };
    const rough = value / 4;
    const power = 10 ** Math.floor(Math.log10(rough));
    const multiples = integer ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
    let step = multiples.map((m) => m * power).find((s) => s >= rough);
    if (integer) step = Math.max(1, step);
    return { max: step * Math.ceil(value / step - 1e-9), step };
  }

  // --- the page --------------------------------------------------------------------------
  async function load() {
    const range = currentRange();
    document.body.dataset.state = "loading";
    $("status").textContent = "Loading…";
    $("status").className = "muted";
    try {
      const [features, models, pairs, dayFeature, dayModel, fallbacks, budgets] =
        await Promise.all([
          fetchUsage("feature", range), fetchUsage("model", range),
          fetchUsage("feature,model", range), fetchUsage("day,feature", range),
          fetchUsage("day,model", range), fetchFallbacks(), fetchBudgets(),
        ]);
      const rows = features.data;
      const sum = (f) => rows.reduce((s, r) => s + f(r), 0);
      const requests = sum((r) => r.requests), errors = sum((r) => r.errors);
      const cost = sum((r) => r.cost_usd), tokenCount = sum(tokens);
      const hits = sum((r) => r.cache_hits), saved = sum((r) => r.saved_usd);
      setText("total-requests", fmtInt(requests), requests);
      setText("total-errors", fmtInt(errors), errors);
      setText("total-error-rate", fmtRate(errors, requests), requests ? errors / requests : 0);
      setText("total-tokens", fmtInt(tokenCount), tokenCount);
      setText("total-cost", fmtCost(cost), cost);
      setText("total-cache-hits", fmtInt(hits), hits);
      setText("total-saved", fmtCost(saved), saved);
      const when = (ts) => ts.slice(0, 16).replace("T", " ");
      $("window").textContent =
        `${when(features.from)} → ${when(features.to)} UTC · source: ${features.source}`;

      renderBreakdown($("features"), "feature", rows);
      renderBreakdown($("models"), "model", models.data);
      const days = utcDays(range);
      stackedBars($("chart-requests"), days, seriesOf(dayFeature.data, "feature", (r) => r.requests), "feature");
      lines($("chart-cost"), days, seriesOf(dayModel.data, "model", (r) => r.cost_usd), "model");
      renderBudgets(budgets);
      renderErrors(pairs.data);
      renderFallbacks(fallbacks);

      $("key-form").hidden = true;
      $("content").hidden = false;
      $("status").textContent = "Updated " + new Date().toLocaleTimeString("en-GB");
      document.body.dataset.state = "ready";
    } catch (error) {
      if (error instanceof AuthNeeded) {
        const hadKey = sessionStorage.getItem(KEY_STORE) !== null;
        sessionStorage.removeItem(KEY_STORE);
        $("key-error").textContent = hadKey ? error.message : "";
        $("key-form").hidden = false;
        $("content").hidden = true;
        $("status").textContent = "";
        document.body.dataset.state = "needs-key";
      } else {
        $("status").textContent = String(error.message || error);
        $("status").className = "error";
        document.body.dataset.state = "error";
      }
    }
  }

  $("range").addEventListener("change", load);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    $("key-input").value = "";
    load();
  });
  load();
})();
