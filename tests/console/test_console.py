"""The delivery console in a real browser: Debian's chromium, headless, driven
by Selenium through Debian's chromedriver (given explicitly, so that
selenium-manager never runs or downloads anything), against a live hookpost
at HOOKPOST_ADDR (host:port, loopback) with a service key HOOKPOST_KEY.

Every request goes to 127.0.0.1: hookpost, and a receiver run here that
verifies Standard Webhooks signatures with the official ``standardwebhooks``
package. Every wait polls against a deadline (WebDriverWait); nothing sleeps.

Checked, in order:

- sign in with an organization key: no organization typed (the console asks
  GetCaller); a service key without one is asked to name it;
- sign in: the key lands in sessionStorage only (not in the URL, no cookie);
- filter: ``/`` focuses the filter; status and event-type filters narrow the list;
- live mode: a webhook dispatched meanwhile appears without a reload;
- keyboard: arrows move between rows, Enter opens a request, Escape goes back;
- a request: its attempts, then Resend, and the new attempt arrives live;
- escaping: a payload and a response body carrying ``<script>`` and
  ``<img onerror>`` show as text; no alert opens, no element is injected;
- endpoints: create one (the secret is shown once), receive a delivery that
  verifies with that secret, see it in the endpoint's 24 h picture; edit,
  pause and resume, rotate the secret, count a recovery window (dry run).

With HOOKPOST_CONSOLE_SCREENSHOTS=<dir>, screenshots of the logs page and of
a request's details are written there (docs/ keeps the README's copies).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid
from typing import Callable

import standardwebhooks
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

ADDR = os.environ["HOOKPOST_ADDR"]
KEY = os.environ["HOOKPOST_KEY"]
BASE = f"http://{ADDR}"
assert ADDR.startswith(("127.0.0.1:", "localhost:")), "the console test talks to loopback only"
SHOTS = os.environ.get("HOOKPOST_CONSOLE_SCREENSHOTS", "")
DEADLINE_S = 20.0
# The organization whose key the script made (HOOKPOST_ORG_KEY): the
# service key acts for it too.
ORG = os.environ["HOOKPOST_ORG"]
ORG_KEY = os.environ["HOOKPOST_ORG_KEY"]
WORKSPACE = str(uuid.uuid4())

XSS_PAYLOAD = {
    "name": "<script>alert(1)</script>",
    "bio": '<img src=x onerror="document.title=\'pwned\';alert(2)">',
}
XSS_RESPONSE = '<html><script>alert("response")</script><img src=x onerror="document.title=\'pwned\'"></html>'


# ------------------------------------------------------------------ receiver


class Receiver:
    """A webhook receiver on 127.0.0.1. /fail answers 500 (slowly from the
    second request on, so that a resend's attempt comes after the page has
    shown the delivery pending); /html answers markup; every other path 200.
    A delivery to a path with a registered secret is verified with
    ``standardwebhooks``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[dict] = []
        self.secrets: dict[str, str] = {}
        self.fail_count = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = {"path": self.path, "headers": headers, "body": body, "verified": None}
                with receiver.lock:
                    secret = receiver.secrets.get(self.path)
                    if self.path == "/fail":
                        receiver.fail_count += 1
                        slow = receiver.fail_count > 1
                    else:
                        slow = False
                if secret:
                    try:
                        standardwebhooks.Webhook(secret).verify(body, headers)
                        record["verified"] = True
                    except Exception as err:  # the package raises its own types
                        record["verified"] = False
                        record["error"] = repr(err)
                with receiver.lock:
                    receiver.received.append(record)
                if slow:
                    # The only pause in the test: the receiver's answer, so
                    # that the page is seen pending before the attempt lands.
                    threading.Event().wait(1.5)
                if self.path == "/fail":
                    self.answer(500, "text/plain", b"upstream exploded")
                elif self.path == "/html":
                    self.answer(200, "text/html", XSS_RESPONSE.encode())
                else:
                    self.answer(200, "application/json", b'{"received": true}')

            def answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def deliveries(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.received if r["path"] == path]


