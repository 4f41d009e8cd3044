"""A minimal imagestudio webhook receiver: verifies every request with ``standardwebhooks``
and acts on each message once, by its ``webhook-id`` (deliveries are at least once).

    pip install standardwebhooks
    WEBHOOK_SECRET=whsec_... python webhook_receiver.py 8080

Only the standard library and ``standardwebhooks``; ``tests/unit/test_receiver_example.py``
runs this file against imagestudio's own sender. A real receiver keeps the seen ids in its
database (a unique key), not in memory, and answers fast (queue the work, then 2xx).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

SEEN: set[str] = set()
SEEN_LOCK = threading.Lock()


def handle(message: dict[str, Any]) -> None:
    """Your code: ``message["type"]`` is e.g. ``job.succeeded``; ``message["data"]`` the job."""
    data = message["data"]
    print(f"{message['type']}: job {data['job_id']} {data.get('status')}", flush=True)  # noqa: T201


class Receiver(BaseHTTPRequestHandler):
    webhook: Webhook  # set by serve()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            message = self.webhook.verify(body, dict(self.headers.items()))
        except WebhookVerificationError:
            self._answer(400)  # not from imagestudio (or too old): ignore it
            return
        msg_id = self.headers["webhook-id"]
        with SEEN_LOCK:
            first = msg_id not in SEEN
            SEEN.add(msg_id)
        if first:
            handle(message)
        self._answer(204)  # a repeat is answered 2xx too, or it is sent again

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:  # no access log
        return None


def serve(secret: str, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    handler = type("Handler", (Receiver,), {"webhook": Webhook(secret)})
    return ThreadingHTTPServer((host, port), handler)


if __name__ == "__main__":
    server = serve(os.environ["WEBHOOK_SECRET"], int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
    print(json.dumps({"listening": server.server_address}), flush=True)  # noqa: T201
    server.serve_forever()
