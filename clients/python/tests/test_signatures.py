"""Standard Webhooks signatures, checked by a receiver with the official
``standardwebhooks`` package, against a live hookpost at HOOKPOST_ADDR
(host:port) with key HOOKPOST_KEY:

- a delivery to an endpoint (Dispatch by endpoint_id) verifies with the
  endpoint's secret (CreateEndpoint's, which GetEndpointSecret reads again);
- after RotateEndpointSecret, a delivery carries two signatures and verifies
  with the old and with the new secret, each on its own Webhook; after a
  rotation with a zero grace period, only the newest secret verifies;
- a tampered body and a stale ``webhook-timestamp`` fail verification;
- a dispatch to a bare webhook_url verifies with GetOrganizationSecret's secret;
- a fan-out (neither webhook_url nor endpoint_id) reaches every enabled
  endpoint whose event types match, each with the same ``webhook-id`` (the
  message ID) and its own request ID, each signed with its endpoint's secret;
- an ed25519 endpoint (SIGNATURE_SCHEME_ED25519) signs ``v1a``, verified
  with the ``whpk_`` public key from GetEndpointSecret using ``cryptography``
  (``standardwebhooks`` for Python checks ``v1`` only); a tampered body fails.

Every wait polls against a deadline."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import grpc
import standardwebhooks
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf import duration_pb2

from hookpost.v1 import webhook_service_pb2 as pb
from hookpost.v1 import webhook_service_pb2_grpc as pb_grpc
from hookpost_client import Client

DEADLINE_S = 20.0


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    # For each secret the receiver held for its path: did it verify?
    verified: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Records every POST and verifies it with ``standardwebhooks`` against
    every secret registered for its path, each on its own Webhook instance.
    Answers 200 when every registered secret verifies (or none is registered
    yet), 401 otherwise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.secrets: dict[str, list[str]] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                delivery = Delivery(self.path, headers, body)
                with outer.lock:
                    secrets = list(outer.secrets.get(self.path, []))
                for secret in secrets:
                    try:
                        standardwebhooks.Webhook(secret).verify(body, headers)
                        delivery.verified[secret] = True
                    except standardwebhooks.WebhookVerificationError as err:
                        delivery.verified[secret] = False
                        delivery.errors[secret] = str(err)
                with outer.lock:
                    outer.deliveries.append(delivery)
                ok = all(delivery.verified.values())
                self.send_response(200 if ok else 401)
                self.end_headers()
                self.wfile.write(b'{"verified": true}' if ok else b'{"verified": false}')

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def expect(self, path: str, *secrets: str) -> None:
        with self.lock:
            self.secrets[path] = list(secrets)

    def wait_for(self, what: str, pred: Callable[[Delivery], bool], count: int = 1) -> list[Delivery]:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            with self.lock:
                found = [d for d in self.deliveries if pred(d)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{what}: {len(found)} of {count} deliveries arrived in time"
            time.sleep(0.02)

    def on_path(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]


def show(d: Delivery) -> str:
    return f"headers={d.headers!r} body={d.body!r} errors={d.errors!r}"


def assert_signed(d: Delivery, message_id: str, request_ids: list[str], signatures: int) -> None:
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature", "x-hookpost-request-id"):
        assert name in d.headers, f"header {name} missing: {show(d)}"
    assert d.headers["webhook-id"] == message_id, f"webhook-id is not the message ID {message_id}: {show(d)}"
    assert d.headers["x-hookpost-request-id"] in request_ids, f"unknown request ID: {show(d)}"
    assert abs(int(d.headers["webhook-timestamp"]) - time.time()) < 60, f"timestamp not now: {show(d)}"
    sigs = d.headers["webhook-signature"].split(" ")
    assert len(sigs) == signatures, f"expected {signatures} signature(s): {show(d)}"
    for sig in sigs:
        version, _, value = sig.partition(",")
        assert version == "v1" and len(base64.b64decode(value)) == 32, f"not a v1 HMAC-SHA256: {show(d)}"


def assert_verifies(d: Delivery, *secrets: str) -> None:
    for secret in secrets:
        assert d.verified.get(secret) is True, f"did not verify with {secret[:10]}...: {show(d)}"
        # And again here, outside the receiver: the payload comes back parsed.
        assert standardwebhooks.Webhook(secret).verify(d.body, d.headers) == json.loads(d.body)


def assert_rejected(d: Delivery, *secrets: str) -> None:
    for secret in secrets:
        try:
            standardwebhooks.Webhook(secret).verify(d.body, d.headers)
        except standardwebhooks.WebhookVerificationError:
            continue
        raise AssertionError(f"verified with a secret that must not sign it ({secret[:10]}...): {show(d)}")


def assert_tamper_fails(d: Delivery, secret: str) -> None:
    wh = standardwebhooks.Webhook(secret)
    wh.verify(d.body, d.headers)  # the untouched delivery verifies
    tampered = d.body.replace(b"}", b', "tampered": true}', 1)
    assert tampered != d.body
    try:
        wh.verify(tampered, d.headers)
        raise AssertionError("a tampered body verified")
    except standardwebhooks.WebhookVerificationError as err:
        assert "signature" in str(err).lower(), err
    stale = dict(d.headers, **{"webhook-timestamp": str(int(time.time()) - 10 * 60)})
    try:
        wh.verify(d.body, stale)
        raise AssertionError("a stale webhook-timestamp verified")
    except standardwebhooks.WebhookVerificationError as err:
        assert "too old" in str(err).lower(), err
    # A stale timestamp with a signature made for it (the replay of an old
    # delivery): still rejected, for the age alone.
    old_ts = int(time.time()) - 10 * 60
    resigned = wh.sign(d.headers["webhook-id"], dt.datetime.fromtimestamp(old_ts, dt.timezone.utc), d.body.decode())
    replay = dict(d.headers, **{"webhook-timestamp": str(old_ts), "webhook-signature": resigned})
    try:
        wh.verify(d.body, replay)
        raise AssertionError("a re-signed stale delivery verified")
    except standardwebhooks.WebhookVerificationError as err:
        assert "too old" in str(err).lower(), err


def verify_v1a(d: Delivery, public_key: str, body: bytes | None = None) -> bool:
    """A Standard Webhooks ``v1a`` check as a receiver holding only the
    ``whpk_`` public key would make: some ed25519 signature in
    ``webhook-signature`` covers "{webhook-id}.{webhook-timestamp}.{body}"."""
    assert public_key.startswith("whpk_"), public_key
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[len("whpk_"):]))
    content = f"{d.headers['webhook-id']}.{d.headers['webhook-timestamp']}.".encode() + (d.body if body is None else body)
    for sig in d.headers["webhook-signature"].split(" "):
        version, _, value = sig.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(value), content)
            return True
        except InvalidSignature:
            pass
    return False


def main() -> None:
    addr, key = os.environ["HOOKPOST_ADDR"], os.environ["HOOKPOST_KEY"]
    client = Client(addr, key)
    channel = grpc.insecure_channel(addr)
    stub = pb_grpc.WebhookServiceStub(channel)
    md = (("authorization", f"Bearer {key}"),)
    receiver = Receiver()
    org = str(uuid.uuid4())

    # 1. An endpoint, dispatched to by endpoint_id.
    created = stub.CreateEndpoint(
        pb.CreateEndpointRequest(
            organization_id=org,
            endpoint=pb.Endpoint(url=receiver.url("/ep"), event_types=["call.ended"], description="signatures"),
        ),
        metadata=md,
    )
    ep = created.endpoint.endpoint_id
    secret1 = created.secret
    assert secret1.startswith("whsec_"), secret1
    assert stub.GetEndpointSecret(pb.GetEndpointSecretRequest(organization_id=org, endpoint_id=ep), metadata=md).secret == secret1
    receiver.expect("/ep", secret1)
    res = client.dispatch(
        organization_id=org, webhook_url="", endpoint_id=ep, webhook_type="call.ended", payload={"event": "call.ended", "n": 1}
    )
    assert res.message_id and list(res.request_ids) == [res.request_id], res
    [d1] = receiver.wait_for("endpoint delivery", lambda d: d.headers.get("x-hookpost-request-id") == res.request_id)
    assert_signed(d1, res.message_id, list(res.request_ids), signatures=1)
    assert_verifies(d1, secret1)
    assert json.loads(d1.body) == {"event": "call.ended", "n": 1}, d1.body
    assert_tamper_fails(d1, secret1)

    # 2. Rotation (default grace period): both secrets verify the next delivery.
    rotated = stub.RotateEndpointSecret(pb.RotateEndpointSecretRequest(organization_id=org, endpoint_id=ep), metadata=md)
    secret2 = rotated.secret
    assert secret2.startswith("whsec_") and secret2 != secret1, (secret1, secret2)
    assert rotated.previous_secret_expire_time.seconds > time.time() + 3600, rotated
    assert stub.GetEndpointSecret(pb.GetEndpointSecretRequest(organization_id=org, endpoint_id=ep), metadata=md).secret == secret2
    receiver.expect("/ep", secret1, secret2)
    res2 = client.dispatch(
        organization_id=org, webhook_url="", endpoint_id=ep, webhook_type="call.ended", payload={"event": "call.ended", "n": 2}
    )
    [d2] = receiver.wait_for("delivery in the grace period", lambda d: d.headers.get("x-hookpost-request-id") == res2.request_id)
    assert_signed(d2, res2.message_id, list(res2.request_ids), signatures=2)
    assert_verifies(d2, secret1, secret2)
    assert_tamper_fails(d2, secret1)
    assert_tamper_fails(d2, secret2)

    # 3. Rotation with no grace period: only the newest secret signs.
    rotated = stub.RotateEndpointSecret(
        pb.RotateEndpointSecretRequest(organization_id=org, endpoint_id=ep, grace_period=duration_pb2.Duration(seconds=0)),
        metadata=md,
    )
    secret3 = rotated.secret
    assert secret3 not in (secret1, secret2)
    receiver.expect("/ep", secret3)
    res3 = client.dispatch(
        organization_id=org, webhook_url="", endpoint_id=ep, webhook_type="call.ended", payload={"event": "call.ended", "n": 3}
    )
    [d3] = receiver.wait_for("delivery after a zero-grace rotation", lambda d: d.headers.get("x-hookpost-request-id") == res3.request_id)
    assert_signed(d3, res3.message_id, list(res3.request_ids), signatures=1)
    assert_verifies(d3, secret3)
    assert_rejected(d3, secret1, secret2)

    # 4. A bare webhook_url: signed with the organization's secret.
    org2 = str(uuid.uuid4())
    receiver.expect("/bare")  # the secret is read below, after dispatch
    res4 = client.dispatch(
        organization_id=org2, webhook_url=receiver.url("/bare"), webhook_type="call.started", payload={"event": "call.started"}
    )
    [d4] = receiver.wait_for("bare-URL delivery", lambda d: d.headers.get("x-hookpost-request-id") == res4.request_id, count=1)
    org_secret = stub.GetOrganizationSecret(pb.GetOrganizationSecretRequest(organization_id=org2), metadata=md).secret
    assert org_secret.startswith("whsec_"), org_secret
    assert_signed(d4, res4.message_id, [res4.request_id], signatures=1)
    standardwebhooks.Webhook(org_secret).verify(d4.body, d4.headers)
    assert_tamper_fails(d4, org_secret)
    assert_rejected(d4, secret1, secret2, secret3)
    # The organization's secret is known before the next dispatch too.
    receiver.expect("/bare", org_secret)
    res4b = client.dispatch(organization_id=org2, webhook_url=receiver.url("/bare"), webhook_type="call.started")
    [d4b] = receiver.wait_for("second bare-URL delivery", lambda d: d.headers.get("x-hookpost-request-id") == res4b.request_id)
    assert_verifies(d4b, org_secret)

    # 5. Fan-out: neither webhook_url nor endpoint_id.
    org3 = str(uuid.uuid4())
    fan: dict[str, str] = {}
    for path, types in (("/fan/exact", ["order.paid"]), ("/fan/wildcard", ["order.*"]), ("/fan/all", []), ("/fan/other", ["call.*"])):
        made = stub.CreateEndpoint(
            pb.CreateEndpointRequest(organization_id=org3, endpoint=pb.Endpoint(url=receiver.url(path), event_types=types)),
            metadata=md,
        )
        fan[path] = made.secret
        receiver.expect(path, made.secret)
    matching = ["/fan/exact", "/fan/wildcard", "/fan/all"]
    res5 = client.dispatch(organization_id=org3, webhook_url="", webhook_type="order.paid", payload={"order": 7})
    assert len(res5.request_ids) == 3 and len(set(res5.request_ids)) == 3, res5
    assert res5.request_id == res5.request_ids[0], res5
    got = receiver.wait_for("fan-out", lambda d: d.headers.get("webhook-id") == res5.message_id, count=3)
    assert sorted(d.path for d in got) == sorted(matching), [show(d) for d in got]
    assert sorted(d.headers["x-hookpost-request-id"] for d in got) == sorted(res5.request_ids)
    for d in got:
        assert_signed(d, res5.message_id, list(res5.request_ids), signatures=1)
        assert_verifies(d, fan[d.path])
        assert_rejected(d, *(s for p, s in fan.items() if p != d.path))
        assert json.loads(d.body) == {"order": 7}, d.body
    # Every delivery has settled (SUCCEEDED: the receiver verified it), and
    # the endpoint whose event types do not match got nothing.
    deadline = time.monotonic() + DEADLINE_S
    for request_id in res5.request_ids:
        while client.log_details(request_id).log.execution_status != pb.EXECUTION_STATUS_SUCCEEDED:
            assert time.monotonic() < deadline, f"fan-out delivery {request_id} did not succeed in time"
            time.sleep(0.05)
    assert receiver.on_path("/fan/other") == [], [show(d) for d in receiver.on_path("/fan/other")]

    # 6. An ed25519 endpoint: v1a, verified with its public key alone.
    made = stub.CreateEndpoint(
        pb.CreateEndpointRequest(
            organization_id=org,
            endpoint=pb.Endpoint(
                url=receiver.url("/ed25519"), event_types=["call.ended"], signature_scheme=pb.SIGNATURE_SCHEME_ED25519
            ),
        ),
        metadata=md,
    )
    assert made.secret.startswith("whsk_"), made.secret
    assert made.endpoint.signature_scheme == pb.SIGNATURE_SCHEME_ED25519, made.endpoint
    read = stub.GetEndpointSecret(
        pb.GetEndpointSecretRequest(organization_id=org, endpoint_id=made.endpoint.endpoint_id), metadata=md
    )
    assert (read.secret, read.public_key) == (made.secret, made.endpoint.public_key), read
    receiver.expect("/ed25519")
    res6 = client.dispatch(
        organization_id=org, webhook_url="", endpoint_id=made.endpoint.endpoint_id, webhook_type="call.ended", payload={"n": 6}
    )
    [d6] = receiver.wait_for("ed25519 delivery", lambda d: d.headers.get("x-hookpost-request-id") == res6.request_id)
    assert d6.headers["webhook-id"] == res6.message_id, show(d6)
    assert [s.partition(",")[0] for s in d6.headers["webhook-signature"].split(" ")] == ["v1a"], show(d6)
    assert verify_v1a(d6, read.public_key), f"v1a did not verify with the public key: {show(d6)}"
    assert not verify_v1a(d6, read.public_key, body=d6.body.replace(b"}", b', "tampered": true}', 1)), "a tampered body verified"

    # No delivery anywhere was refused by the receiver's verification.
    with receiver.lock:
        bad = [d for d in receiver.deliveries if d.verified and not all(d.verified.values())]
    assert not bad, [show(d) for d in bad]

    client.close()
    channel.close()
    receiver.server.shutdown()
    print("python signatures: ok")


if __name__ == "__main__":
    main()
