"""The REST gateway's JSON against a live hookpost at HOOKPOST_ADDR (host:port)
with key HOOKPOST_KEY: every answer of the gateway routes must be canonical
proto3 JSON. Each body is parsed into its generated message (unknown fields
refused) and serialised again with protobuf's own json_format; the two must be
equal, so a non-canonical form (a timestamp offset other than `Z`, an int64 as
a number, an enum as a number, a field the contract does not have) shows up as
a difference. Every difference is collected and printed before the test fails,
so one run tells the server side everything that is off.

Covered: Dispatch (to a URL, a repeat with the same idempotency key, and a
fan-out to an organization's endpoints), ListWebhookLogs, GetLogDetails, the
error Status, every webhook-subscription route (create with every Endpoint and
DeliveryPolicy field, get, list page by page, update, secret, secret rotation,
delete) and the organization secret and its rotation.

Timestamps must be what every protobuf runtime writes: UTC with `Z`, and 0, 3,
6 or 9 fractional digits, the fewest that hold the value (chrono's
`SecondsFormat::AutoSi` with `use_z`); a fixed 6 digits would differ whenever
the microseconds end in 000."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from hookpost_client import pb

BUSY_BODY = b"x" * (12 * 1024)  # longer than the 10 KiB kept: response_truncated


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        # Answered within a millisecond, an attempt's response_time_ms is 0,
        # which proto3 JSON leaves out: the fields this test covers would be
        # missing (it failed so once on a fast machine). A few milliseconds
        # make every attempt's time non-zero.
        time.sleep(0.005)
        if self.path == "/busy":
            # A retryable failure whose retry is far away: the webhook stays
            # pending, with next_attempt_at set, for the rest of the test.
            self.send_response(503)
            self.send_header("retry-after", "3600")
            self.end_headers()
            self.wfile.write(BUSY_BODY)
        else:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"received": true}')

    def log_message(self, *args):
        pass


class Gateway:
    def __init__(self, addr: str, key: str) -> None:
        self.base = f"http://{addr}"
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def differences(path: str, server: Any, canonical: Any) -> list[str]:
    """Where the server's JSON and the canonical re-serialisation differ."""
    if isinstance(server, dict) and isinstance(canonical, dict):
        out = []
        for key in sorted(set(server) | set(canonical)):
            where = f"{path}.{key}" if path else key
            if key not in canonical:
                out.append(f"{where}: server sent {json.dumps(server[key])[:120]}, proto3 JSON omits it")
            elif key not in server:
                out.append(f"{where}: server omitted it, proto3 JSON has {json.dumps(canonical[key])[:120]}")
            else:
                out.extend(differences(where, server[key], canonical[key]))
        return out
    if isinstance(server, list) and isinstance(canonical, list) and len(server) == len(canonical):
        return [d for i, (s, c) in enumerate(zip(server, canonical)) for d in differences(f"{path}[{i}]", s, c)]
    if server != canonical or type(server) is not type(canonical) and not _both_numbers(server, canonical):
        return [f"{path}: server {json.dumps(server)[:120]} != proto3 JSON {json.dumps(canonical)[:120]}"]
    return []


def _both_numbers(a: Any, b: Any) -> bool:
    # JSON has one number type: 1 and 1.0 are the same value (Struct numbers are doubles).
    number = (int, float)
    return isinstance(a, number) and isinstance(b, number) and not isinstance(a, bool) and not isinstance(b, bool)


class Check:
    def __init__(self) -> None:
        self.mismatches: list[str] = []

    def round_trip(self, route: str, status: int, text: str, message: Message, expect_status: int = 200) -> dict:
        """Parses the body into ``message`` and records every difference
        between the body and its canonical form; returns the body as a dict.
        An error body is grpc-gateway's: a google.rpc.Status that always has
        its three top-level fields, so an empty `details` is expected there."""
        if status != expect_status:
            self.mismatches.append(f"{route}: HTTP {status}, expected {expect_status}: {text[:200]}")
        server = json.loads(text)
        try:
            json_format.Parse(text, message, ignore_unknown_fields=False)
        except json_format.ParseError as err:
            self.mismatches.append(f"{route}: not {message.DESCRIPTOR.full_name} in proto3 JSON: {err}")
            return server
        canonical = json_format.MessageToDict(message)
        if isinstance(message, status_pb2.Status):
            canonical = {"code": 0, "message": "", "details": [], **canonical}
        self.mismatches.extend(f"{route}: {d}" for d in differences("", server, canonical))
        return server

    def has(self, route: str, obj: dict, *fields: str) -> None:
        """The test covers these fields only if the server sent them."""
        missing = [f for f in fields if f not in obj]
        if missing:
            self.mismatches.append(f"{route}: expected fields missing, so not covered: {missing}")


