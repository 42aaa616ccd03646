// Endpoints (webhook subscriptions): the list with each one's last day and
// queue at a glance, creation (the secret shown once), editing (URL, event
// filter, policy), pause and resume, secret rotation, and recovery of a
// window's failed deliveries (a dry-run count first).

import { ApiError, call, get, post, session, subscriptions } from "./api.js";
import { field, h, mount, notice } from "./dom.js";
import { CATEGORIES, age, time } from "./format.js";
import { latencyChart, latencyLegend, successChart, totals } from "./charts.js";

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

function failure(err) {
  const lines = err instanceof ApiError ? err.violations : [];
  return notice("error", lines.length ? `${err.message}: ${lines.join("; ")}` : err.message);
}

function stateOf(e) {
  if (e.disabled) return h("span", { class: "badge failed", title: e.disabledReason || "" }, "disabled");
  if (e.paused) return h("span", { class: "badge held" }, "paused");
  return h("span", { class: "badge succeeded" }, "active");
}

/** Asks for the workspace when the session has none; true when it has one. */
function workspaceGate(main, then) {
  if (UUID.test(session.workspace)) return true;
  const ws = h("input", { name: "workspace", required: true, spellcheck: "false", pattern: UUID.source.slice(1, -1) });
  const form = h("form", { class: "card" },
    h("h1", {}, "Endpoints"),
    h("p", {}, "Endpoints belong to a workspace of the organization. Which one?"),
    field("Workspace ID", ws),
    h("button", { type: "submit", class: "primary" }, "Open"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    session.workspace = ws.value.trim();
    then();
  });
  mount(main, form);
  ws.focus();
  return false;
}

function queueText(stats) {
  const pending = Number(stats.pendingCount || 0);
  const held = Number(stats.heldCount || 0);
  const oldest = stats.oldestPendingCreateTime ? age(Date.now() - Date.parse(stats.oldestPendingCreateTime)) : "";
  return [`${pending} pending`, held ? `${held} held` : "", oldest ? `oldest ${oldest}` : ""].filter(Boolean).join(" · ");
}

export function renderList(main) {
  if (!workspaceGate(main, () => renderList(main))) return {};
  const status = h("div", { "aria-live": "polite" });
  const tbody = h("tbody");
  const open = (id) => { location.hash = `#/endpoints/${encodeURIComponent(id)}`; };
  const table = h("table", { class: "endpoints", "aria-label": "Endpoints" },
    h("thead", {}, h("tr", {}, ["URL", "Events", "State", "Success (24 h)", "Response time (24 h)", "Queue"]
      .map((c) => h("th", { scope: "col" }, c)))),
    tbody);
  table.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-endpoint-id]");
    if (!tr) return;
    if (e.key === "Enter") { e.preventDefault(); open(tr.dataset.endpointId); }
    if (e.key === "ArrowDown" || e.key === "j") { e.preventDefault(); tr.nextElementSibling?.focus(); }
    if (e.key === "ArrowUp" || e.key === "k") { e.preventDefault(); tr.previousElementSibling?.focus(); }
  });
  const more = h("nav", { class: "pager" });
  const workspace = h("button", { type: "button", onclick: () => { session.workspace = ""; renderList(main); } },
    "Change workspace");
  mount(main,
    h("div", { class: "heading" }, h("h1", {}, "Endpoints"),
      h("a", { class: "button primary", href: "#/endpoints/new", id: "new-endpoint" }, "New endpoint"),
      h("span", { class: "muted" }, `workspace ${session.workspace}`), workspace),
    status, table, more);

  async function load(token) {
    try {
      const page = await get(subscriptions(), { pageSize: 50, pageToken: token });
      const list = page.endpoints || [];
      if (!list.length && !token) mount(status, notice("info", "No endpoints in this workspace yet."));
      for (const e of list) {
        const success = h("td", { class: "chart-cell" });
        const latency = h("td", { class: "chart-cell" });
        const queue = h("td", {});
        const tr = h("tr", { tabindex: "0", class: "link", data: { endpointId: e.endpointId }, "aria-label": e.url },
          h("td", { class: "target" }, e.url),
          h("td", {}, (e.eventTypes || []).join(", ") || "every event"),
          h("td", {}, stateOf(e)), success, latency, queue);
        tr.addEventListener("click", () => open(e.endpointId));
        tbody.append(tr);
        get(subscriptions(`/${encodeURIComponent(e.endpointId)}/stats`)).then((stats) => {
          const t = totals(stats);
          mount(success, successChart(stats, { width: 144, height: 28 }),
            h("span", { class: "figure" }, t.rate == null ? "—" : `${(100 * t.rate).toFixed(1)} %`));
          mount(latency, latencyChart(stats, { width: 144, height: 28 }));
          queue.textContent = queueText(stats);
        }, (err) => { queue.textContent = `stats unavailable: ${err.message}`; });
      }
      mount(more, page.nextPageToken ?
        h("button", { type: "button", onclick: () => load(page.nextPageToken) }, "More") : null);
    } catch (err) {
      mount(status, failure(err));
    }
  }
  load("");
  return {};
}

