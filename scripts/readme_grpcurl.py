"""Runs the README's grpcurl session against a live hookpost, verbatim but for
the address (HOOKPOST_ADDR replaces 127.0.0.1:50051), the key ($KEY) and the
request ID placeholder (the one Dispatch returned), so the README cannot drift
from what the server does. Fails on any command's failure."""

import json
import os
import re
import subprocess
import sys


def session(readme: str) -> list[str]:
    text = open(readme, encoding="utf-8").read()
    section = text.split("## A grpcurl session", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line + "\n"
        # A command ends when its line does not continue it and no quote is open.
        if not line.endswith("\\") and current.count("'") % 2 == 0:
            commands.append(current.strip())
            current = ""
    return commands


def main() -> None:
    addr, key = os.environ["HOOKPOST_ADDR"], os.environ["HOOKPOST_KEY"]
    commands = session(sys.argv[1])
    assert any("Dispatch" in c for c in commands), "no Dispatch in the README session"
    env = dict(os.environ, KEY=key)
    request_id = None
    for command in commands:
        command = command.replace("127.0.0.1:50051", addr)
        if "<request_id from Dispatch>" in command:
            command = command.replace("<request_id from Dispatch>", request_id)
        out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"README command failed:\n{command}\n{out.stderr}")
        if command.rstrip().endswith("list"):
            assert "hookpost.v1.WebhookService" in out.stdout and "grpc.health.v1.Health" in out.stdout, out.stdout
        if "describe hookpost.v1.WebhookService" in command:
            for rpc in ("Dispatch", "ListWebhookLogs", "GetLogDetails"):
                assert f"rpc {rpc}" in out.stdout, out.stdout
        if command.rstrip().endswith("/Dispatch"):
            request_id = json.loads(out.stdout)["requestId"]
        if "/GetLogDetails" in command:
            assert json.loads(out.stdout)["log"]["requestId"] == request_id
    print(f"README grpcurl session: {len(commands)} commands ok")


if __name__ == "__main__":
    main()
