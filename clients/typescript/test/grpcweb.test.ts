// gRPC-Web from the TypeScript client (Connect's gRPC-Web transport, HTTP/1.1):
// a unary call, and the live tail as a server stream.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { connectWeb, ExecutionStatus } from "../src/index.js";
import { hookpost } from "./server.js";

test("gRPC-Web: dispatch, details and a watch stream", async () => {
  // The first attempt fails and the retry (a second or so later) succeeds:
  // even if the watch request reaches the server after the first attempt,
  // the second one is still ahead of it.
  let calls = 0;
  const receiver = createServer((req, res) => {
    req.resume();
    calls += 1;
    const status = calls === 1 ? 500 : 200;
    req.on("end", () => res.writeHead(status, { "content-type": "application/json" }).end('{"received": true}'));
  });
  await new Promise<void>((ok) => receiver.listen(0, "127.0.0.1", ok));
  const port = (receiver.address() as { port: number }).port;
  const { address, key } = await hookpost();
  const client = connectWeb(address, key);
  const organizationId = randomUUID();
  const abort = new AbortController();
  try {
    const events = client.watchWebhookLogs({ organizationId }, { signal: abort.signal });
    const iterator = events[Symbol.asyncIterator]();
    const first = iterator.next();
    const sent = await client.dispatch({
      organizationId,
      webhookUrl: `http://127.0.0.1:${port}/hook`,
      webhookType: "call_started",
      payload: { event: "call_started" },
      maxRetries: 2,
    });
    const event = await first;
    assert.equal(event.done, false);
    assert.equal(event.value.kind, "attempt");
    assert.equal(event.value.log?.requestId, sent.requestId);
    assert.ok([1, 2].includes(event.value.attempt?.attemptNumber ?? 0));
    const deadline = Date.now() + 20_000;
    for (;;) {
      assert.ok(Date.now() < deadline, "the delivery settles in time");
      const details = await client.getLogDetails({ requestId: sent.requestId });
      if (details.log?.executionStatus === ExecutionStatus.SUCCEEDED) break;
      assert.equal(details.log?.executionStatus, ExecutionStatus.PENDING);
      await new Promise((ok) => setTimeout(ok, 100));
    }
  } finally {
    abort.abort();
    receiver.close();
  }
});
