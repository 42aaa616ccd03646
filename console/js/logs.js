// The log list: filters mapped onto ListWebhookLogs' query parameters (and
// its AIP-160 filter), keyset paging with the server's page tokens, and a
// live mode that follows WatchWebhookLogs with the same filters.

import { get, session, watch } from "./api.js";
import { field, h, mount, notice } from "./dom.js";
import { CATEGORIES, STATUSES, ms, statusBadge, statusName, time } from "./format.js";

const PAGE_SIZE = 25;
const LIVE_ROWS = 200;
const FILTERS = ["status", "type", "endpoint", "call", "category", "after", "before", "filter"];

/** "2026-11-30T10:15" (a local datetime-local value) -> RFC 3339 UTC. */
function utc(local) {
  if (!local) return "";
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** The filters as the list and watch routes take them. */
export function queryOf(f) {
  const q = { organizationId: session.org };
  if (f.status) q.executionStatus = `EXECUTION_STATUS_${f.status}`;
  if (f.endpoint) q.endpointId = f.endpoint;
  if (f.call) q.callId = f.call;
  if (f.category) q.errorCategory = f.category;
  const terms = [];
  // An exact type is a parameter; a pattern ("call.*") only the filter knows.
  if (f.type && f.type.includes("*")) terms.push(`webhook_type = ${JSON.stringify(f.type)}`);
  else if (f.type) q.webhookType = f.type;
  if (f.filter) terms.push(`(${f.filter})`);
  if (terms.length) q.filter = terms.join(" AND ");
  return q;
}

function select(name, label, options, value) {
  return field(label, h("select", { name },
    h("option", { value: "" }, "any"),
    options.map((o) => h("option", { value: o, selected: o === value }, o))));
}

function input(name, label, value, attrs = {}) {
  return field(label, h("input", { name, value: value || "", spellcheck: "false", ...attrs }));
}

function row(log, open) {
  const tr = h("tr", { tabindex: "0", class: "link", data: { requestId: log.requestId },
    "aria-label": `${statusName(log.executionStatus)} ${log.webhookType} ${log.requestId}` },
  h("td", {}, time(log.createdAt)),
  h("td", {}, statusBadge(log.executionStatus)),
  h("td", {}, log.webhookType || ""),
  h("td", { class: "target" }, log.endpointId ? `endpoint ${log.endpointId.slice(0, 8)}` : (log.webhookUrl || "")),
  h("td", { class: "num" }, log.httpStatusCode ?? ""),
  h("td", { class: "num" }, `${log.attemptCount || 0}`),
  h("td", { class: "num" }, ms(log.responseTimeMs)),
  h("td", {}, log.errorCategory || ""),
  h("td", { class: "mono" }, log.requestId));
  tr.addEventListener("click", () => open(log.requestId));
  return tr;
}

export function render(main, params) {
  const f = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || ""]));
  const token = params.get("page") || "";
  const live = params.get("live") === "1";
  const open = (id) => { location.hash = `#/requests/${encodeURIComponent(id)}`; };

  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter logs" },
    select("status", "Status", STATUSES, f.status),
    input("type", "Event type", f.type, { placeholder: "call.ended or call.*", data: { shortcut: "filter" } }),
    input("endpoint", "Endpoint ID", f.endpoint),
    input("call", "Call ID", f.call, { inputmode: "numeric" }),
    select("category", "Failure category", CATEGORIES, f.category),
    input("after", "From", f.after, { type: "datetime-local", step: "1" }),
    input("before", "To", f.before, { type: "datetime-local", step: "1" }),
    input("filter", "Filter expression", f.filter, { placeholder: "http_status_code >= 500", class: "wide" }),
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", onclick: () => { location.hash = "#/logs"; } }, "Clear")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const k of FILTERS) if (data.get(k)) next.set(k, String(data.get(k)).trim());
    if (live) next.set("live", "1");
    location.hash = `#/logs?${next}`;
  });

  const liveButton = h("button", { type: "button", "aria-pressed": String(live), class: live ? "live on" : "live" },
    live ? "● Live" : "Live");
  liveButton.addEventListener("click", () => {
    const next = new URLSearchParams(params);
    next.delete("page");
    if (live) next.delete("live"); else next.set("live", "1");
    location.hash = `#/logs?${next}`;
  });
  const liveState = h("span", { class: "muted", "aria-live": "polite", id: "live-state" });

  const tbody = h("tbody");
  const table = h("table", { class: "logs", "aria-label": "Webhook logs" },
    h("thead", {}, h("tr", {}, ["Created", "Status", "Event type", "Target", "HTTP", "Attempts", "Time", "Failure", "Request ID"]
      .map((c) => h("th", { scope: "col" }, c)))),
    tbody);
  table.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-request-id]");
    if (!tr) return;
    if (e.key === "Enter") {
      e.preventDefault();
      open(tr.dataset.requestId);
    } else if (e.key === "ArrowDown" || e.key === "j") {
      e.preventDefault();
      tr.nextElementSibling?.focus();
    } else if (e.key === "ArrowUp" || e.key === "k") {
      e.preventDefault();
      tr.previousElementSibling?.focus();
    }
  });

  const status = h("div", { "aria-live": "polite" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  mount(main,
    h("div", { class: "heading" }, h("h1", {}, "Logs"), liveButton, liveState),
    form, status, table, pager);

  const query = queryOf(f);
  if (f.after) query.createdAfter = utc(f.after);
  if (f.before) query.createdBefore = utc(f.before);

  (async () => {
    try {
      const page = await get("/v1/webhook-logs", { ...query, pageSize: PAGE_SIZE, pageToken: token, view: "LOG_VIEW_BASIC" });
      const logs = page.logs || [];
      mount(tbody, logs.map((l) => row(l, open)));
      if (!logs.length) mount(status, notice("info", "No logs match."));
      const buttons = [];
      if (token) {
        buttons.push(h("button", { type: "button", onclick: () => history.back() }, "← Previous"));
        const first = new URLSearchParams(params);
        first.delete("page");
        buttons.push(h("button", { type: "button", onclick: () => { location.hash = `#/logs?${first}`; } }, "First page"));
      }
      if (page.nextPageToken) {
        const next = new URLSearchParams(params);
        next.set("page", page.nextPageToken);
        next.delete("live");
        buttons.push(h("button", { type: "button", onclick: () => { location.hash = `#/logs?${next}`; } }, "Next page →"));
      }
      mount(pager, buttons);
    } catch (err) {
      mount(status, notice("error", `Could not list logs: ${err.message}`));
    }
  })();

  let stop = () => {};
  if (live) {
    // The watch takes the same filters but no time range: it starts now.
    const watchQuery = { ...queryOf(f) };
    stop = watch(watchQuery, (event) => {
      const log = event.log;
      if (!log) return;
      const fresh = row(log, open);
      fresh.classList.add("arrived");
      const old = tbody.querySelector(`tr[data-request-id="${CSS.escape(log.requestId)}"]`);
      if (old) {
        const focused = document.activeElement === old;
        old.replaceWith(fresh);
        if (focused) fresh.focus();
      } else {
        tbody.prepend(fresh);
        while (tbody.children.length > LIVE_ROWS) tbody.lastElementChild.remove();
      }
      status.replaceChildren();
    }, (state, err) => {
      liveState.textContent = state === "live" ? "following new attempts" :
        state === "reconnecting" ? "reconnecting…" : err ? `stopped: ${err.message}` : "";
      liveState.dataset.state = state;
    });
  }
  return { cleanup: () => stop() };
}
