// Runs against the server at HOOKPOST_ADDR (host:port, as for the Python client
// and grpcurl, or a URL) with key HOOKPOST_KEY when set; otherwise starts its
// own `hookpost serve` (HOOKPOST_BIN) on a temporary embedded store.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { Code, ConnectError } from "@connectrpc/connect";
import { connect, allLogs, ExecutionStatus } from "../src/index.js";

let server: ChildProcess | undefined;
after(() => server?.kill());

async function hookpost(): Promise<{ address: string; key: string }> {
  if (process.env.HOOKPOST_ADDR && process.env.HOOKPOST_KEY) {
    const addr = process.env.HOOKPOST_ADDR;
    return { address: addr.includes("://") ? addr : `http://${addr}`, key: process.env.HOOKPOST_KEY };
  }
  const bin = process.env.HOOKPOST_BIN ?? "../../target/debug/hookpost";
  const dataDir = mkdtempSync(join(tmpdir(), "hookpost-ts-"));
  const env = { ...process.env };
  delete env.DATABASE_URL;
  const created = execFileSync(bin, ["api-key", "create", "--service", "--data-dir", dataDir], { env });
  const key = created.toString().trim().split("\n").pop()!;
  server = spawn(
    bin,
    ["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--allow-private-targets"],
    { env, stdio: ["ignore", "ignore", "pipe"] },
  );
  const lines = createInterface({ input: server.stderr! });
  for await (const line of lines) {
    const fields = JSON.parse(line).fields ?? {};
    if (String(fields.message).includes("listening") && fields.addr) {
      return { address: `http://${fields.addr}`, key };
    }
  }
  throw new Error("hookpost exited before listening");
}

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
