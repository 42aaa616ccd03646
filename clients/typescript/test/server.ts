// The hookpost the tests run against: the server at HOOKPOST_ADDR (host:port,
// as for the Python client and grpcurl, or a URL) with key HOOKPOST_KEY when
// both are set; otherwise one `hookpost serve` (HOOKPOST_BIN) that this test
// process starts on a temporary embedded store and stops when it ends.
import { after } from "node:test";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

let server: ChildProcess | undefined;
let started: Promise<{ address: string; key: string }> | undefined;
after(() => server?.kill());

export function hookpost(): Promise<{ address: string; key: string }> {
  started ??= start();
  return started;
}

async function start(): Promise<{ address: string; key: string }> {
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
