// Runs against the server at HOOKPOST_ADDR (host:port, as for the Python client
// and grpcurl, or a URL) with key HOOKPOST_KEY when set; otherwise starts its
// own `hookpost serve` (HOOKPOST_BIN) on a temporary embedded store (./server.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { connect, allLogs, ExecutionStatus } from "../src/index.js";
import { hookpost } from "./server.js";

test("dispatch, list with page iteration, and read details", async () => {
  const receiver = createServer((req, res) => {
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end('{"received": true}'));
  });
  await new Promise<void>((ok) => receiver.listen(0, "127.0.0.1", ok));
  const port = (receiver.address() as { port: number }).port;
  try {
    const { address, key } = await hookpost();
    const client = connect(address, key);
    const organizationId = randomUUID();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await client.dispatch({
        organizationId,
        webhookUrl: `http://127.0.0.1:${port}/hook`,
        webhookType: "call_started",
        callId: 101n,
        payload: { event: "call_started", n: i },
      });
      ids.push(res.requestId);
    }
    const deadline = Date.now() + 20_000;
    for (const id of ids) {
      for (;;) {
        const details = await client.getLogDetails({ requestId: id });
        if (details.log?.executionStatus === ExecutionStatus.SUCCEEDED) {
          assert.equal(details.attempts[0].httpStatusCode, 200);
          assert.equal(details.attempts[0].responseBody, '{"received": true}');
          break;
        }
        assert.ok(Date.now() < deadline, "delivery did not settle in time");
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const seen: string[] = [];
    for await (const log of allLogs(client, { organizationId, pageSize: 2 })) {
      seen.push(log.requestId);
    }
    assert.deepEqual(seen, [...ids].reverse(), "newest first, across pages");

    await assert.rejects(
      client.dispatch({ organizationId: "nope", webhookUrl: "ftp://x", webhookType: "t" }),
      (err: unknown) => ConnectError.from(err).code === Code.InvalidArgument,
    );
  } finally {
    // hookpost keeps its connections to receivers alive; drop them so the
    // test process can exit.
    receiver.close();
    receiver.closeAllConnections();
  }
});
