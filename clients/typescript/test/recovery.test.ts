// Redelivery, pause and resume with held deliveries, auto-disable (a 410) with
// its `hookpost.endpoint.disabled` notice, recovery (a dry run, then a real run
// polled to done) and the dead-letter view. Every scenario runs twice, each on
// its own organization: over gRPC (the generated Connect client) and over the
// REST gateway (fetch; every answer is read into its generated message with
// fromJson, which refuses unknown fields). Setup (Dispatch, CreateEndpoint) is
// over gRPC. The receiver listens on 127.0.0.1 and answers each path with the
// status the scenario sets. Every wait polls against a deadline.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import {
  create,
  fromJson,
  toJson,
  type DescMessage,
  type JsonValue,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  connect,
  ExecutionStatus,
  GetEndpointResponseSchema,
  GetLogDetailsResponseSchema,
  GetOperationResponseSchema,
  ListWebhookLogsRequestSchema,
  ListWebhookLogsResponseSchema,
  PauseEndpointResponseSchema,
  RecoverWebhooksRequestSchema,
  RecoverWebhooksResponseSchema,
  RedeliverWebhookResponseSchema,
  ResumeEndpointResponseSchema,
  UpdateEndpointResponseSchema,
  type Endpoint,
  type GetLogDetailsResponse,
  type HookpostClient,
  type Operation,
  type PauseEndpointResponse,
  type RecoverWebhooksResponse,
  type RedeliverWebhookResponse,
  type ResumeEndpointResponse,
  type WebhookLog,
} from "../src/index.js";
import { hookpost } from "./server.js";

const DEADLINE_MS = 20_000;

type Delivery = { path: string; headers: Record<string, string>; body: string };

