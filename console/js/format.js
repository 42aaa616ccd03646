// Formatting of values for display. Everything returns plain strings (or
// DOM nodes built with textContent), never markup.

import { h } from "./dom.js";

export const STATUSES = ["PENDING", "SUCCEEDED", "FAILED", "HELD"];
export const CATEGORIES = [
  "timeout", "connect", "dns", "tls", "redirect", "http_4xx", "http_5xx", "http_other", "request", "blocked", "expired",
];

/** "EXECUTION_STATUS_FAILED" -> "FAILED". */
export function statusName(s) {
  return (s || "EXECUTION_STATUS_UNSPECIFIED").replace("EXECUTION_STATUS_", "");
}

export function statusBadge(s) {
  const name = statusName(s);
  return h("span", { class: `badge ${name.toLowerCase()}` }, name);
}

export function time(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString(undefined, { hour12: false });
}

/** "3 min" for a duration in milliseconds. */
export function age(ms) {
  if (ms < 0 || !Number.isFinite(ms)) return "";
  const sec = Math.round(ms / 1000);
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.round(sec / 60)} min`;
  if (sec < 86400) return `${(sec / 3600).toFixed(1)} h`;
  return `${(sec / 86400).toFixed(1)} d`;
}

export function ms(v) {
  return v === undefined || v === null || v === "" ? "" : `${Number(v)} ms`;
}

/**
 * A body for display: pretty-printed when it is JSON, the text itself
 * otherwise. Either way it lands in a <pre> as text, so markup stays text.
 */
export function body(text, truncated) {
  if (text === undefined || text === null || text === "") {
    return h("p", { class: "muted" }, "(empty)");
  }
  let shown = String(text);
  let kind = "text";
  if (!truncated) {
    try {
      shown = JSON.stringify(JSON.parse(shown), null, 2);
      kind = "json";
    } catch {
      // Not JSON: shown as it is.
    }
  }
  return h(
    "div",
    { class: "body" },
    h("pre", { class: `code ${kind}`, tabindex: "0" }, shown),
    truncated ? h("p", { class: "notice warn" }, "Truncated: only the first 10 KiB of the response is kept.") : null,
  );
}

/** An object (a payload) pretty-printed. */
export function json(value) {
  return h("pre", { class: "code json", tabindex: "0" }, JSON.stringify(value ?? {}, null, 2));
}