# ------------------------------------------------------------------ REST


def rest(method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{BASE}{path}", data=data, method=method)
    req.add_header("authorization", f"Bearer {KEY}")
    if data is not None:
        req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def dispatch(url: str | None, event: str, payload: dict | None = None, retries: int = 0) -> str:
    body = {"organizationId": ORG, "webhookType": event, "payload": payload or {"event": event}, "maxRetries": retries}
    if url:
        body["webhookUrl"] = url
    return rest("POST", "/v1/webhooks:dispatch", body).get("requestId", "")


def poll(what: str, check: Callable[[], object], deadline: float = DEADLINE_S):
    end = time.monotonic() + deadline
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        threading.Event().wait(0.05)


def settled(request_id: str) -> dict:
    def check():
        log = rest("GET", f"/v1/webhook-logs/{request_id}")["log"]
        return log if log["executionStatus"] not in ("EXECUTION_STATUS_PENDING",) else None

    return poll(f"{request_id} to settle", check)


# ------------------------------------------------------------------ browser


def browser() -> tuple[webdriver.Chrome, str]:
    profile = tempfile.mkdtemp(prefix="hookpost-console-chromium-")
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    # chromedriver given by path: selenium-manager is never consulted.
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(DEADLINE_S)
    return driver, profile


def wait(driver, what: str, check: Callable, deadline: float = DEADLINE_S):
    def guarded(d):
        try:
            return check(d)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, deadline, poll_frequency=0.05).until(guarded, f"waiting for {what}")


def rows(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "table.logs tbody tr[data-request-id]")


def row_ids(driver) -> list[str]:
    return [r.get_attribute("data-request-id") for r in rows(driver)]


def active(driver):
    return driver.switch_to.active_element


def no_alert(driver) -> None:
    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"an alert opened: {text!r}")


def screenshot(driver, name: str) -> None:
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SHOTS, name))


# ------------------------------------------------------------------ steps


class Context:
    def __init__(self, driver, receiver: Receiver) -> None:
        self.driver = driver
        self.receiver = receiver
        self.ids: dict[str, str] = {}


def seed(ctx: Context) -> None:
    r = ctx.receiver
    ctx.ids["ok"] = dispatch(r.url("/plain"), "order.created")
    ctx.ids["fail"] = dispatch(r.url("/fail"), "order.failed")
    ctx.ids["xss"] = dispatch(r.url("/html"), "xss.probe", XSS_PAYLOAD)
    for key in ("ok", "fail", "xss"):
        settled(ctx.ids[key])


def sign_in_with_an_organization_key(ctx: Context) -> None:
    d = ctx.driver
    d.get(f"{BASE}/console")
    form = wait(d, "the sign-in form", lambda d: d.find_element(By.CSS_SELECTOR, "form.signin"))
    # A service key without an organization is told to name one.
    form.find_element(By.NAME, "key").send_keys(KEY)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(d, "the request to name an organization", lambda d: "name the one to look at" in form.text
         and d.execute_script("return sessionStorage.length") == 0)
    # An organization key brings its own: no organization typed.
    key = form.find_element(By.NAME, "key")
    key.clear()
    key.send_keys(ORG_KEY)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(d, "the organization key's own logs", lambda d: set(ctx.ids.values()) <= set(row_ids(d)))
    assert d.execute_script("return sessionStorage.getItem('hookpost.organization')") == ORG
    assert ORG in d.find_element(By.ID, "who").text
    d.find_element(By.ID, "signout").click()
    wait(d, "the sign-in form again", lambda d: d.find_elements(By.CSS_SELECTOR, "form.signin"))
    assert d.execute_script("return sessionStorage.length") == 0