/** The endpoint form's fields, prefilled from `e` (none for a new one). */
function endpointForm(e, submitLabel, onSubmit) {
  const p = (e && e.policy) || {};
  const seconds = (d) => (d ? String(parseFloat(d)) : "");
  const url = h("input", { name: "url", type: "url", required: true, value: (e && e.url) || "", spellcheck: "false",
    placeholder: "https://example.com/webhooks" });
  const description = h("input", { name: "description", value: (e && e.description) || "" });
  const events = h("input", { name: "eventTypes", value: ((e && e.eventTypes) || []).join(", "),
    placeholder: "empty: every event; or call.*, call.ended" });
  const maxRetries = h("input", { name: "maxRetries", type: "number", min: 0, max: 50, value: p.maxRetries ?? "" });
  const schedule = h("input", { name: "retrySchedule", value: (p.retrySchedule || []).map(seconds).join(", "),
    placeholder: "seconds, e.g. 5, 60, 600 (empty: exponential)" });
  const timeout = h("input", { name: "attemptTimeout", type: "number", min: 1, max: 60, value: seconds(p.attemptTimeout) });
  const rate = h("input", { name: "rateLimitPerSecond", type: "number", min: 1, max: 10000, value: p.rateLimitPerSecond ?? "" });
  const inFlight = h("input", { name: "maxInFlight", type: "number", min: 1, max: 1000, value: p.maxInFlight ?? "" });
  const scheme = e ? null : h("select", { name: "signatureScheme" },
    h("option", { value: "SIGNATURE_SCHEME_HMAC_SHA256" }, "HMAC-SHA256 (whsec_ secret)"),
    h("option", { value: "SIGNATURE_SCHEME_ED25519" }, "ed25519 (public key for receivers)"));
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card endpoint-form" },
    field("URL", url),
    field("Description", description),
    field("Event types", events, "Comma-separated; exact names or prefixes with *"),
    scheme ? field("Signature scheme", scheme) : null,
    h("fieldset", {}, h("legend", {}, "Delivery policy (empty: the server's default)"),
      field("Max retries", maxRetries), field("Retry schedule", schedule), field("Attempt timeout (s)", timeout),
      field("Rate limit (per second)", rate), field("Max in flight", inFlight)),
    h("button", { type: "submit", class: "primary" }, submitLabel),
    status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const n = (input) => (input.value === "" ? undefined : Number(input.value));
    const policy = {
      maxRetries: n(maxRetries),
      retrySchedule: schedule.value.split(",").map((v) => v.trim()).filter(Boolean).map((v) => `${Number(v)}s`),
      attemptTimeout: timeout.value ? `${Number(timeout.value)}s` : undefined,
      rateLimitPerSecond: n(rate),
      maxInFlight: n(inFlight),
    };
    const endpoint = {
      url: url.value.trim(),
      description: description.value,
      eventTypes: events.value.split(",").map((v) => v.trim()).filter(Boolean),
      policy,
    };
    if (scheme) endpoint.signatureScheme = scheme.value;
    try {
      await onSubmit(endpoint, status);
    } catch (err) {
      mount(status, failure(err));
    }
  });
  return { form, focus: () => url.focus() };
}

