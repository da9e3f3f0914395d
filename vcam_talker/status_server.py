"""The daemon's local HTTP endpoint: GET /status (JSON), POST /reload.

It binds to 127.0.0.1 unless status.http names another address on purpose. The
preview page will be served from here too.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StatusServer:
    def __init__(self, addr: str, daemon):
        host, _, port = addr.rpartition(":")
        owner = daemon

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] in ("/status", "/"):
                    self._send(200, owner.status())
                else:
                    self._send(404, {"error": f"no such path {self.path}"})

            def do_POST(self):  # noqa: N802
                if self.path == "/reload":
                    owner.request_reload("HTTP")
                    self._send(202, {"reload": "requested"})
                else:
                    self._send(404, {"error": f"no such path {self.path}"})

            def log_message(self, *args):  # requests are not worth a log line each
                pass

        self.httpd = ThreadingHTTPServer((host, int(port)), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vcam-status-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def server_close(self) -> None:
        self.httpd.server_close()
