// Standard Webhooks signatures, checked by a receiver with the official npm
// `standardwebhooks` package: a delivery to an endpoint verifies with its
// secret; after RotateEndpointSecret a delivery carries two signatures and
// verifies with the old and with the new secret (each on its own Webhook),
// after a zero-grace rotation with the newest alone; a tampered body and a
// stale webhook-timestamp are rejected; a bare-URL dispatch verifies with
// GetOrganizationSecret's secret; a fan-out reaches every matching endpoint
// with one webhook-id; an ed25519 endpoint signs `v1a`, verified with the
// whpk_ public key by node:crypto (the npm package checks `v1` only), and a
// tampered body fails. Every wait polls against a deadline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders } from "node:http";
import { createPublicKey, randomUUID, verify } from "node:crypto";
import { Webhook, WebhookVerificationError } from "standardwebhooks";
import { connect, ExecutionStatus, SignatureScheme, type DispatchResponse } from "../src/index.js";
import { hookpost } from "./server.js";

const DEADLINE_MS = 20_000;

type Delivery = {
  path: string;
  headers: Record<string, string>;
  body: Buffer;
  // For each secret the receiver held for its path: did it verify?
  verified: Map<string, boolean>;
  errors: Map<string, string>;
};

function flat(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  return out;
}

function show(d: Delivery): string {
  return JSON.stringify({ headers: d.headers, body: d.body.toString(), errors: Object.fromEntries(d.errors) });
}

/** Records every POST and verifies it against every secret registered for its
 * path, each on its own Webhook; 200 when all verify, 401 otherwise. */
