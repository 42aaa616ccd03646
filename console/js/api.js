// The console's only way out: fetch() to this origin's REST routes, with the
// API key in the Authorization header. The key lives in this tab's
// sessionStorage (gone when the tab closes; never in a URL, never in a
// cookie), with the organization and workspace the user chose.

const STORE = { key: "hookpost.key", org: "hookpost.organization", ws: "hookpost.workspace" };

export const session = {
  get key() { return sessionStorage.getItem(STORE.key) || ""; },
  get org() { return sessionStorage.getItem(STORE.org) || ""; },
  get workspace() { return sessionStorage.getItem(STORE.ws) || ""; },
  set workspace(ws) { sessionStorage.setItem(STORE.ws, ws); },
  save({ key, org, workspace }) {
    sessionStorage.setItem(STORE.key, key);
    sessionStorage.setItem(STORE.org, org);
    sessionStorage.setItem(STORE.ws, workspace || "");
  },
  clear() { for (const k of Object.values(STORE)) sessionStorage.removeItem(k); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const message = (body && (body.message || body.detail)) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.body = body;
  }

  /** "url: must be an absolute URL" lines from a google.rpc.BadRequest. */
  get violations() {
    const details = (this.body && this.body.details) || [];
    return details.flatMap((d) => d.fieldViolations || []).map((v) => `${v.field}: ${v.description}`);
  }
}

/** Fired when a call answers 401: the key is gone or was revoked. */
export const unauthorized = new EventTarget();

function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

function headers(extra) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

/** One REST call; resolves to the JSON body, rejects with an ApiError. */
export async function call(method, path, { query, body, signal, key } = {}) {
  const init = {
    method,
    headers: headers({ Accept: "application/json" }),
    credentials: "omit",
    cache: "no-store",
    signal,
  };
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url(path, query), init);
  const text = await res.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!res.ok) {
    if (res.status === 401 && !key) unauthorized.dispatchEvent(new Event("unauthorized"));
    throw new ApiError(res.status, data);
  }
  return data;
}

export const get = (path, query, opts) => call("GET", path, { ...opts, query });
export const post = (path, body, opts) => call("POST", path, { ...opts, body });

/** The organization's endpoint routes, under the chosen workspace. */
export function subscriptions(suffix = "") {
  const org = encodeURIComponent(session.org);
  const ws = encodeURIComponent(session.workspace);
  return `/organizations/${org}/workspaces/${ws}/webhook-subscriptions${suffix}`;
}

/**
 * Follows WatchWebhookLogs (NDJSON over fetch, so that the Authorization
 * header can be sent: EventSource cannot). Calls onEvent for each event and
 * onState("live" | "reconnecting" | "stopped", detail). Reconnects after a
 * dropped stream from the last resume token, so nothing is missed or
 * repeated. Returns a function that stops it.
 */
export function watch(query, onEvent, onState) {
  const controller = new AbortController();
  let resumeToken = "";
  let stopped = false;
  let delay = 500;

  async function once() {
    const res = await fetch(url("/v1/webhook-logs:watch", { ...query, resumeToken }), {
      headers: headers({ Accept: "application/x-ndjson" }),
      credentials: "omit",
      cache: "no-store",
      signal: controller.signal,
    });
    if (!res.ok) {
      let data = {};
      try { data = await res.json(); } catch { /* not JSON */ }
      throw new ApiError(res.status, data);
    }
    onState("live");
    delay = 500;
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffered += value;
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (!line) continue;
        const message = JSON.parse(line);
        if (message.error) throw new ApiError(message.error.code === 16 ? 401 : 500, message.error);
        if (message.result) {
          resumeToken = message.result.resumeToken || resumeToken;
          onEvent(message.result);
        }
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (err) {
        if (stopped) break;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
          onState("stopped", err);
          if (err.status === 401) unauthorized.dispatchEvent(new Event("unauthorized"));
          return;
        }
      }
      if (stopped) break;
      onState("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10000);
    }
  })();

  return () => {
    stopped = true;
    controller.abort();
    onState("stopped");
  };
}