def sign_in(ctx: Context) -> None:
    d = ctx.driver
    d.get(f"{BASE}/console")
    form = wait(d, "the sign-in form", lambda d: d.find_element(By.CSS_SELECTOR, "form.signin"))
    assert d.execute_script("return sessionStorage.length") == 0
    form.find_element(By.NAME, "key").send_keys(KEY)
    form.find_element(By.NAME, "organization").send_keys(ORG)
    form.find_element(By.NAME, "workspace").send_keys(WORKSPACE)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(d, "the three seeded logs", lambda d: set(ctx.ids.values()) <= set(row_ids(d)))
    assert KEY not in d.current_url, d.current_url
    assert d.get_cookies() == [], d.get_cookies()
    assert d.execute_script("return sessionStorage.getItem('hookpost.key')") == KEY
    assert d.execute_script("return localStorage.length") == 0


def filter_logs(ctx: Context) -> None:
    d = ctx.driver
    d.find_element(By.TAG_NAME, "body").send_keys("/")
    focused = active(d)
    assert focused.get_attribute("name") == "type", focused.get_attribute("outerHTML")
    focused.send_keys("order.*")
    Select(d.find_element(By.NAME, "status")).select_by_value("FAILED")
    d.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait(d, "only the failed order", lambda d: row_ids(d) == [ctx.ids["fail"]])
    assert "executionStatus" not in d.current_url and "status=FAILED" in d.current_url
    # An exact type, by keyboard only: / then Enter submits.
    d.find_element(By.TAG_NAME, "body").send_keys("/")
    box = active(d)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys("order.created")
    Select(d.find_element(By.NAME, "status")).select_by_value("")
    box.send_keys(Keys.ENTER)
    wait(d, "only the created order", lambda d: row_ids(d) == [ctx.ids["ok"]])


def live_mode(ctx: Context) -> None:
    d = ctx.driver
    d.get(f"{BASE}/console#/logs?live=1")
    wait(d, "the live stream to open", lambda d: d.find_element(By.ID, "live-state").get_attribute("data-state") == "live")
    before = set(row_ids(d))
    new_id = dispatch(ctx.receiver.url("/plain"), "order.live")
    wait(d, "the new delivery to appear live", lambda d: new_id in row_ids(d))
    assert new_id not in before
    row = d.find_element(By.CSS_SELECTOR, f'tr[data-request-id="{new_id}"]')
    wait(d, "its attempt to show it succeeded", lambda d: "SUCCEEDED" in d.find_element(
        By.CSS_SELECTOR, f'tr[data-request-id="{new_id}"]').text)
    assert row is not None
    ctx.ids["live"] = new_id


def keyboard(ctx: Context) -> None:
    d = ctx.driver
    d.get(f"{BASE}/console#/logs")
    wait(d, "the list", lambda d: len(rows(d)) >= 4)
    first = rows(d)[0]
    first.send_keys(Keys.ARROW_DOWN)
    second_id = rows(d)[1].get_attribute("data-request-id")
    assert active(d).get_attribute("data-request-id") == second_id
    active(d).send_keys("k")
    assert active(d).get_attribute("data-request-id") == rows(d)[0].get_attribute("data-request-id")
    active(d).send_keys("j")
    active(d).send_keys(Keys.ENTER)
    wait(d, "the request page by Enter", lambda d: d.current_url.endswith(f"#/requests/{second_id}"))
    wait(d, "its attempts", lambda d: "Attempts (" in d.find_element(By.CSS_SELECTOR, "section.attempts").text)
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    wait(d, "Escape to go back to the logs", lambda d: d.current_url.endswith("#/logs") and len(rows(d)) >= 4)
    # Buttons are buttons: reachable and pressed by keyboard.
    live = d.find_element(By.CSS_SELECTOR, "button.live")
    assert live.tag_name == "button"
    live.send_keys(Keys.ENTER)
    wait(d, "live mode on by keyboard", lambda d: "live=1" in d.current_url)
    # g e: the endpoints page.
    d.find_element(By.TAG_NAME, "body").send_keys("g", "e")
    wait(d, "g e to open the endpoints", lambda d: d.current_url.endswith("#/endpoints"))
    d.find_element(By.TAG_NAME, "body").send_keys("g", "l")
    wait(d, "g l to open the logs", lambda d: d.current_url.endswith("#/logs"))


