"""Rolling restart (issue 17, item 4): three `hookpost serve` replicas on one
Postgres database, each on its own fixed loopback port; a gRPC client with the
round_robin policy over the three addresses dispatching continuously to a
receiver run here; each replica in turn gets SIGTERM, exits, and is started
again on the same address. Fails unless:

- no Dispatch call failed (no retry in this script: a call that fails is
  counted. gRPC's own transparent retry, which re-sends only a call that the
  server never saw, such as one refused by a GOAWAY, stays on as in every
  grpcio channel; nothing else retries);
- every accepted webhook reached the receiver exactly once (by webhook-id),
  and nothing else did;
- Postgres holds one attempt per receiver hit: every delivery succeeded with
  attempt_count 1 and one attempt row, no (request, attempt number) twice;
- every SIGTERMed replica exited 0 without a drain timeout or a lost lease,
  and every replica served Dispatch calls before its restart and after it
  (so the restarts happened under load, and the client came back to it).

The receiver answers 200 after a delay, so that attempts are in flight when a
replica is told to stop: one abandoned instead of drained would be sent again
once its lease ends, and show as a second hit.

Needs DATABASE_URL (a Postgres server where it may create a database; it
creates its own and drops it), the hookpost binary (--bin) and the Python
client (hookpost_client, installed by scripts/test-clients). Every process it
starts is stopped on exit, and dies with it if it is killed.
All traffic stays on 127.0.0.1."""

from __future__ import annotations

import argparse
import base64
import collections
import ctypes
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

# The replicas are started with a pre-exec hook, hence a fork(): grpc's fork
# handlers would only log that they skip (the client's threads are busy).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402 (after the environment it reads)

from hookpost_client import pb  # noqa: E402
from hookpost.v1 import webhook_service_pb2_grpc as pb_grpc  # noqa: E402


def log(msg: str) -> None:
    try:
        print(f"[rolling-restart] {msg}", file=sys.stderr, flush=True)
    except OSError:  # stderr gone (a closed pipe): the verdict is the exit status
        pass


def wait_until(what: str, check, timeout: float = 60.0, every: float = 0.05):
    """Polls `check` until it returns something truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def psql(url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
        check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    return out.stdout.strip()


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it if this script dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Receiver(http.server.ThreadingHTTPServer):
    """Counts POSTs by webhook-id and answers 200 after `delay` seconds."""

    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ReceiverHandler)

    def handle_error(self, request, client_address) -> None:
        # A sender that hangs up mid-answer (a replica killed in the clean-up)
        # is no news here; what arrived is counted before the answer.
        pass

    def total(self) -> int:
        with self.lock:
            return sum(self.hits.values())


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as hookpost's client expects

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("content-length", "0")))
        time.sleep(self.server.delay)
        with self.server.lock:
            self.server.hits[self.headers.get("webhook-id", "")] += 1
        body = b'{"received": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Replica:
    """One `hookpost serve` on a fixed port, restartable on the same address."""

    def __init__(self, name: str, port: int, args: argparse.Namespace, env: dict, tmp: str) -> None:
        self.name, self.port, self.args, self.env, self.tmp = name, port, args, env, tmp
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = ""

    def start(self) -> None:
        self.starts += 1
        self.log_path = os.path.join(self.tmp, f"{self.name}.{self.starts}.log")
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [self.args.bin, "--log-format", "json", "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--allow-private-targets", "--db-pool-size", "4",
                 "--attempt-timeout", "5s", "--lease-margin", "1s", "--poll-interval", "100ms"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                preexec_fn=die_with_parent,
            )
        wait_until(f"{self.name} to be ready", self.ready, timeout=60)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metric(self, prefix: str, *labels: str) -> int:
        """The sum of this incarnation's series named `prefix` that carry
        every one of `labels` (its /metrics)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines()
            if line.startswith(prefix) and all(label in line for label in labels)
        )

    def dispatches_served(self) -> int:
        """Dispatch calls this incarnation answered OK."""
        return self.metric("hookpost_grpc_requests_total{", 'method="Dispatch"', 'code="Ok"')

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within 60 s of SIGTERM") from None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