def wait_for(gateway: Gateway, request_id: str, settled: Any, deadline: float) -> None:
    while True:
        status, text = gateway.call("GET", f"/v1/webhook-logs/{request_id}")
        if status == 200 and settled(json.loads(text)):
            return
        assert time.monotonic() < deadline, f"{request_id} did not reach its state in time: {text}"
        time.sleep(0.05)


ENDPOINT_FIELDS = ("endpointId", "organizationId", "workspaceId", "url", "description", "eventTypes", "headers",
                   "policy", "createTime", "updateTime")
POLICY_FIELDS = ("maxRetries", "retrySchedule", "attemptTimeout", "rateLimitPerSecond", "maxInFlight")


def endpoint_routes(gateway: Gateway, check: Check, base_url: str) -> None:
    """The endpoint (webhook subscription) and signing-secret routes, and a
    fan-out Dispatch to the endpoints, in an organization of their own so that
    the webhook-log listing above is not touched."""
    org, workspace = str(uuid.uuid4()), str(uuid.uuid4())
    collection = f"/organizations/{org}/workspaces/{workspace}/webhook-subscriptions"
    full = {
        "url": f"{base_url}/ok",
        "eventTypes": ["call.ended", "call.*"],
        "description": "every field set",
        "headers": {"x-team": "support", "x-region": "eu"},
        "policy": {
            "maxRetries": 4,
            "retrySchedule": ["5s", "60s"],
            "attemptTimeout": "10s",
            "rateLimitPerSecond": 50,
            "maxInFlight": 8,
        },
    }
    route = "POST /organizations/{org}/workspaces/{ws}/webhook-subscriptions"
    created = check.round_trip(route, *gateway.call("POST", collection, full), pb.CreateEndpointResponse())
    check.has(route, created, "endpoint", "secret")
    check.has(f"{route} endpoint", created.get("endpoint", {}), *ENDPOINT_FIELDS)
    check.has(f"{route} endpoint.policy", created.get("endpoint", {}).get("policy", {}), *POLICY_FIELDS)
    second = check.round_trip(
        f"{route} (second)",
        *gateway.call("POST", collection, {"url": f"{base_url}/ok", "eventTypes": ["call.ended"]}),
        pb.CreateEndpointResponse(),
    )
    first_id = created.get("endpoint", {}).get("endpointId")
    second_id = second.get("endpoint", {}).get("endpointId")
    assert first_id and second_id, check.mismatches
    item = f"{collection}/{first_id}"

    route = "GET /organizations/{org}/workspaces/{ws}/webhook-subscriptions/{id}"
    got = check.round_trip(route, *gateway.call("GET", item), pb.GetEndpointResponse())
    check.has(f"{route} endpoint", got.get("endpoint", {}), *ENDPOINT_FIELDS)
    check.has(f"{route} endpoint.policy", got.get("endpoint", {}).get("policy", {}), *POLICY_FIELDS)

    # ListEndpoints page by page: pageSize=1 over two endpoints, so the first
    # page carries nextPageToken.
    route = "GET /organizations/{org}/workspaces/{ws}/webhook-subscriptions"
    token, pages, seen = "", 0, []
    while True:
        query = urllib.parse.urlencode({"pageSize": 1, "pageToken": token})
        pages += 1
        page = check.round_trip(f"{route} (pageSize=1, page {pages})", *gateway.call("GET", f"{collection}?{query}"),
                                pb.ListEndpointsResponse())
        seen.extend(e.get("endpointId") for e in page.get("endpoints", []))
        if pages == 1:
            check.has(f"{route} (pageSize=1, page 1)", page, "endpoints", "nextPageToken")
        token = page.get("nextPageToken", "")
        if not token or pages > 3:
            break
    assert sorted(seen) == sorted([first_id, second_id]), f"pages {pages}, endpoints {seen}"

    route = "PATCH /organizations/{org}/workspaces/{ws}/webhook-subscriptions/{id}?updateMask=description"
    updated = check.round_trip(route, *gateway.call("PATCH", f"{item}?updateMask=description",
                                                    {"description": "changed"}), pb.UpdateEndpointResponse())
    check.has(f"{route} endpoint", updated.get("endpoint", {}), *ENDPOINT_FIELDS)

    route = "GET /organizations/{org}/workspaces/{ws}/webhook-subscriptions/{id}/secret"
    secret = check.round_trip(route, *gateway.call("GET", f"{item}/secret"), pb.GetEndpointSecretResponse())
    check.has(route, secret, "secret")
    route = "POST /organizations/{org}/workspaces/{ws}/webhook-subscriptions/{id}/secret:rotate"
    rotated = check.round_trip(route, *gateway.call("POST", f"{item}/secret:rotate", {"gracePeriod": "3600s"}),
                               pb.RotateEndpointSecretResponse())
    check.has(route, rotated, "secret", "previousSecretExpireTime")

    route = "GET /organizations/{org}/webhook-secret"
    org_secret = check.round_trip(route, *gateway.call("GET", f"/organizations/{org}/webhook-secret"),
                                  pb.GetOrganizationSecretResponse())
    check.has(route, org_secret, "secret")
    route = "POST /organizations/{org}/webhook-secret:rotate"
    org_rotated = check.round_trip(route, *gateway.call("POST", f"/organizations/{org}/webhook-secret:rotate",
                                                        {"gracePeriod": "3600s"}),
                                   pb.RotateOrganizationSecretResponse())
    check.has(route, org_rotated, "secret", "previousSecretExpireTime")

    # Fan-out: no webhookUrl, no endpointId; both endpoints take call.ended.
    route = "POST /v1/webhooks:dispatch (fan-out to endpoints)"
    fan_out = check.round_trip(route, *gateway.call("POST", "/v1/webhooks:dispatch", {
        "organizationId": org,
        "webhookType": "call.ended",
        "payload": {"event": "call.ended"},
    }), pb.DispatchResponse())
    check.has(route, fan_out, "requestId", "logId", "messageId", "requestIds")
    if len(fan_out.get("requestIds", [])) != 2:
        check.mismatches.append(f"{route}: expected 2 requestIds (one per endpoint), got {fan_out.get('requestIds')}")

    route = "DELETE /organizations/{org}/workspaces/{ws}/webhook-subscriptions/{id}"
    check.round_trip(route, *gateway.call("DELETE", f"{collection}/{second_id}"), pb.DeleteEndpointResponse())
    status, text = gateway.call("GET", f"{collection}/{second_id}")
    if status != 404:
        check.mismatches.append(f"{route}: the deleted endpoint still answers HTTP {status}: {text[:200]}")


