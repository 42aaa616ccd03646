"""Runs the client steps of README.md's "Clients in any language" section as
written, so that they cannot drift from what works on a fresh clone:

- for the TypeScript and the Python bullet, every inline code span that is a
  shell command (it starts with npm, pip or a repository script) is run with
  bash, in the order written. One that names a path from the repository root
  (scripts/..., ./clients/...) runs from the root, as the README's other
  commands do; the others (npm ...) run in the client's folder, the first code
  span of its bullet;
- the Python bullet's example runs with ``key``, ``org`` and ``url`` bound, and
  HOOKPOST_ADDR in place of 127.0.0.1:50051.

Needs a live hookpost at HOOKPOST_ADDR (host:port) with key HOOKPOST_KEY
(`npm test` runs against them) and PATH's pip and python3 being the ones to
install into (scripts/test-clients puts its venv first). Fails on any step's
failure."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import textwrap
import threading
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_STARTS = ("npm ", "pip ", "scripts/", "./scripts/")
CLIENTS = ("Python", "TypeScript / Node")


def bullet(readme: str, client: str) -> str:
    text = open(readme, encoding="utf-8").read()
    section = text.split("## Clients in any language", 1)[1].split("\n## ", 1)[0]
    # A bullet runs until the next line that starts another one.
    match = re.search(rf"^- \*\*{re.escape(client)}\*\*.*?(?=^- |\Z)", section, re.S | re.M)
    assert match, f"no {client} bullet in the README's client section"
    return match.group(0)


def steps(text: str) -> tuple[str, list[tuple[str, str]], str | None]:
    """The client's folder, its (directory, command) steps, and its example."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]
    folder = os.path.join(ROOT, spans[0])
    assert os.path.isdir(folder), f"{spans[0]} is not the client's folder"
    commands = []
    for span in filter(lambda s: s.startswith(SHELL_STARTS), spans):
        from_root = any(w.startswith(("scripts/", "./", "clients/")) for w in span.split())
        commands.append((ROOT if from_root else folder, span))
    example = re.search(r"```python\n(.*?)```", text, re.S)
    code = textwrap.dedent(example.group(1)) if example else None
    return folder, commands, code


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def run_example(code: str, addr: str, key: str) -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    scope = {
        "key": key,
        "org": str(uuid.uuid4()),
        "url": f"http://127.0.0.1:{receiver.server_address[1]}/hook",
    }
    # A fresh interpreter, so that it imports the package that `pip install` put
    # in place rather than anything this process has loaded.
    prelude = "".join(f"{name} = {value!r}\n" for name, value in scope.items())
    out = subprocess.run(
        [sys.executable, "-c", prelude + code.replace("127.0.0.1:50051", addr)],
        cwd="/", capture_output=True, text=True,
    )
    receiver.shutdown()
    if out.returncode != 0:
        sys.exit(f"README Python example failed:\n{code}\n{out.stderr}")
    assert out.stdout.strip(), "the README Python example listed no log"


def main() -> None:
    addr, key = os.environ["HOOKPOST_ADDR"], os.environ["HOOKPOST_KEY"]
    for client in CLIENTS:
        folder, commands, example = steps(bullet(sys.argv[1], client))
        assert commands, f"no shell step in the README's {client} bullet"
        for cwd, command in commands:
            print(f"[readme {client}] ({os.path.relpath(cwd, ROOT)}) $ {command}", file=sys.stderr, flush=True)
            if subprocess.run(["bash", "-ec", command], cwd=cwd).returncode != 0:
                sys.exit(f"README {client} step failed: {command}")
        if example:
            run_example(example, addr, key)
    print(f"README client steps: ok ({', '.join(CLIENTS)})")


if __name__ == "__main__":
    main()