/** Records every POST; answers each path with the status set by `answer` (200 until then). */
class Receiver {
  deliveries: Delivery[] = [];
  answers = new Map<string, number>();
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const headers: Record<string, string> = {};
      for (const [name, value] of Object.entries(req.headers)) {
        if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(", ") : value;
      }
      const path = req.url ?? "";
      this.deliveries.push({ path, headers, body: Buffer.concat(chunks).toString() });
      const status = this.answers.get(path) ?? 200;
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ status }));
    });
  });

  async listen(): Promise<void> {
    await new Promise<void>((ok) => this.server.listen(0, "127.0.0.1", ok));
  }

  url(path: string): string {
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}${path}`;
  }

  answer(path: string, status: number): void {
    this.answers.set(path, status);
  }

  on(path: string): Delivery[] {
    return this.deliveries.filter((d) => d.path === path);
  }

  waitFor(path: string, count: number): Promise<Delivery[]> {
    return eventually(`${count} deliveries on ${path}`, async () => {
      const got = this.on(path);
      return got.length >= count ? got : undefined;
    });
  }

  close(): void {
    // hookpost keeps its connections to receivers alive; drop them so the
    // test process can exit.
    this.server.close();
    this.server.closeAllConnections();
  }
}

async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const got = await probe();
    if (got !== undefined) return got;
    assert.ok(Date.now() < deadline, `${what}: not in time`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A refused call: its gRPC code, and over REST its HTTP status. */
class ApiError extends Error {
  constructor(
    readonly code: Code,
    readonly httpStatus: number | undefined,
    message: string,
  ) {
    super(`${Code[code]} (HTTP ${httpStatus}): ${message}`);
  }
}

type Recover = MessageInitShape<typeof RecoverWebhooksRequestSchema>;
type ListLogs = MessageInitShape<typeof ListWebhookLogsRequestSchema>;

/** The calls under test, the same over either transport. */
interface Api {
  name: "gRPC" | "REST";
  redeliver(requestId: string): Promise<RedeliverWebhookResponse>;
  details(requestId: string): Promise<GetLogDetailsResponse>;
  pause(org: string, ws: string, ep: string): Promise<PauseEndpointResponse>;
  resume(org: string, ws: string, ep: string): Promise<ResumeEndpointResponse>;
  endpoint(org: string, ws: string, ep: string): Promise<Endpoint>;
  enable(org: string, ws: string, ep: string): Promise<Endpoint>;
  recover(request: Recover): Promise<RecoverWebhooksResponse>;
  operation(org: string, operationId: string): Promise<Operation>;
  logs(request: ListLogs): Promise<WebhookLog[]>;
}

function grpcApi(client: HookpostClient): Api {
  const call = async <T>(p: Promise<T>): Promise<T> => {
    try {
      return await p;
    } catch (err) {
      const e = ConnectError.from(err);
      throw new ApiError(e.code, undefined, e.rawMessage);
    }
  };
  return {
    name: "gRPC",
    redeliver: (requestId) => call(client.redeliverWebhook({ requestId })),
    details: (requestId) => call(client.getLogDetails({ requestId })),
    pause: (organizationId, workspaceId, endpointId) =>
      call(client.pauseEndpoint({ organizationId, workspaceId, endpointId })),
    resume: (organizationId, workspaceId, endpointId) =>
      call(client.resumeEndpoint({ organizationId, workspaceId, endpointId })),
    endpoint: async (organizationId, workspaceId, endpointId) =>
      (await call(client.getEndpoint({ organizationId, workspaceId, endpointId }))).endpoint!,
    enable: async (organizationId, workspaceId, endpointId) =>
      (
        await call(
          client.updateEndpoint({
            organizationId,
            workspaceId,
            endpointId,
            endpoint: { disabled: false },
            updateMask: { paths: ["disabled"] },
          }),
        )
      ).endpoint!,
    recover: (request) => call(client.recoverWebhooks(request)),
    operation: async (organizationId, operationId) =>
      (await call(client.getOperation({ organizationId, operationId }))).operation!,
    logs: async (request) => (await call(client.listWebhookLogs(request))).logs,
  };
}

function restApi(address: string, key: string): Api {
  const call = async <Desc extends DescMessage>(
    method: string,
    path: string,
    body: JsonValue | undefined,
    answer: Desc,
  ): Promise<MessageShape<Desc>> => {
    const res = await fetch(address + path, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await res.json()) as JsonValue;
    if (res.status !== 200) {
      const status = json as { code: number; message: string }; // google.rpc.Status
      throw new ApiError(status.code as Code, res.status, status.message);
    }
    // Unknown fields refused: the answer is the documented message.
    return fromJson(answer, json);
  };
  const subscription = (org: string, ws: string, ep: string) =>
    `/organizations/${org}/workspaces/${ws}/webhook-subscriptions/${ep}`;
  return {
    name: "REST",
    redeliver: (requestId) => call("POST", `/v1/webhook-logs/${requestId}:redeliver`, {}, RedeliverWebhookResponseSchema),
    details: (requestId) => call("GET", `/v1/webhook-logs/${requestId}`, undefined, GetLogDetailsResponseSchema),
    pause: (org, ws, ep) => call("POST", `${subscription(org, ws, ep)}:pause`, {}, PauseEndpointResponseSchema),
    resume: (org, ws, ep) => call("POST", `${subscription(org, ws, ep)}:resume`, {}, ResumeEndpointResponseSchema),
    endpoint: async (org, ws, ep) =>
      (await call("GET", subscription(org, ws, ep), undefined, GetEndpointResponseSchema)).endpoint!,
    enable: async (org, ws, ep) => {
      const path = `${subscription(org, ws, ep)}?updateMask=disabled`;
      return (await call("PATCH", path, { disabled: false }, UpdateEndpointResponseSchema)).endpoint!;
    },
    recover: (request) => {
      const json = toJson(RecoverWebhooksRequestSchema, create(RecoverWebhooksRequestSchema, request));
      const { organizationId, ...body } = json as { organizationId: string };
      return call("POST", `/organizations/${organizationId}/webhook-logs:recover`, body, RecoverWebhooksResponseSchema);
    },
    operation: async (org, operationId) =>
      (await call("GET", `/organizations/${org}/operations/${operationId}`, undefined, GetOperationResponseSchema))
        .operation!,
    logs: async (request) => {
      const json = toJson(ListWebhookLogsRequestSchema, create(ListWebhookLogsRequestSchema, request));
      const fields = json as Record<string, unknown>;
      const query = new URLSearchParams(Object.entries(fields).map(([k, v]) => [k, String(v)]));
      return (await call("GET", `/v1/webhook-logs?${query}`, undefined, ListWebhookLogsResponseSchema)).logs;
    },
  };
}

type Setup = { client: HookpostClient; receiver: Receiver };

function settled(api: Api, requestId: string, status: ExecutionStatus): Promise<GetLogDetailsResponse> {
  return eventually(`${requestId} reaches ${ExecutionStatus[status]}`, async () => {
    const d = await api.details(requestId);
    return d.log?.executionStatus === status ? d : undefined;
  });
}

async function refused(call: () => Promise<unknown>): Promise<ApiError> {
  try {
    await call();
  } catch (err) {
    if (err instanceof ApiError) return err;
    throw err;
  }
  assert.fail("the call was accepted");
}

const numbered = (d: GetLogDetailsResponse) => d.attempts.map((a) => [a.attemptNumber, a.manual]);
const restStatus = (api: Api, status: number) => (api.name === "REST" ? status : undefined);

async function redeliver(api: Api, { client, receiver }: Setup): Promise<void> {
  const organizationId = randomUUID();
  const path = `/redeliver/${api.name}`;
  receiver.answer(path, 400); // not retried: fails at once
  const sent = await client.dispatch({
    organizationId,
    webhookUrl: receiver.url(path),
    webhookType: "call.ended",
    payload: { n: 1 },
  });
  let d = await settled(api, sent.requestId, ExecutionStatus.FAILED);
  assert.deepEqual(numbered(d), [[1, false]]);
  assert.equal(d.log!.errorCategory, "http_4xx");

  receiver.answer(path, 200);
  const again = await api.redeliver(sent.requestId);
  assert.equal(again.log!.requestId, sent.requestId);
  // Pending again with a fresh budget (or, if the worker was quick, done).
  const status = again.log!.executionStatus;
  assert.ok([ExecutionStatus.PENDING, ExecutionStatus.SUCCEEDED].includes(status), ExecutionStatus[status]);
  d = await settled(api, sent.requestId, ExecutionStatus.SUCCEEDED);
  assert.deepEqual(numbered(d), [[2, true], [1, false]]);
  assert.equal(d.attempts[0].httpStatusCode, 200);
  const [first, second] = await receiver.waitFor(path, 2);
  assert.equal(first.headers["webhook-id"], sent.messageId);
  assert.equal(second.headers["webhook-id"], first.headers["webhook-id"], "the same webhook-id");
  assert.deepEqual([first.headers["x-hookpost-attempt"], second.headers["x-hookpost-attempt"]], ["1", "2"]);
  assert.equal(second.body, first.body);

  const err = await refused(() => api.redeliver(randomUUID()));
  assert.deepEqual([err.code, err.httpStatus], [Code.NotFound, restStatus(api, 404)], err.message);
}

async function pauseAndResume(api: Api, { client, receiver }: Setup): Promise<void> {
  const [org, ws, path] = [randomUUID(), randomUUID(), `/paused/${api.name}`];
  const made = await client.createEndpoint({
    organizationId: org,
    workspaceId: ws,
    // One at a time, so the receiver sees the order they are released in.
    endpoint: { url: receiver.url(path), eventTypes: ["call.*"], policy: { maxInFlight: 1 } },
  });
  const ep = made.endpoint!.endpointId;
  const paused = await api.pause(org, ws, ep);
  assert.ok(paused.endpoint!.paused && paused.endpoint!.endpointId === ep);
  assert.ok((await api.endpoint(org, ws, ep)).paused);

  const ids: string[] = [];
  for (let n = 0; n < 3; n++) {
    const sent = await client.dispatch({ organizationId: org, endpointId: ep, webhookType: "call.started", payload: { n } });
    ids.push(sent.requestId);
  }
  for (const id of ids) {
    const d = await api.details(id);
    assert.equal(d.log!.executionStatus, ExecutionStatus.HELD);
    assert.equal(d.attempts.length, 0);
  }
  const held = await api.logs({ organizationId: org, executionStatus: ExecutionStatus.HELD, pageSize: 100 });
  assert.deepEqual(held.map((l) => l.requestId).sort(), [...ids].sort());
  // A held delivery is not settled: it cannot be redelivered
  // (FAILED_PRECONDITION, which the REST gateway answers as 400).
  const err = await refused(() => api.redeliver(ids[0]));
  assert.deepEqual([err.code, err.httpStatus], [Code.FailedPrecondition, restStatus(api, 400)], err.message);
  assert.deepEqual(receiver.on(path), [], "a paused endpoint received a delivery");

  const resumed = await api.resume(org, ws, ep);
  assert.equal(resumed.released, 3n);
  assert.equal(resumed.endpoint!.paused, false);
  for (const id of ids) {
    assert.deepEqual(numbered(await settled(api, id, ExecutionStatus.SUCCEEDED)), [[1, false]]);
  }
  const got = await receiver.waitFor(path, 3);
  assert.deepEqual(got.map((d) => JSON.parse(d.body).n), [0, 1, 2], "released oldest first");
  assert.equal((await api.resume(org, ws, ep)).released, 0n, "nothing left to release");
}

async function goneDisables(api: Api, { client, receiver }: Setup): Promise<void> {
  const [org, ws] = [randomUUID(), randomUUID()];
  const [gone, ops, everything] = ["gone", "ops", "all"].map((p) => `/${p}/${api.name}`);
  receiver.answer(gone, 410);
  const createEndpoint = async (path: string, eventTypes: string[]) => {
    const endpoint = { url: receiver.url(path), eventTypes };
    return (await client.createEndpoint({ organizationId: org, workspaceId: ws, endpoint })).endpoint!.endpointId;
  };
  const ep = await createEndpoint(gone, ["call.*"]);
  const toGone = (n: number) =>
    client.dispatch({ organizationId: org, endpointId: ep, webhookType: "call.started", payload: { n } });
  await createEndpoint(ops, ["hookpost.endpoint.disabled"]);
  await createEndpoint(everything, []);

  const first = await toGone(0);
  const d = await settled(api, first.requestId, ExecutionStatus.FAILED);
  assert.deepEqual(d.attempts.map((a) => a.httpStatusCode), [410], "a 410 is not retried");

  const [notice] = await receiver.waitFor(ops, 1);
  assert.equal(notice.headers["x-hookpost-event"], "hookpost.endpoint.disabled");
  const event = JSON.parse(notice.body);
  assert.deepEqual(Object.keys(event).sort(), ["disableTime", "endpointId", "reason", "type", "url", "workspaceId"]);
  assert.deepEqual(
    [event.type, event.endpointId, event.workspaceId, event.url],
    ["hookpost.endpoint.disabled", ep, ws, receiver.url(gone)],
  );
  assert.match(event.reason, /410/);
  const disabled = await api.endpoint(org, ws, ep);
  assert.ok(disabled.disabled);
  assert.equal(disabled.disabledReason, event.reason);
  // The event's disableTime is the endpoint's, to the millisecond.
  const { seconds, nanos } = disabled.disableTime!;
  const apart = Number(seconds) * 1000 + nanos / 1e6 - Date.parse(event.disableTime);
  assert.ok(Math.abs(apart) < 1, `disableTime ${event.disableTime} is ${apart} ms from the endpoint's`);
  // The catch-all endpoint takes every event but hookpost's own.
  const notices = await api.logs({ organizationId: org, webhookType: "hookpost.endpoint.disabled" });
  assert.deepEqual(notices.map((l) => l.webhookUrl), [receiver.url(ops)]);
  assert.deepEqual(receiver.on(everything), [], "the catch-all endpoint got the notice");

  // While disabled, a delivery is held; re-enabling sends it.
  const second = await toGone(1);
  assert.equal((await api.details(second.requestId)).log!.executionStatus, ExecutionStatus.HELD);
  receiver.answer(gone, 200);
  const enabled = await api.enable(org, ws, ep);
  assert.deepEqual([enabled.disabled, enabled.disabledReason, enabled.disableTime], [false, "", undefined]);
  await settled(api, second.requestId, ExecutionStatus.SUCCEEDED);
  assert.deepEqual((await receiver.waitFor(gone, 2)).map((x) => JSON.parse(x.body).n), [0, 1]);
}