class Dispatcher:
    """Threads calling Dispatch back to back on one round_robin channel until
    stopped; every outcome is kept."""

    def __init__(self, target: str, key: str, url: str, threads: int) -> None:
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.lb_policy_name", "round_robin"),
            # By default the :authority of an `ipv4:a:p,b:q` target is the
            # list itself, which no HTTP/2 server takes as an authority
            # (hyper's h2 resets every stream with PROTOCOL_ERROR).
            ("grpc.default_authority", "localhost"),
            # Come back to a restarted replica soon (the default starts at 1 s
            # and grows to 2 min).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ])
        self.stub = pb_grpc.WebhookServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.url = url
        self.org = str(uuid.uuid4())
        self.accepted: list[str] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.loop, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=30)
        for t in self.threads:
            t.start()

    def loop(self, worker: int) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            request = pb.DispatchRequest(
                organization_id=self.org, webhook_url=self.url, webhook_type="rolling.restart",
            )
            request.payload.update({"worker": worker, "n": n})
            try:
                response = self.stub.Dispatch(request, metadata=self.metadata, timeout=30)
                with self.lock:
                    self.accepted.append(response.request_id)
            except grpc.RpcError as err:
                with self.lock:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {err.code().name}: {err.details()}")

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)
        self.channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", default=os.environ.get("HOOKPOST_BIN", "target/debug/hookpost"))
    parser.add_argument("--threads", type=int, default=4, help="concurrent Dispatch callers")
    parser.add_argument("--receiver-delay-ms", type=int, default=100)
    parser.add_argument("--served", type=int, default=100,
                        help="Dispatch calls each replica answers before each restart, and after the last")
    parser.add_argument("--rounds", type=int, default=2, help="times each replica is restarted")
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL")
    if not admin or not admin.startswith("postgres"):
        raise SystemExit("rolling_restart.py needs DATABASE_URL pointing at Postgres (scripts/test sets it)")

    # Named like scripts/test's databases, so its clean-up drops it too if
    # this script is killed before it can.
    run = os.environ.get("HOOKPOST_TEST_RUN", f"r{int(time.time())}{os.getpid()}")
    name = f"hookpost_test_{run}_rolling_{os.getpid()}"
    db = with_database(admin, name)
    tmp = tempfile.mkdtemp(prefix="hookpost-rolling.")
    replicas: list[Replica] = []
    receiver = Receiver(args.receiver_delay_ms / 1000)
    dispatcher: Dispatcher | None = None
    serving = ok = False
    # SIGTERM (CI cancelling) unwinds through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        psql(admin, f'CREATE DATABASE "{name}"')
        env = dict(os.environ, DATABASE_URL=db, RUST_LOG="info,sqlx=warn",
                   HOOKPOST_SECRET_KEY=base64.b64encode(os.urandom(32)).decode())
        subprocess.run([args.bin, "migrate"], env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        key = subprocess.run([args.bin, "api-key", "create", "--service"], env=env, check=True,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True).stdout.splitlines()[-1]
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        serving = True
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

        replicas = [Replica(f"replica{i}", free_port(), args, env, tmp) for i in range(3)]
        for r in replicas:
            r.start()
        target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
        log(f"3 replicas ready; dispatching to {url} through {target} (round_robin)")
        dispatcher = Dispatcher(target, key, url, args.threads)
        dispatcher.start()

        served_before: list[int] = []
        in_flight_at_sigterm: list[int] = []
        for turn in range(1, args.rounds + 1):
            for r in replicas:
                served_before.append(wait_until(
                    f"{r.name} to serve {args.served} Dispatch calls before its restart",
                    lambda r=r: (n := r.dispatches_served()) >= args.served and n))
                # Attempts under way now: SIGTERM must let them finish and be
                # recorded (one abandoned would be sent again after its lease).
                in_flight_at_sigterm.append(r.metric("hookpost_deliveries_in_flight "))
                t0 = time.monotonic()
                code = r.terminate()
                stopped = time.monotonic() - t0
                text = r.log_text()
                assert code == 0, f"{r.name} exited {code} after SIGTERM (its log follows)"
                # A panic is logged as "A panic occurred" (JSON logs); a
                # supervised task's also as "... panicked: <message>".
                for bad in ("drain timeout", "lease was lost", "panicked", "A panic occurred"):
                    assert bad not in text, f"{r.name} logged {bad!r} while stopping (its log follows)"
                r.start()
                log(f"round {turn}, {r.name}: {in_flight_at_sigterm[-1]} attempts in flight at SIGTERM, exit 0 "
                    f"in {stopped:.2f} s, restarted on 127.0.0.1:{r.port} and ready (accepted so far: "
                    f"{dispatcher.count()}, failed: {len(dispatcher.failures)})")
        served_after = [wait_until(f"{r.name} to serve Dispatch calls again after its restart",
                                   lambda r=r: (n := r.dispatches_served()) >= args.served and n)
                        for r in replicas]
        dispatcher.stop()
        accepted = list(dispatcher.accepted)
        log(f"dispatch stopped: {len(accepted)} accepted, {len(dispatcher.failures)} failed; "
            f"Dispatch OK per replica before each restart {served_before}, after the last {served_after}")
        assert sum(in_flight_at_sigterm) > 0, "no attempt was in flight at any SIGTERM: the drain went untested"

        assert not dispatcher.failures, f"{len(dispatcher.failures)} Dispatch calls failed:\n" + \
            "\n".join(dispatcher.failures[:20])
        assert len(set(accepted)) == len(accepted), "one request_id was returned twice"
        wait_until("every accepted webhook to be delivered and recorded", lambda: (
            receiver.total() >= len(accepted)
            and psql(db, "SELECT count(*) FROM webhook_requests WHERE status = 'pending'") == "0"
        ), timeout=120, every=0.2)

        with receiver.lock:
            hits = dict(receiver.hits)
        twice = {k: v for k, v in hits.items() if v != 1}
        assert not twice, f"{len(twice)} webhooks reached the receiver more than once: {list(twice.items())[:10]}"
        missing = set(accepted) - hits.keys()
        extra = hits.keys() - set(accepted)
        assert not missing, f"{len(missing)} accepted webhooks never reached the receiver: {sorted(missing)[:10]}"
        assert not extra, f"{len(extra)} webhooks reached the receiver that no Dispatch accepted: {sorted(extra)[:10]}"

        requests, succeeded, attempts, counted, multi, dup = psql(db, """
            SELECT (SELECT count(*) FROM webhook_requests),
                   (SELECT count(*) FROM webhook_requests WHERE status = 'succeeded' AND attempt_count = 1),
                   (SELECT count(*) FROM webhook_attempts),
                   (SELECT COALESCE(sum(attempt_count), 0) FROM webhook_requests),
                   (SELECT count(*) FROM (SELECT request_pk FROM webhook_attempts
                                          GROUP BY request_pk HAVING count(*) <> 1) m),
                   (SELECT count(*) FROM (SELECT request_pk, attempt_number FROM webhook_attempts
                                          GROUP BY 1, 2 HAVING count(*) > 1) d)
        """).split("|")
        total_hits = sum(hits.values())
        log(f"receiver: {total_hits} hits, {len(hits)} distinct webhook-ids; postgres: {requests} requests, "
            f"{succeeded} succeeded at the first attempt, {attempts} attempt rows (sum of attempt_count "
            f"{counted}), {multi} requests without exactly one attempt, {dup} (request, attempt) duplicates")
        assert int(requests) == len(accepted), f"{requests} requests stored, {len(accepted)} accepted"
        assert int(succeeded) == len(accepted), f"{succeeded} of {len(accepted)} succeeded at attempt 1"
        assert int(attempts) == total_hits == int(counted), \
            f"{attempts} attempt rows, {total_hits} receiver hits, attempt_count sums to {counted}"
        assert int(multi) == 0 and int(dup) == 0, "an attempt was recorded twice"
        ok = True
        log(f"ok: {len(accepted)} dispatched across {args.rounds} rolling restarts of 3 replicas, 0 failed, "
            "each delivered and recorded once")
        return 0
    finally:
        # Processes and the database first: nothing below may stop them going.
        if dispatcher is not None and not dispatcher.stopping.is_set():
            dispatcher.stopping.set()
        for r in replicas:
            if r.proc and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in replicas:
            try:
                if r.proc:
                    r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            r.kill()
        if serving:
            receiver.shutdown()
        receiver.server_close()
        try:
            psql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except subprocess.CalledProcessError as err:
            log(f"dropping {name} failed: {err.stderr}")
        if not ok:
            if dispatcher is not None:
                log(f"{dispatcher.count()} Dispatch calls accepted, {len(dispatcher.failures)} failed; first "
                    "failures:\n" + "\n".join(dispatcher.failures[:10]))
            for r in replicas:
                if r.log_path and os.path.exists(r.log_path):
                    lines = r.log_text().splitlines()
                    # A panic's message may be followed by its backtrace or
                    # by the shutdown: the last lines alone can miss it.
                    panics = [i for i, line in enumerate(lines) if "panicked" in line or "A panic occurred" in line]
                    if panics:
                        log(f"--- first panic in {r.log_path}\n" + "\n".join(lines[panics[0]:panics[0] + 40]))
                    log(f"--- last lines of {r.log_path}\n" + "\n".join(lines[-30:]))
        shutil.rmtree(tmp, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