/** A secret shown once, with a way to copy it and to dismiss it. */
function secretOnce(secret, what) {
  const code = h("code", { id: "secret-once", class: "secret", tabindex: "0" }, secret);
  const box = h("div", { class: "card secret-box", role: "status", "aria-label": "New signing secret" },
    h("h2", {}, what),
    h("p", {}, "Shown this once: store it with the receiver now."),
    code,
    h("div", { class: "actions" },
      h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(secret).catch(() => {}) }, "Copy"),
      h("button", { type: "button", onclick: () => box.remove() }, "Done")));
  return box;
}

export function renderNew(main) {
  if (!workspaceGate(main, () => renderNew(main))) return {};
  const done = h("div");
  const { form, focus } = endpointForm(null, "Create endpoint", async (endpoint) => {
    const created = await post(subscriptions(), endpoint);
    const e = created.endpoint;
    form.remove();
    mount(done,
      notice("info", `Endpoint created: ${e.url}`),
      secretOnce(created.secret, "Signing secret"),
      e.publicKey ? h("p", {}, "Public key for receivers: ", h("code", {}, e.publicKey)) : null,
      h("a", { href: `#/endpoints/${encodeURIComponent(e.endpointId)}`, class: "button", id: "open-endpoint" }, "Open the endpoint"));
    done.querySelector("#secret-once")?.focus();
  });
  mount(main,
    h("div", { class: "heading" },
      h("button", { type: "button", class: "back", onclick: () => { location.hash = "#/endpoints"; } }, "← Endpoints"),
      h("h1", {}, "New endpoint")),
    form, done);
  focus();
  return { onEscape: () => { location.hash = "#/endpoints"; } };
}

