// The console's shell: sign-in, the hash router (#/logs, #/requests/<id>,
// #/endpoints, #/endpoints/new, #/endpoints/<id>) and the keyboard
// shortcuts shared by every page. Pages render into <main> and return a
// cleanup function (stopping live streams and timers) and, optionally, what
// Escape does on them.

import { ApiError, get, session, unauthorized } from "./api.js";
import { field, h, mount, notice } from "./dom.js";
import * as logs from "./logs.js";
import * as request from "./request.js";
import * as endpoints from "./endpoints.js";

const main = document.getElementById("main");
let current = { cleanup: () => {}, onEscape: null };

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/logs";
  const [path, query] = raw.split("?");
  return { parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "") };
}

function signIn() {
  const key = h("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false" });
  const org = h("input", { type: "text", name: "organization", spellcheck: "false",
    pattern: "[0-9a-fA-F-]{36}", placeholder: "a service key's choice; an organization key's own if empty" });
  const ws = h("input", { type: "text", name: "workspace", spellcheck: "false",
    pattern: "[0-9a-fA-F-]{36}", placeholder: "optional; needed for endpoints" });
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" },
      "The key is kept in this tab only (session storage) and sent as a bearer token to this server. ",
      "An organization key sees its own organization; a service key may open any: name the one to look at."),
    field("API key", key),
    field("Organization ID", org, "Needed with a service key; an organization key brings its own."),
    field("Workspace ID", ws, "Endpoints belong to a workspace; you can set it later on the Endpoints page."),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    mount(status, notice("info", "Checking the key…"));
    try {
      // Who the key is: an organization key names its organization.
      const who = await get("/v1/caller", {}, { key: key.value.trim() });
      const own = who.kind === "CALLER_KIND_ORGANIZATION" ? who.organizationId : "";
      const chosen = org.value.trim() || own;
      if (!chosen) {
        mount(status, notice("error", "A service key acts for any organization: name the one to look at."));
        org.focus();
        return;
      }
      // A page of one log tells whether the key works for this organization.
      await get("/v1/webhook-logs", { organizationId: chosen, pageSize: 1, view: "LOG_VIEW_BASIC" },
        { key: key.value.trim() });
      session.save({ key: key.value.trim(), org: chosen, workspace: ws.value.trim() });
      location.hash = "#/logs";
      route();
    } catch (err) {
      const why = err instanceof ApiError && err.status === 401 ? "This key is not valid." :
        err instanceof ApiError && err.status === 403 ? "This key may not act for that organization." :
          `Sign-in failed: ${err.message}`;
      mount(status, notice("error", why));
    }
  });
  mount(main, form);
  key.focus();
  return { cleanup: () => {} };
}

function route() {
  current.cleanup();
  const signedIn = Boolean(session.key);
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `Organization ${session.org}` : "";
  const { parts, params } = parseHash();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.toggleAttribute("aria-current", a.dataset.nav === parts[0] || (a.dataset.nav === "logs" && parts[0] === "requests"));
  }
  if (!signedIn) {
    current = signIn();
    return;
  }
  let page;
  if (parts[0] === "requests" && parts[1]) page = request.render(main, parts[1]);
  else if (parts[0] === "endpoints" && parts[1] === "new") page = endpoints.renderNew(main);
  else if (parts[0] === "endpoints" && parts[1]) page = endpoints.renderOne(main, parts[1]);
  else if (parts[0] === "endpoints") page = endpoints.renderList(main);
  else page = logs.render(main, params);
  current = { cleanup: () => {}, onEscape: null, ...page };
}

function typing(el) {
  return el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
}

let pendingG = false;
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "Escape") {
    if (typing(e.target)) {
      e.target.blur();
      return;
    }
    if (current.onEscape) {
      e.preventDefault();
      current.onEscape();
    }
    return;
  }
  if (typing(e.target)) return;
  if (e.key === "/") {
    const target = document.querySelector("[data-shortcut=filter]");
    if (target) {
      e.preventDefault();
      target.focus();
    }
  } else if (pendingG && (e.key === "l" || e.key === "e")) {
    location.hash = e.key === "l" ? "#/logs" : "#/endpoints";
  }
  pendingG = e.key === "g";
});

document.getElementById("signout").addEventListener("click", () => {
  session.clear();
  location.hash = "#/signin";
  route();
});

unauthorized.addEventListener("unauthorized", () => {
  session.clear();
  route();
  main.prepend(notice("error", "The server refused the key (revoked or expired): sign in again."));
});

window.addEventListener("hashchange", route);
route();
