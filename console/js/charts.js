// Small SVG charts, built with DOM calls (no markup strings): an endpoint's
// hourly success rate and its p50/p99 response times over the last 24 h.

import { h, s } from "./dom.js";

const hour = (iso) => new Date(iso).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

/** Totals of a GetEndpointStats answer. */
export function totals(stats) {
  const buckets = stats.buckets || [];
  const attempts = buckets.reduce((n, b) => n + Number(b.attempts || 0), 0);
  const successes = buckets.reduce((n, b) => n + Number(b.successes || 0), 0);
  return { attempts, successes, rate: attempts ? successes / attempts : null };
}

/** Bars of the hourly success rate; an hour without attempts is a dot. */
export function successChart(stats, { width = 240, height = 48 } = {}) {
  const buckets = stats.buckets || [];
  const n = Math.max(buckets.length, 1);
  const w = width / n;
  const t = totals(stats);
  const label = t.attempts ?
    `Success rate over 24 h: ${(100 * t.rate).toFixed(1)} % of ${t.attempts} attempts` :
    "No attempts in the last 24 h";
  const svg = s("svg", { class: "chart success", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label },
    s("title", {}, label),
    s("line", { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, class: "axis" }));
  buckets.forEach((b, i) => {
    const attempts = Number(b.attempts || 0);
    const ok = Number(b.successes || 0);
    const x = i * w + 1;
    if (!attempts) {
      svg.append(s("rect", { x, y: height - 2, width: Math.max(w - 2, 1), height: 2, class: "empty" },
        s("title", {}, `${hour(b.startTime)}: no attempts`)));
      return;
    }
    const rate = ok / attempts;
    const barH = Math.max(2, rate * (height - 4));
    svg.append(s("rect", { x, y: height - barH, width: Math.max(w - 2, 1), height: barH,
      class: rate >= 0.99 ? "good" : rate >= 0.9 ? "fair" : "bad" },
    s("title", {}, `${hour(b.startTime)}: ${ok}/${attempts} succeeded (${(100 * rate).toFixed(0)} %)`)));
  });
  return svg;
}

/** p50 and p99 response time lines, on one scale up to the largest p99. */
export function latencyChart(stats, { width = 240, height = 48 } = {}) {
  const buckets = stats.buckets || [];
  const n = Math.max(buckets.length, 1);
  const w = width / n;
  const p99s = buckets.map((b) => (b.p99ResponseTimeMs == null ? null : Number(b.p99ResponseTimeMs)));
  const p50s = buckets.map((b) => (b.p50ResponseTimeMs == null ? null : Number(b.p50ResponseTimeMs)));
  const max = Math.max(1, ...p99s.filter((v) => v != null));
  const y = (v) => height - 2 - (v / max) * (height - 6);
  const label = p99s.some((v) => v != null) ?
    `Response time over 24 h: p99 up to ${max} ms` : "No response times in the last 24 h";
  const svg = s("svg", { class: "chart latency", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label },
    s("title", {}, label),
    s("line", { x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, class: "axis" }));
  for (const [series, cls] of [[p99s, "p99"], [p50s, "p50"]]) {
    // Separate runs where hours have no attempts, so a gap shows as a gap.
    let run = [];
    const flush = () => {
      if (run.length === 1) svg.append(s("circle", { cx: run[0][0], cy: run[0][1], r: 1.5, class: cls }));
      if (run.length > 1) svg.append(s("polyline", { points: run.map((p) => p.join(",")).join(" "), class: cls }));
      run = [];
    };
    series.forEach((v, i) => {
      if (v == null) flush();
      else run.push([+(i * w + w / 2).toFixed(1), +y(v).toFixed(1)]);
    });
    flush();
  }
  buckets.forEach((b, i) => {
    if (b.p50ResponseTimeMs == null) return;
    svg.append(s("rect", { x: i * w, y: 0, width: w, height, class: "hover" },
      s("title", {}, `${hour(b.startTime)}: p50 ${b.p50ResponseTimeMs} ms, p99 ${b.p99ResponseTimeMs} ms`)));
  });
  return svg;
}

/** The legend under a latency chart. */
export function latencyLegend() {
  return h("span", { class: "legend" }, h("span", { class: "key p50" }, "p50"), " ", h("span", { class: "key p99" }, "p99"));
}