function localInput(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Recovery of a window's failed deliveries: count first, then run and follow the operation. */
function recoverPanel(endpointId, alive) {
  const now = new Date();
  const from = h("input", { type: "datetime-local", name: "start", value: localInput(new Date(now - 24 * 3600e3)) });
  const to = h("input", { type: "datetime-local", name: "end", value: localInput(new Date(now.getTime() + 60e3)) });
  const category = h("select", { name: "errorCategory" }, h("option", { value: "" }, "any"),
    CATEGORIES.map((c) => h("option", { value: c }, c)));
  const count = h("button", { type: "button", id: "recover-count" }, "Count failed deliveries");
  const run = h("button", { type: "button", class: "primary", id: "recover-run", disabled: true }, "Recover them");
  const out = h("div", { "aria-live": "polite", id: "recover-result" });
  const org = encodeURIComponent(session.org);
  const body = (dryRun) => ({
    endpointId, dryRun,
    startTime: new Date(from.value).toISOString(),
    endTime: new Date(to.value).toISOString(),
    errorCategory: category.value || undefined,
  });
  const path = `/organizations/${org}/webhook-logs:recover`;
  for (const input of [from, to, category]) input.addEventListener("change", () => { run.disabled = true; });
  count.addEventListener("click", async () => {
    try {
      const r = await post(path, body(true));
      const matched = Number(r.matched || 0);
      mount(out, notice("info", `${matched} failed ${matched === 1 ? "delivery matches" : "deliveries match"}.`));
      run.disabled = matched === 0;
    } catch (err) {
      mount(out, failure(err));
    }
  });
  run.addEventListener("click", async () => {
    run.disabled = true;
    try {
      let op = (await post(path, body(false))).operation;
      const show = () => mount(out, h("p", { class: "operation", "data-done": String(Boolean(op.done)) },
        `Operation ${op.operationId}: ${op.done ? "done" : "running"}, matched ${op.matched || 0}, recovered ${op.recovered || 0}`,
        op.error ? ` — ${op.error}` : ""));
      show();
      while (!op.done && alive()) {
        await new Promise((r) => setTimeout(r, 500));
        op = (await get(`/organizations/${org}/operations/${encodeURIComponent(op.operationId)}`)).operation;
        if (alive()) show();
      }
    } catch (err) {
      mount(out, failure(err));
    }
  });
  return h("section", { class: "card", "aria-labelledby": "recover-title" },
    h("h2", { id: "recover-title" }, "Recover failed deliveries"),
    h("div", { class: "row" }, field("From", from), field("To", to), field("Failure category", category)),
    h("div", { class: "actions" }, count, run), out);
}

export function renderOne(main, rawId) {
  if (!workspaceGate(main, () => renderOne(main, rawId))) return {};
  const id = decodeURIComponent(rawId);
  const back = () => { location.hash = "#/endpoints"; };
  let gone = false;
  const status = h("div", { "aria-live": "polite" });
  const title = h("h1", {}, "Endpoint");
  const actions = h("div", { class: "actions" });
  const stats = h("section", { class: "card stats", "aria-label": "Last 24 hours" });
  const secretArea = h("div");
  const edit = h("section", { "aria-label": "Settings" });
  mount(main,
    h("div", { class: "heading" }, h("button", { type: "button", class: "back", onclick: back }, "← Endpoints"), title, actions),
    status, secretArea, stats, edit, recoverPanel(id, () => !gone));
  const path = (suffix = "") => subscriptions(`/${encodeURIComponent(id)}${suffix}`);

  async function loadStats() {
    try {
      const st = await get(path("/stats"));
      const t = totals(st);
      mount(stats,
        h("h2", {}, "Last 24 hours"),
        h("div", { class: "row" },
          h("figure", {}, successChart(st, { width: 360, height: 72 }),
            h("figcaption", {}, t.attempts ? `Success ${(100 * t.rate).toFixed(1)} % of ${t.attempts} attempts` : "No attempts")),
          h("figure", {}, latencyChart(st, { width: 360, height: 72 }), h("figcaption", {}, "Response time ", latencyLegend())),
          h("div", { class: "queue", id: "queue" }, h("h3", {}, "Queue"), h("p", {}, queueText(st)))));
    } catch (err) {
      mount(stats, failure(err));
    }
  }

  async function load() {
    try {
      const { endpoint: e } = await get(path());
      if (gone) return;
      title.textContent = e.url;
      const toggle = h("button", { type: "button", id: e.paused ? "resume" : "pause" }, e.paused ? "Resume" : "Pause");
      toggle.addEventListener("click", async () => {
        try {
          const r = await post(path(e.paused ? ":resume" : ":pause"), {});
          mount(status, notice("info", e.paused ? `Resumed; ${r.released || 0} held deliveries released.` : "Paused: new deliveries are held."));
          load();
        } catch (err) { mount(status, failure(err)); }
      });
      const rotate = h("button", { type: "button", id: "rotate" }, "Rotate secret");
      rotate.addEventListener("click", async () => {
        try {
          const r = await post(path("/secret:rotate"), {});
          mount(secretArea, secretOnce(r.secret, "New signing secret"),
            r.previousSecretExpireTime ? notice("info", `The previous secret also signs until ${time(r.previousSecretExpireTime)}.`) : null);
          secretArea.querySelector("#secret-once")?.focus();
        } catch (err) { mount(status, failure(err)); }
      });
      mount(actions, stateOf(e), toggle, rotate,
        h("a", { class: "button", href: `#/logs?endpoint=${encodeURIComponent(id)}` }, "Logs"));
      const { form } = endpointForm(e, "Save", async (endpoint) => {
        const mask = ["url", "description", "event_types", "policy"].join(",");
        await call("PATCH", path(), { query: { updateMask: mask }, body: endpoint });
        mount(status, notice("info", "Saved."));
        load();
      });
      mount(edit, h("h2", {}, "Settings"), form);
    } catch (err) {
      mount(status, err instanceof ApiError && err.status === 404 ? notice("error", "No such endpoint in this workspace.") : failure(err));
    }
  }
  load();
  loadStats();
  return { cleanup: () => { gone = true; }, onEscape: back };
}