def attempts_shown(d) -> int:
    heading = d.find_element(By.CSS_SELECTOR, "section.attempts h2").text
    return int(heading.split("(")[1].rstrip(")"))


def resend(ctx: Context) -> None:
    d = ctx.driver
    fail_id = ctx.ids["fail"]
    d.get(f"{BASE}/console#/requests/{fail_id}")
    wait(d, "one failed attempt", lambda d: attempts_shown(d) == 1 and "FAILED" in d.find_element(By.CSS_SELECTOR, "dl.summary").text)
    wait(d, "the page to follow the tail", lambda d: d.find_element(By.ID, "live-state").get_attribute("data-state") == "live")
    attempt = d.find_element(By.CSS_SELECTOR, "details.attempt")
    assert "HTTP 500" in attempt.text and "http_5xx" in attempt.text, attempt.text
    assert "upstream exploded" in attempt.find_element(By.CSS_SELECTOR, ".response pre").text
    headers = attempt.find_element(By.CSS_SELECTOR, "table.headers").text
    assert "webhook-id" in headers and "not shown" in headers and "whsec_" not in headers, headers
    button = d.find_element(By.ID, "resend")
    assert button.tag_name == "button"
    button.click()
    # Pending first (the receiver holds its answer), then the new attempt
    # arrives by the live tail, without a reload.
    wait(d, "the delivery pending again", lambda d: "PENDING" in d.find_element(By.CSS_SELECTOR, "dl.summary").text)
    assert attempts_shown(d) == 1
    wait(d, "the resent attempt to arrive live", lambda d: attempts_shown(d) == 2)
    newest = d.find_element(By.CSS_SELECTOR, "details.attempt")
    assert newest.get_attribute("data-attempt") == "2" and "manual" in newest.text, newest.text
    assert len(ctx.receiver.deliveries("/fail")) == 2
    screenshot(d, "console-request.png")


def escaping(ctx: Context) -> None:
    d = ctx.driver
    d.get(f"{BASE}/console#/requests/{ctx.ids['xss']}")
    wait(d, "the probe's attempt", lambda d: attempts_shown(d) == 1)
    page = d.find_element(By.ID, "main").text
    assert "<script>alert(1)</script>" in page, page
    assert "onerror=" in page
    response = d.find_element(By.CSS_SELECTOR, ".response pre").text
    assert response == XSS_RESPONSE, response
    no_alert(d)
    assert d.title != "pwned", d.title
    injected = d.execute_script(
        "return document.querySelectorAll('main script, main img, main iframe, main [onerror], main [onclick]').length")
    assert injected == 0, injected
    scripts = d.execute_script("return Array.from(document.scripts).map(s => s.src)")
    assert scripts == [f"{BASE}/console/js/app.js"], scripts
    # Trusted Types are enforced: an HTML string cannot reach the DOM at all.
    refused = d.execute_script(
        "try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return false } catch (e) { return true }")
    assert refused, "the Content-Security-Policy should refuse HTML strings"


