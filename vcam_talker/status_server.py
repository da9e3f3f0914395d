"""The daemon's local HTTP endpoint: GET /status (JSON), POST /reload.

It binds to 127.0.0.1 unless status.http names another address on purpose; then it
warns, and POST /reload is still only accepted from this machine. The preview page will
be served from here too.

Bounded, because any local process can connect: at most MAX_CONNECTIONS requests are
served at once (more are closed at once, costing no thread), each socket operation
times out after REQUEST_TIMEOUT_S and a whole request after REQUEST_DEADLINE_S, and a client that disconnects or stalls ends its
request quietly instead of printing a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 2.0
#: a whole request, however slowly it trickles in, is cut off after this long
REQUEST_DEADLINE_S = 5.0


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8, ::1; an empty host binds every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, *args, **kw):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self.dropped = 0
        self._logged: set[str] = set()
        self._open: dict[socket.socket, float] = {}
        self._open_lock = threading.Lock()
        super().__init__(*args, **kw)

    def service_actions(self):
        # serve_forever calls this every poll (0.5 s): cut off requests past the deadline,
        # which a per-operation timeout alone cannot do against a byte-by-byte trickle
        now = time.monotonic()
        with self._open_lock:
            late = [s for s, t in self._open.items() if now - t > REQUEST_DEADLINE_S]
        for s in late:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1  # over the cap: close it now rather than queue a thread
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        self._slots.release()

    def handle_error(self, request, client_address):
        # a client that hung up or timed out is not our error, and never worth a traceback;
        # anything else is logged once per kind, in one line
        self.dropped += 1
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, OSError) and type(exc).__name__ not in self._logged:
            self._logged.add(type(exc).__name__)
            log.error("status request failed: %s: %s", type(exc).__name__, " ".join(str(exc).split())[:200])


class StatusServer:
    def __init__(self, addr: str, daemon):
        host, _, port = addr.rpartition(":")
        owner = daemon

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT_S  # per socket operation, applied in setup()

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def handle(self):
                try:
                    super().handle()
                except (OSError, socket.timeout):  # reset, broken pipe, timed out: quietly
                    self.close_connection = True

            def do_GET(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] in ("/status", "/"):
                    self._send(200, owner.status())
                else:
                    self._send(404, {"error": f"no such path {self.path[:100]!r}"})

            def do_POST(self):  # noqa: N802
                if self.path != "/reload":
                    self._send(404, {"error": f"no such path {self.path[:100]!r}"})
                elif not is_loopback(self.client_address[0]):
                    self._send(403, {"error": "reload is accepted from this machine only"})
                else:
                    owner.request_reload("HTTP")
                    self._send(202, {"reload": "requested"})

            def log_message(self, *args):  # requests are not worth a log line each
                pass

        self.httpd = _BoundedServer((host, int(port)), Handler)
        self.address = self.httpd.server_address
        if not is_loopback(host):
            log.warning("status.http binds to %s: anyone who can reach port %s can read the daemon's status "
                        "(reloads stay local-only); use 127.0.0.1 unless that is what you want", host, port)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vcam-status-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def server_close(self) -> None:
        self.httpd.server_close()