async function recoverAndDeadLetters(api: Api, { client, receiver }: Setup): Promise<void> {
  const organizationId = randomUUID();
  const [busy, bad] = [`/busy/${api.name}`, `/bad/${api.name}`];
  receiver.answer(busy, 503);
  receiver.answer(bad, 400);
  const startTime = timestampFromDate(new Date(Date.now() - 60_000));
  // maxRetries 0: a 503 fails at once too (http_5xx), a 400 always (http_4xx).
  const send = async (path: string, n: number) => {
    const webhookUrl = receiver.url(path);
    const sent = await client.dispatch({ organizationId, webhookUrl, webhookType: "order.paid", maxRetries: 0, payload: { n } });
    return sent.requestId;
  };
  const busyIds = [await send(busy, 0), await send(busy, 1), await send(busy, 2)];
  const badIds = [await send(bad, 0), await send(bad, 1)];
  for (const id of [...busyIds, ...badIds]) await settled(api, id, ExecutionStatus.FAILED);
  const endTime = timestampFromDate(new Date(Date.now() + 60_000));

  const dead = async (errorCategory: string) =>
    (await api.logs({ organizationId, executionStatus: ExecutionStatus.FAILED, errorCategory, pageSize: 100 }))
      .map((l) => l.requestId)
      .sort();
  assert.deepEqual(await dead("http_5xx"), [...busyIds].sort());
  assert.deepEqual(await dead("http_4xx"), [...badIds].sort());
  assert.deepEqual(await dead("timeout"), []);

  const window = { organizationId, startTime, endTime, dryRun: true };
  const everything = await api.recover(window);
  assert.deepEqual([everything.matched, everything.operation], [5n, undefined]);
  const dry = await api.recover({ ...window, errorCategory: "http_5xx" });
  assert.deepEqual([dry.matched, dry.operation], [3n, undefined]);
  assert.deepEqual(await dead("http_5xx"), [...busyIds].sort(), "a dry run changed something");

  receiver.answer(busy, 200);
  const op = (await api.recover({ ...window, errorCategory: "http_5xx", dryRun: false })).operation!;
  assert.ok(op.operationId);
  assert.equal(op.kind, "recover");
  const done = await eventually("the recovery is done", async () => {
    const o = await api.operation(organizationId, op.operationId);
    return o.done ? o : undefined;
  });
  assert.deepEqual([done.matched, done.recovered, done.error], [3n, 3n, ""]);
  for (const id of busyIds) {
    assert.deepEqual(numbered(await settled(api, id, ExecutionStatus.SUCCEEDED)), [[2, true], [1, false]]);
  }
  // The http_4xx ones were outside the filter: still dead letters.
  assert.deepEqual(await dead("http_5xx"), []);
  assert.deepEqual(await dead("http_4xx"), [...badIds].sort());
  assert.equal((await receiver.waitFor(busy, 6)).length, 6);
  assert.equal(receiver.on(bad).length, 2);

  // A window that ends before it starts is refused.
  const err = await refused(() => api.recover({ ...window, startTime: endTime, endTime: startTime }));
  assert.deepEqual([err.code, err.httpStatus], [Code.InvalidArgument, restStatus(api, 400)], err.message);
  const missing = await refused(() => api.operation(organizationId, randomUUID()));
  assert.deepEqual([missing.code, missing.httpStatus], [Code.NotFound, restStatus(api, 404)], missing.message);
}

const scenarios = [
  ["a failed delivery is redelivered: attempt 2, manual, same webhook-id", redeliver],
  ["a paused endpoint holds its deliveries; resume sends them in order", pauseAndResume],
  ["a 410 disables the endpoint and announces hookpost.endpoint.disabled", goneDisables],
  ["dead letters by error category; a recovery dry run, then a run polled to done", recoverAndDeadLetters],
] as const;

for (const transport of ["gRPC", "REST"] as const) {
  for (const [name, scenario] of scenarios) {
    test(`${name} (${transport})`, async () => {
      const { address, key } = await hookpost();
      const client = connect(address, key);
      const api = transport === "gRPC" ? grpcApi(client) : restApi(address, key);
      const receiver = new Receiver();
      await receiver.listen();
      try {
        await scenario(api, { client, receiver });
      } finally {
        receiver.close();
      }
    });
  }
}