def main() -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{receiver.server_address[1]}"
    gateway = Gateway(os.environ["HOOKPOST_ADDR"], os.environ["HOOKPOST_KEY"])
    check = Check()
    org, workspace, subscription = (str(uuid.uuid4()) for _ in range(3))

    # Dispatch: every optional field set, int64 as strings (proto3 JSON).
    full = {
        "organizationId": org,
        "workspaceId": workspace,
        "subscriptionId": subscription,
        "callId": "101",
        "assistantId": "123",
        "webhookUrl": f"{base_url}/ok",
        "webhookType": "call_ended",
        "payload": {"event": "call_ended", "n": 1, "ok": True, "none": None, "list": [1.5, "a"], "nested": {"k": "v"}},
        "metadata": {"source": "test", "tags": ["a", "b"]},
        "idempotencyKey": f"key-{org}",
        "maxRetries": 2,
    }
    route = "POST /v1/webhooks:dispatch"
    ok = check.round_trip(route, *gateway.call("POST", "/v1/webhooks:dispatch", full), pb.DispatchResponse())
    check.has(route, ok, "requestId", "logId")
    again = check.round_trip(
        f"{route} (same idempotency key)",
        *gateway.call("POST", "/v1/webhooks:dispatch", full),
        pb.DispatchResponse(),
    )
    check.has(f"{route} (same idempotency key)", again, "duplicate")
    busy_request = {
        "organizationId": org,
        "callId": "102",
        "webhookUrl": f"{base_url}/busy",
        "webhookType": "call_started",
        "maxRetries": 3,
    }
    busy = check.round_trip(route, *gateway.call("POST", "/v1/webhooks:dispatch", busy_request), pb.DispatchResponse())
    assert "requestId" in ok and "requestId" in busy, check.mismatches

    deadline = time.monotonic() + 20
    wait_for(gateway, ok["requestId"], lambda d: d["log"].get("executionStatus") == "EXECUTION_STATUS_SUCCEEDED", deadline)
    wait_for(gateway, busy["requestId"], lambda d: d.get("attempts") and "nextAttemptAt" in d["log"], deadline)

    log_fields = ("logId", "requestId", "organizationId", "webhookUrl", "webhookType", "payload",
                  "executionStatus", "attemptCount", "maxRetries", "httpStatusCode", "responseBody",
                  "responseTimeMs", "lastAttemptedAt", "createdAt", "updatedAt")
    attempt_fields = ("attemptNumber", "httpStatusCode", "executionStatus", "createdAt", "requestBody",
                      "responseBody", "responseTimeMs")

    # GetLogDetails: the succeeded one (every optional field of the request)
    # and the pending one (a failed attempt, its error and next_attempt_at).
    route = "GET /v1/webhook-logs/{request_id}"
    details = check.round_trip(f"{route} (succeeded)", *gateway.call("GET", f"/v1/webhook-logs/{ok['requestId']}"),
                               pb.GetLogDetailsResponse())
    check.has(f"{route} (succeeded) log", details["log"], *log_fields,
              "workspaceId", "subscriptionId", "callId", "assistantId", "metadata")
    check.has(f"{route} (succeeded) attempt", details["attempts"][0], *attempt_fields)
    details = check.round_trip(f"{route} (pending)", *gateway.call("GET", f"/v1/webhook-logs/{busy['requestId']}"),
                               pb.GetLogDetailsResponse())
    check.has(f"{route} (pending) log", details["log"], *log_fields, "callId", "errorMessage", "errorCategory",
              "nextAttemptAt")
    check.has(f"{route} (pending) attempt", details["attempts"][0], *attempt_fields,
              "errorMessage", "errorCategory", "responseTruncated")

    # ListWebhookLogs: one page of both, and page by page (next_page_token).
    route = "GET /v1/webhook-logs"
    query = urllib.parse.urlencode({"organizationId": org, "pageSize": 10})
    listing = check.round_trip(route, *gateway.call("GET", f"/v1/webhook-logs?{query}"), pb.ListWebhookLogsResponse())
    assert [log.get("requestId") for log in listing.get("logs", [])] == [busy["requestId"], ok["requestId"]], listing
    token, pages = "", 0
    while True:
        query = urllib.parse.urlencode({"organizationId": org, "pageSize": 1, "pageToken": token})
        pages += 1
        page = check.round_trip(f"{route} (pageSize=1, page {pages})", *gateway.call("GET", f"/v1/webhook-logs?{query}"),
                                pb.ListWebhookLogsResponse())
        token = page.get("nextPageToken", "")
        if not token or pages > 3:
            break
    assert pages == 2, f"{pages} pages of one log for two logs"

    # Errors: grpc-gateway's body is a google.rpc.Status in proto3 JSON.
    route = "GET /v1/webhook-logs?pageSize=-1"
    error = status_pb2.Status()
    check.round_trip(route, *gateway.call("GET", "/v1/webhook-logs?pageSize=-1"), error, expect_status=400)
    assert error.code == 3, error  # INVALID_ARGUMENT
    violations = []
    for detail in error.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations.extend(v.field for v in bad.field_violations)
    assert violations == ["pageSize"], error
    route = "GET /v1/webhook-logs/{unknown request_id}"
    error = status_pb2.Status()
    check.round_trip(route, *gateway.call("GET", f"/v1/webhook-logs/{uuid.uuid4()}"), error, expect_status=404)
    assert error.code == 5, error  # NOT_FOUND

    endpoint_routes(gateway, check, base_url)

    receiver.shutdown()
    if check.mismatches:
        print(f"gateway JSON is not canonical proto3 JSON ({len(check.mismatches)} differences):")
        for line in check.mismatches:
            print("  " + line)
        raise SystemExit(1)
    print("python gateway JSON round trip: ok")


if __name__ == "__main__":
    main()
