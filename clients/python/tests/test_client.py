"""The Python client against a live hookpost at HOOKPOST_ADDR (host:port) with
key HOOKPOST_KEY: dispatch, page iteration, details, and field violations."""

import http.server
import os
import threading
import time
import uuid

import grpc

from hookpost_client import Client, field_violations, pb


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"received": true}')

    def log_message(self, *args):
        pass


def main() -> None:
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    client = Client(os.environ["HOOKPOST_ADDR"], os.environ["HOOKPOST_KEY"])
    org = str(uuid.uuid4())

    ids = [
        client.dispatch(
            organization_id=org,
            webhook_url=url,
            webhook_type="call_ended",
            call_id=101,
            payload={"event": "call_ended", "n": i},
        ).request_id
        for i in range(5)
    ]
    deadline = time.monotonic() + 20
    for request_id in ids:
        while True:
            details = client.log_details(request_id)
            if details.log.execution_status == pb.EXECUTION_STATUS_SUCCEEDED:
                assert details.attempts[0].http_status_code == 200
                assert details.attempts[0].response_body == '{"received": true}'
                break
            assert time.monotonic() < deadline, "delivery did not settle in time"
            time.sleep(0.05)

    seen = [log.request_id for log in client.iter_logs(organization_id=org, page_size=2)]
    assert seen == list(reversed(ids)), seen
    assert Client.payload_of(next(client.iter_logs(organization_id=org)))["event"] == "call_ended"

    try:
        client.dispatch(organization_id="nope", webhook_url="ftp://x", webhook_type="bad type")
        raise AssertionError("an invalid dispatch was accepted")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = sorted(field for field, _ in field_violations(err))
        assert fields == ["organization_id", "webhook_type", "webhook_url"], fields
    client.close()
    receiver.shutdown()
    print("python client: ok")


if __name__ == "__main__":
    main()
