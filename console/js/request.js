// One request: every attempt (newest first) with its status, timing,
// failure category, the body sent, the response body and the headers sent
// (secrets left out), and Resend. The page follows the live tail while it
// is open, so a resent delivery's new attempt appears by itself.

import { ApiError, get, post, session, watch } from "./api.js";
import { h, mount, notice } from "./dom.js";
import { body, json, ms, statusBadge, statusName, time } from "./format.js";

/**
 * The headers hookpost sent with an attempt, as its delivery code builds
 * them, minus the secret-derived signature's value. The endpoint's own
 * headers (set on the endpoint) are named but their values not shown.
 */
function headersSent(log, attempt, endpointHeaders) {
  const rows = [
    ["content-type", "application/json"],
    ["webhook-id", log.messageId || ""],
    ["webhook-timestamp", String(Math.floor(Date.parse(attempt.createdAt) / 1000))],
    ["webhook-signature", "(derived from the signing secret: not shown)"],
    ["x-hookpost-request-id", log.requestId],
    ["x-hookpost-event", log.webhookType],
    ["x-hookpost-attempt", String(attempt.attemptNumber || "")],
  ];
  for (const name of endpointHeaders) rows.push([name.toLowerCase(), "(set on the endpoint: not shown)"]);
  return h("table", { class: "headers", "aria-label": "Headers sent" },
    h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}

function attemptView(log, a, first, endpointHeaders) {
  const outcome = [
    `#${a.attemptNumber}`,
    statusName(a.executionStatus),
    a.httpStatusCode ? `HTTP ${a.httpStatusCode}` : "no response",
    ms(a.responseTimeMs || 0),
    a.errorCategory || "",
    a.manual ? "manual" : "",
    time(a.createdAt),
  ].filter(Boolean).join(" · ");
  return h("details", { class: "attempt", open: first, data: { attempt: a.attemptNumber } },
    h("summary", {}, statusBadge(a.executionStatus), " ", outcome),
    a.errorMessage ? notice("error", a.errorMessage) : null,
    h("h4", {}, "Headers sent"),
    headersSent(log, a, endpointHeaders),
    h("h4", {}, "Request body"),
    body(a.requestBody),
    h("h4", {}, "Response body"),
    h("div", { class: "response" }, body(a.responseBody, a.responseTruncated)));
}

export function render(main, id) {
  const requestId = decodeURIComponent(id);
  const back = () => { location.hash = "#/logs"; };
  const status = h("div", { "aria-live": "polite", class: "status-line" });
  const summary = h("section", { "aria-label": "Request" });
  const attempts = h("section", { class: "attempts", "aria-label": "Attempts" });
  const liveState = h("span", { class: "muted", id: "live-state" });
  const resend = h("button", { type: "button", class: "primary", id: "resend" }, "Resend");
  mount(main,
    h("div", { class: "heading" },
      h("button", { type: "button", class: "back", onclick: back }, "← Logs"),
      h("h1", {}, "Request ", h("span", { class: "mono" }, requestId)),
      resend, liveState),
    status, summary, attempts);

  let endpointHeaders = [];
  let endpointLooked = false;
  let log = null;
  let gone = false;

  async function lookUpEndpoint() {
    // Named headers of the endpoint, when it is in the workspace the console
    // was pointed at (the REST route is per workspace).
    endpointLooked = true;
    if (!log.endpointId || !session.workspace) return;
    try {
      const org = encodeURIComponent(session.org);
      const ws = encodeURIComponent(session.workspace);
      const e = await get(`/organizations/${org}/workspaces/${ws}/webhook-subscriptions/${encodeURIComponent(log.endpointId)}`);
      endpointHeaders = Object.keys((e.endpoint && e.endpoint.headers) || {});
    } catch {
      // Another workspace's endpoint: its own headers stay unnamed.
    }
  }

  async function refresh() {
    try {
      const d = await get(`/v1/webhook-logs/${encodeURIComponent(requestId)}`, { organizationId: session.org });
      if (gone) return;
      log = d.log;
      if (!endpointLooked) await lookUpEndpoint();
      const rows = [
        ["Status", statusBadge(log.executionStatus)],
        ["Event type", log.webhookType],
        ["Target", log.webhookUrl],
        ["Endpoint", log.endpointId ? h("a", { href: `#/endpoints/${encodeURIComponent(log.endpointId)}` }, log.endpointId) : "—"],
        ["Message ID (webhook-id)", log.messageId || ""],
        ["Call ID", log.callId || "—"],
        ["Created", time(log.createdAt)],
        ["Attempts", `${log.attemptCount || 0} made (retries allowed: ${log.maxRetries || 0})`],
        ["Next attempt", log.nextAttemptAt ? time(log.nextAttemptAt) : "—"],
        ["Expires", log.expireTime ? time(log.expireTime) : "—"],
      ];
      mount(summary,
        h("dl", { class: "summary" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        h("h2", {}, "Payload"),
        json(log.payload));
      const list = d.attempts || [];
      mount(attempts,
        h("h2", {}, `Attempts (${list.length})`),
        list.length ? list.map((a, i) => attemptView(log, a, i === 0, endpointHeaders)) :
          h("p", { class: "muted" }, "No attempt yet."));
      const settled = ["EXECUTION_STATUS_SUCCEEDED", "EXECUTION_STATUS_FAILED"].includes(log.executionStatus);
      resend.disabled = !settled;
      resend.title = settled ? "Send it again now" : "Only a settled (succeeded or failed) delivery can be resent";
      return log;
    } catch (err) {
      mount(status, notice("error", err instanceof ApiError && err.status === 404 ?
        "No such request in this organization." : `Could not load the request: ${err.message}`));
      return null;
    }
  }

  let stop = () => {};
  (async () => {
    const first = await refresh();
    if (!first || gone) return;
    // Follow the tail for this request's event type; the route has no
    // request filter, so other requests' events are skipped here.
    stop = watch({ organizationId: session.org, webhookType: first.webhookType }, (event) => {
      if (event.log && event.log.requestId === requestId) refresh();
    }, (state) => {
      liveState.textContent = state === "live" ? "live" : state === "reconnecting" ? "reconnecting…" : "";
      liveState.dataset.state = state;
      // Whatever happened before the stream opened is read once more.
      if (state === "live") refresh();
    });
  })();

  resend.addEventListener("click", async () => {
    resend.disabled = true;
    try {
      await post(`/v1/webhook-logs/${encodeURIComponent(requestId)}:redeliver`, { organizationId: session.org });
      mount(status, notice("info", "Sent again: its new attempt appears below as soon as it is made."));
      await refresh();
    } catch (err) {
      mount(status, notice("error", `Resend failed: ${err.message}`));
      resend.disabled = false;
    }
  });

  return {
    cleanup: () => { gone = true; stop(); },
    onEscape: back,
  };
}