def endpoints(ctx: Context) -> None:
    d = ctx.driver
    r = ctx.receiver
    d.get(f"{BASE}/console#/endpoints")
    wait(d, "the empty endpoint list", lambda d: "No endpoints" in d.find_element(By.ID, "main").text)
    d.find_element(By.ID, "new-endpoint").click()
    form = wait(d, "the new endpoint form", lambda d: d.find_element(By.CSS_SELECTOR, "form.endpoint-form"))
    form.find_element(By.NAME, "url").send_keys(r.url("/signed"))
    form.find_element(By.NAME, "eventTypes").send_keys("signed.*")
    form.find_element(By.NAME, "maxRetries").send_keys("2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    secret = wait(d, "the secret, shown once", lambda d: d.find_element(By.ID, "secret-once").text)
    assert secret.startswith("whsec_"), secret
    r.secrets["/signed"] = secret
    d.find_element(By.ID, "open-endpoint").click()
    wait(d, "the endpoint page", lambda d: d.find_element(By.CSS_SELECTOR, "main h1").text == r.url("/signed"))
    endpoint_id = d.current_url.rsplit("/", 1)[1]

    # A fan-out event reaches it, signed with that secret.
    request_id = dispatch(None, "signed.hello", {"hello": "world"})
    got = poll("the signed delivery", lambda: r.deliveries("/signed"))
    assert got[0]["verified"] is True, got[0]
    assert got[0]["headers"]["webhook-signature"].startswith("v1,")
    settled(request_id)

    # Its picture: one successful attempt in the last 24 h, an empty queue.
    d.refresh()
    wait(d, "the success chart", lambda d: "100.0 % of 1 attempts" in d.find_element(
        By.CSS_SELECTOR, "svg.chart.success").get_attribute("aria-label"))
    assert "0 pending" in d.find_element(By.ID, "queue").text
    screenshot(d, "console-endpoint.png")

    # Edit: the event filter and the policy.
    events = d.find_element(By.CSS_SELECTOR, "form.endpoint-form [name=eventTypes]")
    events.send_keys(", other.*")
    d.find_element(By.CSS_SELECTOR, "form.endpoint-form button[type=submit]").click()
    wait(d, "the save", lambda d: "Saved." in d.find_element(By.ID, "main").text)
    stored = rest("GET", f"/organizations/{ORG}/workspaces/{WORKSPACE}/webhook-subscriptions/{endpoint_id}")["endpoint"]
    assert sorted(stored["eventTypes"]) == ["other.*", "signed.*"], stored
    assert stored["policy"]["maxRetries"] == 2, stored

    # Pause and resume.
    wait(d, "the pause button", lambda d: d.find_element(By.ID, "pause")).click()
    wait(d, "paused", lambda d: d.find_element(By.ID, "resume"))
    d.find_element(By.ID, "resume").click()
    wait(d, "resumed", lambda d: d.find_element(By.ID, "pause"))

    # Rotate: a new secret, shown once.
    d.find_element(By.ID, "rotate").click()
    rotated = wait(d, "the rotated secret", lambda d: d.find_element(By.ID, "secret-once").text)
    assert rotated.startswith("whsec_") and rotated != secret

    # Recover: a dry-run count first; nothing failed here.
    d.find_element(By.ID, "recover-count").click()
    wait(d, "the dry-run count", lambda d: "0 failed deliveries match" in d.find_element(By.ID, "recover-result").text)
    assert not d.find_element(By.ID, "recover-run").is_enabled()

    # And the list shows it with its picture.
    d.get(f"{BASE}/console#/endpoints")
    wait(d, "the endpoint in the list with its queue", lambda d: "pending" in d.find_element(
        By.CSS_SELECTOR, f'tr[data-endpoint-id="{endpoint_id}"]').text)


def logs_screenshot(ctx: Context) -> None:
    d = ctx.driver
    d.get(f"{BASE}/console#/logs")
    wait(d, "the list", lambda d: len(rows(d)) >= 5)
    screenshot(d, "console-logs.png")


STEPS = [sign_in_with_an_organization_key, sign_in, filter_logs, live_mode, keyboard, resend, escaping, endpoints, logs_screenshot]


def main() -> int:
    receiver = Receiver()
    driver, profile = browser()
    ctx = Context(driver, receiver)
    passed = failed = 0
    try:
        seed(ctx)
        for step in STEPS:
            try:
                step(ctx)
                no_alert(driver)
                passed += 1
                print(f"ok   {step.__name__}", flush=True)
            except Exception:
                failed += 1
                print(f"FAIL {step.__name__}", flush=True)
                traceback.print_exc()
                if SHOTS:
                    screenshot(driver, f"failed-{step.__name__}.png")
                break
    finally:
        driver.quit()
        receiver.server.shutdown()
        shutil.rmtree(profile, ignore_errors=True)
    skipped = len(STEPS) - passed - failed
    print(f"console: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