class Receiver {
  deliveries: Delivery[] = [];
  secrets = new Map<string, string[]>();
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const d: Delivery = {
        path: req.url ?? "",
        headers: flat(req.headers),
        body: Buffer.concat(chunks),
        verified: new Map(),
        errors: new Map(),
      };
      for (const secret of this.secrets.get(d.path) ?? []) {
        try {
          new Webhook(secret).verify(d.body, d.headers);
          d.verified.set(secret, true);
        } catch (err) {
          if (!(err instanceof WebhookVerificationError)) throw err;
          d.verified.set(secret, false);
          d.errors.set(secret, err.message);
        }
      }
      this.deliveries.push(d);
      const ok = [...d.verified.values()].every(Boolean);
      res.writeHead(ok ? 200 : 401, { "content-type": "application/json" }).end(`{"verified": ${ok}}`);
    });
  });

  async listen(): Promise<void> {
    await new Promise<void>((ok) => this.server.listen(0, "127.0.0.1", ok));
  }

  url(path: string): string {
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}${path}`;
  }

  expect(path: string, ...secrets: string[]): void {
    this.secrets.set(path, secrets);
  }

  async waitFor(what: string, pred: (d: Delivery) => boolean, count = 1): Promise<Delivery[]> {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const found = this.deliveries.filter(pred);
      if (found.length >= count) return found;
      assert.ok(Date.now() < deadline, `${what}: ${found.length} of ${count} deliveries arrived in time`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  close(): void {
    // hookpost keeps its connections to receivers alive; drop them so the
    // test process can exit.
    this.server.close();
    this.server.closeAllConnections();
  }
}

const byRequest = (res: DispatchResponse) => (d: Delivery) => d.headers["x-hookpost-request-id"] === res.requestId;

function assertSigned(d: Delivery, res: DispatchResponse, signatures: number): void {
  for (const name of ["webhook-id", "webhook-timestamp", "webhook-signature", "x-hookpost-request-id"]) {
    assert.ok(name in d.headers, `header ${name} missing: ${show(d)}`);
  }
  assert.ok(res.messageId, "DispatchResponse.message_id is empty");
  assert.equal(d.headers["webhook-id"], res.messageId, `webhook-id is not the message ID: ${show(d)}`);
  assert.ok(res.requestIds.includes(d.headers["x-hookpost-request-id"]), `unknown request ID: ${show(d)}`);
  assert.ok(Math.abs(Number(d.headers["webhook-timestamp"]) - Date.now() / 1000) < 60, `timestamp not now: ${show(d)}`);
  const sigs = d.headers["webhook-signature"].split(" ");
  assert.equal(sigs.length, signatures, `expected ${signatures} signature(s): ${show(d)}`);
  for (const sig of sigs) {
    const [version, value] = sig.split(",");
    assert.ok(version === "v1" && Buffer.from(value, "base64").length === 32, `not a v1 HMAC-SHA256: ${show(d)}`);
  }
}

function assertVerifies(d: Delivery, ...secrets: string[]): void {
  for (const secret of secrets) {
    assert.equal(d.verified.get(secret), true, `did not verify with ${secret.slice(0, 10)}...: ${show(d)}`);
    // And again here, outside the receiver: the payload comes back parsed.
    assert.deepEqual(new Webhook(secret).verify(d.body, d.headers), JSON.parse(d.body.toString()));
  }
}

function assertRejected(d: Delivery, ...secrets: string[]): void {
  for (const secret of secrets) {
    assert.throws(() => new Webhook(secret).verify(d.body, d.headers), WebhookVerificationError, show(d));
  }
}

/** A Standard Webhooks `v1a` check as a receiver holding only the whpk_ public
 * key would make: some ed25519 signature covers "{id}.{timestamp}.{body}". */
function verifiesV1a(d: Delivery, publicKey: string, body: Buffer = d.body): boolean {
  assert.match(publicKey, /^whpk_/);
  const x = Buffer.from(publicKey.slice("whpk_".length), "base64").toString("base64url");
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x }, format: "jwk" });
  const content = Buffer.concat([Buffer.from(`${d.headers["webhook-id"]}.${d.headers["webhook-timestamp"]}.`), body]);
  return d.headers["webhook-signature"]
    .split(" ")
    .map((sig) => sig.split(","))
    .some(([version, value]) => version === "v1a" && verify(null, content, key, Buffer.from(value, "base64")));
}

function assertTamperFails(d: Delivery, secret: string): void {
  const wh = new Webhook(secret);
  wh.verify(d.body, d.headers); // the untouched delivery verifies
  const tampered = d.body.toString().replace("}", ', "tampered": true}');
  assert.notEqual(tampered, d.body.toString());
  assert.throws(() => wh.verify(tampered, d.headers), /No matching signature/);
  const oldTs = Math.floor(Date.now() / 1000) - 10 * 60;
  const stale = { ...d.headers, "webhook-timestamp": String(oldTs) };
  assert.throws(() => wh.verify(d.body, stale), /timestamp too old/);
  // The replay of an old delivery, re-signed for its timestamp: still rejected.
  const resigned = wh.sign(d.headers["webhook-id"], new Date(oldTs * 1000), d.body);
  assert.throws(() => wh.verify(d.body, { ...stale, "webhook-signature": resigned }), /timestamp too old/);
}

test("deliveries verify with standardwebhooks, through a rotation; tampering and staleness do not", async () => {
  const receiver = new Receiver();
  await receiver.listen();
  try {
    const { address, key } = await hookpost();
    const client = connect(address, key);
    const organizationId = randomUUID();

    // An endpoint, dispatched to by endpoint_id.
    const created = await client.createEndpoint({
      organizationId,
      endpoint: { url: receiver.url("/ep"), eventTypes: ["call.ended"] },
    });
    const endpointId = created.endpoint!.endpointId;
    const secret1 = created.secret;
    assert.match(secret1, /^whsec_/);
    assert.equal((await client.getEndpointSecret({ organizationId, endpointId })).secret, secret1);
    receiver.expect("/ep", secret1);
    const res1 = await client.dispatch({ organizationId, endpointId, webhookType: "call.ended", payload: { n: 1 } });
    assert.deepEqual(res1.requestIds, [res1.requestId]);
    const [d1] = await receiver.waitFor("endpoint delivery", byRequest(res1));
    assertSigned(d1, res1, 1);
    assertVerifies(d1, secret1);
    assert.deepEqual(JSON.parse(d1.body.toString()), { n: 1 });
    assertTamperFails(d1, secret1);

    // Rotation with the default grace period: old and new secrets both verify.
    const rotated = await client.rotateEndpointSecret({ organizationId, endpointId });
    const secret2 = rotated.secret;
    assert.ok(secret2.startsWith("whsec_") && secret2 !== secret1);
    assert.ok(Number(rotated.previousSecretExpireTime!.seconds) > Date.now() / 1000 + 3600);
    assert.equal((await client.getEndpointSecret({ organizationId, endpointId })).secret, secret2);
    receiver.expect("/ep", secret1, secret2);
    const res2 = await client.dispatch({ organizationId, endpointId, webhookType: "call.ended", payload: { n: 2 } });
    const [d2] = await receiver.waitFor("delivery in the grace period", byRequest(res2));
    assertSigned(d2, res2, 2);
    assertVerifies(d2, secret1, secret2);
    assertTamperFails(d2, secret1);
    assertTamperFails(d2, secret2);

    // Rotation with no grace period: the newest secret alone signs.
    const secret3 = (await client.rotateEndpointSecret({ organizationId, endpointId, gracePeriod: { seconds: 0n } }))
      .secret;
    assert.ok(![secret1, secret2].includes(secret3));
    receiver.expect("/ep", secret3);
    const res3 = await client.dispatch({ organizationId, endpointId, webhookType: "call.ended", payload: { n: 3 } });
    const [d3] = await receiver.waitFor("delivery after a zero-grace rotation", byRequest(res3));
    assertSigned(d3, res3, 1);
    assertVerifies(d3, secret3);
    assertRejected(d3, secret1, secret2);

    // A bare webhook_url: signed with the organization's secret.
    const org2 = randomUUID();
    const orgSecret = (await client.getOrganizationSecret({ organizationId: org2 })).secret;
    assert.match(orgSecret, /^whsec_/);
    receiver.expect("/bare", orgSecret);
    const res4 = await client.dispatch({
      organizationId: org2,
      webhookUrl: receiver.url("/bare"),
      webhookType: "call.started",
      payload: { event: "call.started" },
    });
    const [d4] = await receiver.waitFor("bare-URL delivery", byRequest(res4));
    assertSigned(d4, res4, 1);
    assertVerifies(d4, orgSecret);
    assertTamperFails(d4, orgSecret);
    assertRejected(d4, secret1, secret2, secret3);

    // Fan-out: neither webhook_url nor endpoint_id.
    const org3 = randomUUID();
    const fan = new Map<string, string>();
    for (const [path, eventTypes] of [
      ["/fan/exact", ["order.paid"]],
      ["/fan/wildcard", ["order.*"]],
      ["/fan/all", []],
      ["/fan/other", ["call.*"]],
    ] as const) {
      const made = await client.createEndpoint({
        organizationId: org3,
        endpoint: { url: receiver.url(path), eventTypes: [...eventTypes] },
      });
      fan.set(path, made.secret);
      receiver.expect(path, made.secret);
    }
    const res5 = await client.dispatch({ organizationId: org3, webhookType: "order.paid", payload: { order: 7 } });
    assert.equal(new Set(res5.requestIds).size, 3, JSON.stringify(res5.requestIds));
    assert.equal(res5.requestId, res5.requestIds[0]);
    const got = await receiver.waitFor("fan-out", (d) => d.headers["webhook-id"] === res5.messageId, 3);
    assert.deepEqual(got.map((d) => d.path).sort(), ["/fan/all", "/fan/exact", "/fan/wildcard"]);
    assert.deepEqual(got.map((d) => d.headers["x-hookpost-request-id"]).sort(), [...res5.requestIds].sort());
    for (const d of got) {
      assertSigned(d, res5, 1);
      assertVerifies(d, fan.get(d.path)!);
      assertRejected(d, ...[...fan].filter(([p]) => p !== d.path).map(([, s]) => s));
    }
    const deadline = Date.now() + DEADLINE_MS;
    for (const requestId of res5.requestIds) {
      while ((await client.getLogDetails({ requestId })).log?.executionStatus !== ExecutionStatus.SUCCEEDED) {
        assert.ok(Date.now() < deadline, `fan-out delivery ${requestId} did not succeed in time`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    assert.deepEqual(receiver.deliveries.filter((d) => d.path === "/fan/other").map(show), []);

    // An ed25519 endpoint: v1a, verified with its public key alone.
    const ed = await client.createEndpoint({
      organizationId,
      endpoint: { url: receiver.url("/ed25519"), eventTypes: ["call.ended"], signatureScheme: SignatureScheme.ED25519 },
    });
    assert.match(ed.secret, /^whsk_/);
    assert.equal(ed.endpoint!.signatureScheme, SignatureScheme.ED25519);
    const edSecret = await client.getEndpointSecret({ organizationId, endpointId: ed.endpoint!.endpointId });
    assert.deepEqual([edSecret.secret, edSecret.publicKey], [ed.secret, ed.endpoint!.publicKey]);
    const res6 = await client.dispatch({
      organizationId,
      endpointId: ed.endpoint!.endpointId,
      webhookType: "call.ended",
      payload: { n: 6 },
    });
    const [d6] = await receiver.waitFor("ed25519 delivery", byRequest(res6));
    assert.equal(d6.headers["webhook-id"], res6.messageId, show(d6));
    assert.match(d6.headers["webhook-signature"], /^v1a,[^ ]+$/, show(d6));
    assert.ok(verifiesV1a(d6, edSecret.publicKey), `v1a did not verify with the public key: ${show(d6)}`);
    const tampered = Buffer.from(d6.body.toString().replace("}", ', "tampered": true}'));
    assert.ok(!verifiesV1a(d6, edSecret.publicKey, tampered), "a tampered body verified");

    // The receiver refused nothing.
    const refused = receiver.deliveries.filter((d) => [...d.verified.values()].some((v) => !v));
    assert.deepEqual(refused.map(show), []);
  } finally {
    receiver.close();
  }
});
