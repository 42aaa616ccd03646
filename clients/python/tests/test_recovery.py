"""Redelivery, pause and resume with held deliveries, auto-disable (a 410) with
its ``hookpost.endpoint.disabled`` notice, recovery (a dry run, then a real run
polled to done) and the dead-letter view, with the Python client against a live
hookpost at HOOKPOST_ADDR (host:port) with key HOOKPOST_KEY.

Every scenario runs twice, on its own organization: over gRPC (the generated
stubs) and over the REST gateway (urllib; every answer is parsed into its
generated message with unknown fields refused), so both transports are held to
the same behaviour. Setup (Dispatch, CreateEndpoint) is over gRPC. The receiver
listens on 127.0.0.1 and answers each path with the status the scenario sets.
Every wait polls against a deadline."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Callable, TypeVar, Union

import grpc
from google.protobuf import field_mask_pb2, json_format
from google.protobuf.message import Message

from hookpost.v1 import webhook_service_pb2 as pb
from hookpost.v1 import webhook_service_pb2_grpc as pb_grpc
from hookpost_client import Client

DEADLINE_S = 20.0
M = TypeVar("M", bound=Message)


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records every POST; answers each path with the status set for it by
    ``answer`` (200 until then)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.answers: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                with outer.lock:
                    outer.deliveries.append(Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = outer.answers.get(self.path, 200)
                self.send_response(status)
                self.end_headers()
                self.wfile.write(json.dumps({"status": status}).encode())

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, path: str, status: int) -> None:
        with self.lock:
            self.answers[path] = status

    def on(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int) -> list[Delivery]:
        return eventually(f"{count} deliveries on {path}", lambda: got if len(got := self.on(path)) >= count else None)


T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None]) -> T:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = probe()
        if got is not None:
            return got
        assert time.monotonic() < deadline, f"{what}: not in time"
        time.sleep(0.05)


class ApiError(Exception):
    """A refused call: its gRPC code, and over REST its HTTP status."""

    def __init__(self, code: grpc.StatusCode, http_status: int | None, message: str) -> None:
        super().__init__(f"{code.name} (HTTP {http_status}): {message}")
        self.code, self.http_status = code, http_status


class GrpcApi:
    name = "gRPC"

    def __init__(self, addr: str, key: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.stub = pb_grpc.WebhookServiceStub(self.channel)
        self.md = (("authorization", f"Bearer {key}"),)

    def _call(self, method: str, request: Message):
        try:
            return getattr(self.stub, method)(request, metadata=self.md, timeout=10)
        except grpc.RpcError as err:
            raise ApiError(err.code(), None, err.details()) from None

    def create_endpoint(self, org: str, ws: str, endpoint: pb.Endpoint) -> str:
        request = pb.CreateEndpointRequest(organization_id=org, workspace_id=ws, endpoint=endpoint)
        return self._call("CreateEndpoint", request).endpoint.endpoint_id

    def redeliver(self, request_id: str) -> pb.RedeliverWebhookResponse:
        return self._call("RedeliverWebhook", pb.RedeliverWebhookRequest(request_id=request_id))

    def details(self, request_id: str) -> pb.GetLogDetailsResponse:
        return self._call("GetLogDetails", pb.GetLogDetailsRequest(request_id=request_id))

    def pause(self, org: str, ws: str, ep: str) -> pb.PauseEndpointResponse:
        return self._call("PauseEndpoint", pb.PauseEndpointRequest(organization_id=org, workspace_id=ws, endpoint_id=ep))

    def resume(self, org: str, ws: str, ep: str) -> pb.ResumeEndpointResponse:
        return self._call("ResumeEndpoint", pb.ResumeEndpointRequest(organization_id=org, workspace_id=ws, endpoint_id=ep))

    def endpoint(self, org: str, ws: str, ep: str) -> pb.Endpoint:
        return self._call("GetEndpoint", pb.GetEndpointRequest(organization_id=org, workspace_id=ws, endpoint_id=ep)).endpoint

    def enable(self, org: str, ws: str, ep: str) -> pb.Endpoint:
        request = pb.UpdateEndpointRequest(
            organization_id=org, workspace_id=ws, endpoint_id=ep,
            endpoint=pb.Endpoint(disabled=False), update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
        )
        return self._call("UpdateEndpoint", request).endpoint

    def recover(self, request: pb.RecoverWebhooksRequest) -> pb.RecoverWebhooksResponse:
        return self._call("RecoverWebhooks", request)

    def operation(self, org: str, operation_id: str) -> pb.Operation:
        return self._call("GetOperation", pb.GetOperationRequest(organization_id=org, operation_id=operation_id)).operation

    def logs(self, request: pb.ListWebhookLogsRequest) -> list[pb.WebhookLog]:
        return list(self._call("ListWebhookLogs", request).logs)

    def dispatch(self, request: pb.DispatchRequest) -> pb.DispatchResponse:
        return self._call("Dispatch", request)

    def close(self) -> None:
        self.channel.close()


class RestApi:
    name = "REST"

    def __init__(self, addr: str, key: str) -> None:
        self.base = f"http://{addr}"
        self.headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def _call(self, method: str, path: str, body: dict | None, answer: M) -> M:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data, self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            status = json.loads(err.read().decode())  # google.rpc.Status
            code = next(c for c in grpc.StatusCode if c.value[0] == status["code"])
            raise ApiError(code, err.code, status["message"]) from None
        # Unknown fields refused: the answer is the documented message.
        return json_format.Parse(text, answer, ignore_unknown_fields=False)

    @staticmethod
    def _subscription(org: str, ws: str, ep: str) -> str:
        return f"/organizations/{org}/workspaces/{ws}/webhook-subscriptions/{ep}"

    def redeliver(self, request_id: str) -> pb.RedeliverWebhookResponse:
        return self._call("POST", f"/v1/webhook-logs/{request_id}:redeliver", {}, pb.RedeliverWebhookResponse())

    def details(self, request_id: str) -> pb.GetLogDetailsResponse:
        return self._call("GET", f"/v1/webhook-logs/{request_id}", None, pb.GetLogDetailsResponse())

    def pause(self, org: str, ws: str, ep: str) -> pb.PauseEndpointResponse:
        return self._call("POST", self._subscription(org, ws, ep) + ":pause", {}, pb.PauseEndpointResponse())

    def resume(self, org: str, ws: str, ep: str) -> pb.ResumeEndpointResponse:
        return self._call("POST", self._subscription(org, ws, ep) + ":resume", {}, pb.ResumeEndpointResponse())

    def endpoint(self, org: str, ws: str, ep: str) -> pb.Endpoint:
        return self._call("GET", self._subscription(org, ws, ep), None, pb.GetEndpointResponse()).endpoint

    def enable(self, org: str, ws: str, ep: str) -> pb.Endpoint:
        path = self._subscription(org, ws, ep) + "?updateMask=disabled"
        return self._call("PATCH", path, {"disabled": False}, pb.UpdateEndpointResponse()).endpoint

    def recover(self, request: pb.RecoverWebhooksRequest) -> pb.RecoverWebhooksResponse:
        body = json_format.MessageToDict(request)
        org = body.pop("organizationId")
        return self._call("POST", f"/organizations/{org}/webhook-logs:recover", body, pb.RecoverWebhooksResponse())

    def operation(self, org: str, operation_id: str) -> pb.Operation:
        path = f"/organizations/{org}/operations/{operation_id}"
        return self._call("GET", path, None, pb.GetOperationResponse()).operation

    def logs(self, request: pb.ListWebhookLogsRequest) -> list[pb.WebhookLog]:
        query = urllib.parse.urlencode(json_format.MessageToDict(request))
        return list(self._call("GET", f"/v1/webhook-logs?{query}", None, pb.ListWebhookLogsResponse()).logs)

    def dispatch(self, request: pb.DispatchRequest) -> pb.DispatchResponse:
        body = json_format.MessageToDict(request)
        return self._call("POST", "/v1/webhooks:dispatch", body, pb.DispatchResponse())

    def close(self) -> None:
        pass


Api = Union[GrpcApi, RestApi]


@dataclass
class Setup:
    """What every scenario sets up with, over gRPC: the client's Dispatch,
    CreateEndpoint, and the receiver."""

    client: Client
    grpc: GrpcApi
    receiver: Receiver


def settled(api: Api, request_id: str, status: int) -> pb.GetLogDetailsResponse:
    def probe():
        d = api.details(request_id)
        return d if d.log.execution_status == status else None

    return eventually(f"{request_id} reaches {pb.ExecutionStatus.Name(status)}", probe)


def refused(call: Callable[[], object]) -> ApiError:
    try:
        call()
    except ApiError as err:
        return err
    raise AssertionError("the call was accepted")


def redeliver(api: Api, setup: Setup) -> None:
    """A failed delivery sent again: attempt 2, manual, the same webhook-id."""
    client, receiver = setup.client, setup.receiver
    org, path = str(uuid.uuid4()), f"/redeliver/{api.name}"
    receiver.answer(path, 400)  # not retried: fails at once
    sent = client.dispatch(organization_id=org, webhook_url=receiver.url(path), webhook_type="call.ended", payload={"n": 1})
    d = settled(api, sent.request_id, pb.EXECUTION_STATUS_FAILED)
    assert [(a.attempt_number, a.manual) for a in d.attempts] == [(1, False)], d
    assert d.log.error_category == "http_4xx", d.log

    receiver.answer(path, 200)
    again = api.redeliver(sent.request_id)
    assert again.log.request_id == sent.request_id, again
    # Pending again with a fresh budget (or, if the worker was quick, done).
    assert again.log.execution_status in (pb.EXECUTION_STATUS_PENDING, pb.EXECUTION_STATUS_SUCCEEDED), again
    d = settled(api, sent.request_id, pb.EXECUTION_STATUS_SUCCEEDED)
    assert [(a.attempt_number, a.manual) for a in d.attempts] == [(2, True), (1, False)], d
    assert d.attempts[0].http_status_code == 200, d.attempts[0]
    first, second = receiver.wait_for(path, 2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == sent.message_id, (first.headers, second.headers)
    assert (first.headers["x-hookpost-attempt"], second.headers["x-hookpost-attempt"]) == ("1", "2")
    assert second.body == first.body

    # An unknown request: NOT_FOUND / 404.
    err = refused(lambda: api.redeliver(str(uuid.uuid4())))
    assert (err.code, err.http_status) == (grpc.StatusCode.NOT_FOUND, None if api.name == "gRPC" else 404), err


def pause_and_resume(api: Api, setup: Setup) -> None:
    """Deliveries to a paused endpoint are HELD; resuming sends them, oldest first."""
    org, ws, path = str(uuid.uuid4()), str(uuid.uuid4()), f"/paused/{api.name}"
    client, receiver = setup.client, setup.receiver
    # One at a time, so the receiver sees the order they are released in.
    policy = pb.DeliveryPolicy(max_in_flight=1)
    ep = setup.grpc.create_endpoint(org, ws, pb.Endpoint(url=receiver.url(path), event_types=["call.*"], policy=policy))
    paused = api.pause(org, ws, ep)
    assert paused.endpoint.paused and paused.endpoint.endpoint_id == ep, paused
    assert api.endpoint(org, ws, ep).paused

    ids = [
        client.dispatch(organization_id=org, webhook_url="", endpoint_id=ep, webhook_type="call.started", payload={"n": n}).request_id
        for n in range(3)
    ]
    for request_id in ids:
        d = api.details(request_id)
        assert d.log.execution_status == pb.EXECUTION_STATUS_HELD and not d.attempts, d
    held = api.logs(pb.ListWebhookLogsRequest(organization_id=org, execution_status=pb.EXECUTION_STATUS_HELD, page_size=100))
    assert sorted(log.request_id for log in held) == sorted(ids), held
    # A held delivery is not settled: it cannot be redelivered
    # (FAILED_PRECONDITION, which the REST gateway answers as 400).
    err = refused(lambda: api.redeliver(ids[0]))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION, err
    assert err.http_status == (None if api.name == "gRPC" else 400), err
    assert receiver.on(path) == [], "a paused endpoint received a delivery"

    resumed = api.resume(org, ws, ep)
    assert resumed.released == 3 and not resumed.endpoint.paused, resumed
    for request_id in ids:
        d = settled(api, request_id, pb.EXECUTION_STATUS_SUCCEEDED)
        assert [(a.attempt_number, a.manual) for a in d.attempts] == [(1, False)], d
    got = receiver.wait_for(path, 3)
    assert [json.loads(d.body)["n"] for d in got] == [0, 1, 2], [d.body for d in got]
    # Nothing left to release.
    assert api.resume(org, ws, ep).released == 0


def gone_disables(api: Api, setup: Setup) -> None:
    """A 410 disables the endpoint and announces it to the endpoint that names
    hookpost.endpoint.disabled (not to a catch-all); re-enabling sends what was held."""
    client, receiver = setup.client, setup.receiver
    org, ws = str(uuid.uuid4()), str(uuid.uuid4())
    gone, ops, everything = (f"/{p}/{api.name}" for p in ("gone", "ops", "all"))
    receiver.answer(gone, 410)

    def create(path: str, types: list[str]) -> str:
        return setup.grpc.create_endpoint(org, ws, pb.Endpoint(url=receiver.url(path), event_types=types))

    ep = create(gone, ["call.*"])
    create(ops, ["hookpost.endpoint.disabled"])
    create(everything, [])
    first = client.dispatch(organization_id=org, webhook_url="", endpoint_id=ep, webhook_type="call.started", payload={"n": 0})
    d = settled(api, first.request_id, pb.EXECUTION_STATUS_FAILED)
    assert [a.http_status_code for a in d.attempts] == [410], "a 410 is not retried"

    [notice] = receiver.wait_for(ops, 1)
    event = json.loads(notice.body)
    assert notice.headers["x-hookpost-event"] == "hookpost.endpoint.disabled", notice.headers
    assert set(event) == {"type", "endpointId", "workspaceId", "url", "reason", "disableTime"}, event
    assert (event["type"], event["endpointId"], event["workspaceId"], event["url"]) == (
        "hookpost.endpoint.disabled", ep, ws, receiver.url(gone)), event
    assert "410" in event["reason"], event
    disabled = api.endpoint(org, ws, ep)
    assert disabled.disabled and disabled.disabled_reason == event["reason"], disabled
    announced = dt.datetime.fromisoformat(event["disableTime"].replace("Z", "+00:00"))
    assert abs(disabled.disable_time.ToDatetime(dt.timezone.utc) - announced) < dt.timedelta(milliseconds=1), (disabled, event)
    # The catch-all endpoint takes every event but hookpost's own.
    notices = api.logs(pb.ListWebhookLogsRequest(organization_id=org, webhook_type="hookpost.endpoint.disabled"))
    assert len(notices) == 1 and notices[0].webhook_url == receiver.url(ops), notices
    assert receiver.on(everything) == [], "the catch-all endpoint got the notice"

    # While disabled, a delivery is held; re-enabling sends it.
    second = client.dispatch(organization_id=org, webhook_url="", endpoint_id=ep, webhook_type="call.started", payload={"n": 1})
    assert api.details(second.request_id).log.execution_status == pb.EXECUTION_STATUS_HELD
    receiver.answer(gone, 200)
    enabled = api.enable(org, ws, ep)
    assert not enabled.disabled and not enabled.disabled_reason and not enabled.HasField("disable_time"), enabled
    settled(api, second.request_id, pb.EXECUTION_STATUS_SUCCEEDED)
    assert [json.loads(d.body)["n"] for d in receiver.wait_for(gone, 2)] == [0, 1]


def recover_and_dead_letters(api: Api, setup: Setup) -> None:
    """Dead letters by failure category; a recovery of one category, dry run
    first, then a real run polled to done with its counts."""
    client, receiver = setup.client, setup.receiver
    org = str(uuid.uuid4())
    busy, bad = f"/busy/{api.name}", f"/bad/{api.name}"
    receiver.answer(busy, 503)
    receiver.answer(bad, 400)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    # max_retries 0: a 503 fails at once too (http_5xx), a 400 always (http_4xx).
    def send(path: str, n: int) -> str:
        url = receiver.url(path)
        return client.dispatch(organization_id=org, webhook_url=url, webhook_type="order.paid", max_retries=0, payload={"n": n}).request_id

    busy_ids = [send(busy, n) for n in range(3)]
    bad_ids = [send(bad, n) for n in range(2)]
    for request_id in busy_ids + bad_ids:
        settled(api, request_id, pb.EXECUTION_STATUS_FAILED)
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)

    def dead(category: str) -> list[str]:
        request = pb.ListWebhookLogsRequest(
            organization_id=org, execution_status=pb.EXECUTION_STATUS_FAILED, error_category=category, page_size=100
        )
        return sorted(log.request_id for log in api.logs(request))

    assert dead("http_5xx") == sorted(busy_ids)
    assert dead("http_4xx") == sorted(bad_ids)
    assert dead("timeout") == []

    window = pb.RecoverWebhooksRequest(organization_id=org, dry_run=True)
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    everything = api.recover(window)
    assert everything.matched == 5 and not everything.HasField("operation"), everything
    only_5xx = pb.RecoverWebhooksRequest()
    only_5xx.CopyFrom(window)
    only_5xx.error_category = "http_5xx"
    dry = api.recover(only_5xx)
    assert dry.matched == 3 and not dry.HasField("operation"), dry
    assert dead("http_5xx") == sorted(busy_ids), "a dry run changed something"

    receiver.answer(busy, 200)
    only_5xx.dry_run = False
    started = api.recover(only_5xx)
    op = started.operation
    assert op.operation_id and op.kind == "recover", started
    done = eventually("the recovery is done", lambda: o if (o := api.operation(org, op.operation_id)).done else None)
    assert (done.matched, done.recovered, done.error) == (3, 3, ""), done
    for request_id in busy_ids:
        d = settled(api, request_id, pb.EXECUTION_STATUS_SUCCEEDED)
        assert [(a.attempt_number, a.manual) for a in d.attempts] == [(2, True), (1, False)], d
    # The http_4xx ones were outside the filter: still dead letters.
    assert dead("http_5xx") == []
    assert dead("http_4xx") == sorted(bad_ids)
    assert len(receiver.wait_for(busy, 6)) == 6 and len(receiver.on(bad)) == 2

    # A window that ends before it starts is refused, naming end_time.
    inverted = pb.RecoverWebhooksRequest(organization_id=org, dry_run=True)
    inverted.start_time.FromDatetime(end)
    inverted.end_time.FromDatetime(start)
    err = refused(lambda: api.recover(inverted))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.http_status in (None, 400), err
    # Another operation ID: NOT_FOUND.
    err = refused(lambda: api.operation(org, str(uuid.uuid4())))
    assert err.code == grpc.StatusCode.NOT_FOUND, err


def expiry(api: Api, setup: Setup) -> None:
    """A 2 s time to live against a receiver that keeps answering 500: the
    delivery stops retrying at the deadline and fails as "expired"."""
    receiver = setup.receiver
    org, path = str(uuid.uuid4()), f"/expiry/{api.name}"
    receiver.answer(path, 500)
    request = pb.DispatchRequest(
        organization_id=org, webhook_url=receiver.url(path), webhook_type="call.ended", max_retries=20,
    )
    request.ttl.FromSeconds(2)
    sent = api.dispatch(request)
    d = settled(api, sent.request_id, pb.EXECUTION_STATUS_FAILED)
    assert d.log.error_category == "expired", d.log
    assert d.log.HasField("expire_time"), d.log
    assert not d.attempts[0].HasField("http_status_code"), d.attempts[0]
    past = pb.DispatchRequest(organization_id=org, webhook_url=receiver.url(path), webhook_type="call.ended")
    past.expire_time.FromJsonString("2000-01-01T00:00:00Z")
    err = refused(lambda: api.dispatch(past))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "expire" in str(err).lower(), err


def main() -> None:
    addr, key = os.environ["HOOKPOST_ADDR"], os.environ["HOOKPOST_KEY"]
    setup = Setup(Client(addr, key), GrpcApi(addr, key), Receiver())
    for api in (setup.grpc, RestApi(addr, key)):
        for scenario in (redeliver, pause_and_resume, gone_disables, recover_and_dead_letters, expiry):
            scenario(api, setup)
            print(f"python recovery: {scenario.__name__} over {api.name}: ok", flush=True)
    setup.grpc.close()
    setup.client.close()
    setup.receiver.server.shutdown()
    print("python recovery: ok")


if __name__ == "__main__":
    main()
