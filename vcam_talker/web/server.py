"""The control server: aiohttp in its own event loop, in one thread ("vcam-http").

Routes (the control page, part 2, is written against exactly these):
  GET  /                the page, static/index.html, with {{TOKEN}} replaced by the token
  GET  /static/...      static/ files
  GET  /status          daemon.status() as JSON          GET /metrics  Prometheus text
  GET  /preview.mjpg    web/preview.py's mjpeg_response (when that module exists)
  GET  /api/avatars     {"folder", "current", "avatars"}
  POST /api/avatar      {"name"} -> selects it (writes the config file)
  POST /api/avatars     multipart field "photo" -> 201 {"name"}
  POST /api/mute        {"muted": bool}     POST /api/test-sync     POST /reload -> 202
Every error is JSON {"error": "one line"}. Who may ask what: security.py and _guard.

Bounds: at most MAX_CONNECTIONS connections (more are closed on accept); a connection
that has not sent a whole request head within HEAD_TIMEOUT_S is closed (aiohttp's
keep-alive timer runs from accept); request bodies are capped in size and time; blocking
work (uploads, the sync test) runs on 3 worker threads; no access log.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from vcam_talker.errors import VcamError
from vcam_talker.web import avatars as avatars_mod
from vcam_talker.web import security

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_CONNECTIONS = 64
HEAD_TIMEOUT_S = 5.0
MAX_JSON_BYTES = 64 << 10
BODY_TIMEOUT_S = 5.0
UPLOAD_TIMEOUT_S = 30.0
#: after refusing a body, how long its rest is read (so the client sees the answer)
LINGER_S = 2.0
STOP_TIMEOUT_S = 1.0
#: set by GET / on a non-loopback bind; accepted for GET and HEAD only
COOKIE = "vcam_token"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's own log (malformed requests, failures outside our handlers): one line each,
    never a traceback; a client's bad request or hang-up only at debug level."""

    def __init__(self):
        super().__init__(logging.getLogger(__name__), {})
        self.seen: set[str] = set()

    def exception(self, msg, *args, exc_info=True, **kw):
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        line = f"{msg % args if args else msg}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if isinstance(exc, (HttpProcessingError, ConnectionError)) or type(exc).__name__ in self.seen:
            self.logger.debug("%s", line)
        else:
            self.seen.add(type(exc).__name__)
            self.logger.error("%s", line)


class _Refuse(asyncio.Protocol):
    """Over the connection cap: closed at once, costing no handler."""

    def connection_made(self, transport):
        transport.abort()


class ControlServer:
    """Binds in the constructor (an OSError there means the port is taken); serves after
    start(); stop() ends it, and every connection, within about a second."""

    def __init__(self, addr: str, daemon, *, token: str, static_dir: Path | None = None):
        host, port = security.split_addr(addr)
        self.host, self.daemon = host, daemon
        self.loopback = security.is_loopback(host)
        if not self.loopback and (not token or security.token_problem(token)):
            raise VcamError(f"status.http {addr} is not a loopback address, so control.token must be set "
                            f"(every request will need it): the control server is not started")
        if not token:
            raise VcamError("the control server needs a token")
        self.token = token
        self.static_dir = Path(static_dir) if static_dir else STATIC_DIR
        self.refused = 0
        self._pending: list = []
        self._logged: set[str] = set()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.address = self._sock.getsockname()[:2]
        self.port = self.address[1]
        self.metrics = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vcam-http", daemon=True)
        if not self.loopback:
            log.warning("status.http binds to %s: reachable from the network; every request needs the token",
                        addr)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        # decoding uploads and the sync test run here: few threads, whatever the clients do
        pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="vcam-http-work")
        self._loop.set_default_executor(pool)
        try:
            self._loop.run_until_complete(self._serve())
            self._loop.run_forever()
        except Exception as exc:  # noqa: BLE001 - one line, and the daemon goes on without us
            log.error("control server failed: %s: %s", type(exc).__name__, exc)
        finally:
            self._ready.set()
            pool.shutdown(wait=False, cancel_futures=True)
            self._sock.close()
            self._loop.close()

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self._app(), handle_signals=False, access_log=None,
                                     keepalive_timeout=HEAD_TIMEOUT_S, shutdown_timeout=STOP_TIMEOUT_S / 2,
                                     handler_cancellation=True, logger=_ServerLog(),
                                     lingering_time=LINGER_S)
        await self._runner.setup()
        self._server = await self._loop.create_server(self._protocol, sock=self._sock)
        self._ready.set()

    def _protocol(self):
        # asyncio accepts a batch and makes each protocol before any connection_made, which
        # is when aiohttp lists it: the ones made but not yet connected are counted here
        server, now = self._runner.server, self._loop.time()
        self._pending = [(t, h) for t, h in self._pending if h.transport is None and now - t < 2.0]
        if len(server.connections) + len(self._pending) >= MAX_CONNECTIONS:
            self.refused += 1
            return _Refuse()
        handler = server()
        self._pending.append((now, handler))
        return handler

    def stop(self) -> None:
        if self._thread.is_alive():
            fut = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            try:
                fut.result(STOP_TIMEOUT_S + 0.5)
            except Exception as exc:  # noqa: BLE001 - stopping must not raise
                log.debug("control server stop: %r", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(1.0)
        else:  # never started, or its loop failed (and said so)
            self._sock.close()
            self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner.cleanup(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
        for task in asyncio.all_tasks(self._loop):
            if task is not asyncio.current_task():
                task.cancel()

    # ---- the app -----------------------------------------------------------------------
    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=avatars_mod.MAX_UPLOAD_BYTES + (64 << 10))
        r = app.router
        r.add_get("/", self._index)
        r.add_get("/status", self._status)
        r.add_get("/metrics", self._metrics)
        r.add_get("/api/avatars", self._list_avatars)
        r.add_post("/api/avatar", self._select_avatar)
        r.add_post("/api/avatars", self._upload)
        r.add_post("/api/mute", self._mute)
        r.add_post("/api/test-sync", self._test_sync)
        r.add_post("/reload", self._reload)
        if self.static_dir.is_dir():
            r.add_static("/static/", self.static_dir, follow_symlinks=False, show_index=False)
        try:
            from vcam_talker.web import preview
        except ImportError as exc:
            if exc.name != "vcam_talker.web.preview":
                log.warning("no /preview.mjpg: %s", exc)
        else:
            async def _preview(request: web.Request) -> web.StreamResponse:
                return await preview.mjpeg_response(request, self.daemon)

            r.add_get("/preview.mjpg", _preview)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        resp = await self._checked(request, handler)
        if not resp.prepared:  # a stream sets its own headers before its first byte
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("X-Frame-Options", "DENY")
            resp.headers.setdefault("Referrer-Policy", "no-referrer")
        return resp

    async def _checked(self, request: web.Request, handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if not security.host_allowed(host, self.host, self.port):
            return _error(403, "this server answers only to the address it is bound to (Host header refused)")
        if request.method not in ("GET", "HEAD"):
            if not security.origin_allowed(request.headers.get("Origin"), host):
                return _error(403, "cross-origin request refused: Origin must be this server's own")
            if not security.token_ok(request.headers.get(security.TOKEN_HEADER), self.token):
                return _error(401, f"missing or wrong {security.TOKEN_HEADER} header")
        elif not self.loopback and not self._get_token_ok(request):
            return _error(401, f"this server is reachable from the network: send the token "
                               f"({security.TOKEN_HEADER} header or ?token=)")
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = _error(exc.status, exc.reason)
        except avatars_mod.AvatarError as exc:
            resp = _error(exc.status, str(exc))
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away: aiohttp ends the request quietly
        except Exception as exc:  # one line per kind, never a traceback per request
            kind = type(exc).__name__
            if kind not in self._logged:
                self._logged.add(kind)
                log.error("control request %s %s failed: %s: %s", request.method, request.path[:100], kind,
                          " ".join(str(exc).split())[:200])
            resp = _error(500, f"{kind}: {' '.join(str(exc).split())[:200]}")
        return resp

    def _get_token_ok(self, request: web.Request) -> bool:
        # a GET may also carry it in the URL (the page, the <img> of the preview) or in the
        # cookie GET / sets, so the page's own static files load; a POST only in the header
        given = (request.headers.get(security.TOKEN_HEADER) or request.query.get("token")
                 or request.cookies.get(COOKIE))
        return security.token_ok(given, self.token)

    # ---- handlers ----------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        try:
            page = (self.static_dir / "index.html").read_text(encoding="utf-8")
        except OSError:
            return _error(404, "no control page installed (vcam_talker/web/static/index.html)")
        page = page.replace("{{TOKEN}}", html.escape(self.token, quote=True))
        # the token is in the page: never cached, never framed by another site
        resp = web.Response(text=page, content_type="text/html",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "frame-ancestors 'none'"})
        if not self.loopback:
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
        return resp

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.daemon.status(), dumps=lambda o: json.dumps(o, default=str))

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            from vcam_talker.web.metrics import Metrics

            self.metrics = Metrics(self.daemon)
        from vcam_talker.web.metrics import CONTENT_TYPE

        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _folder(self) -> Path:
        return avatars_mod.folder_of(self.daemon.cfg)

    async def _list_avatars(self, request: web.Request) -> web.Response:
        folder = self._folder()
        names = await asyncio.get_running_loop().run_in_executor(None, avatars_mod.list_avatars, folder)
        cur = self.daemon.cfg.avatar_path()
        current = cur.name if cur.parent.resolve() == folder.resolve() else str(cur)
        return web.json_response({"folder": str(folder), "current": current, "avatars": names})

    async def _select_avatar(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        name = body.get("name")
        await asyncio.get_running_loop().run_in_executor(
            None, avatars_mod.select, self.daemon.config_path, self._folder(), name)
        # the file watcher would notice too; asking directly does not depend on it
        self.daemon.request_reload("avatar selected")
        return web.json_response({"avatar": name})

    async def _upload(self, request: web.Request) -> web.Response:
        if self.daemon.config_path is None:
            raise avatars_mod.AvatarError(409, "the daemon runs on the embedded defaults, with no config "
                                               "file to select an avatar in; start it with --config FILE")
        if not request.content_type.startswith("multipart/"):
            return _error(400, "send the picture as multipart/form-data, in a field named 'photo'")
        data = await _deadline(self._read_photo(request), UPLOAD_TIMEOUT_S)
        if data is None:
            return _error(400, "no file field named 'photo' in the form")
        name = await asyncio.get_running_loop().run_in_executor(None, avatars_mod.store_upload, self._folder(), data)
        return web.json_response({"name": name}, status=201)

    async def _read_photo(self, request: web.Request) -> bytes | None:
        async for part in await request.multipart():
            if part.name != "photo":
                continue
            buf = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                buf += chunk
                if len(buf) > avatars_mod.MAX_UPLOAD_BYTES:
                    raise avatars_mod.AvatarError(413, f"the picture is more than "
                                                       f"{avatars_mod.MAX_UPLOAD_BYTES >> 20} MB")
            return bytes(buf)
        return None

    async def _mute(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        muted = body.get("muted")
        if not isinstance(muted, bool):
            return _error(400, "muted must be true or false")
        set_muted = getattr(self.daemon, "set_muted", None)
        if set_muted is None:
            return _error(501, "this daemon cannot mute")
        set_muted(muted)
        return web.json_response({"muted": muted})

    async def _test_sync(self, request: web.Request) -> web.Response:
        test_sync = getattr(self.daemon, "test_sync", None)
        if test_sync is None:
            return _error(501, "this daemon has no sync test")
        result = await asyncio.get_running_loop().run_in_executor(None, test_sync)
        return web.json_response(result, dumps=lambda o: json.dumps(o, default=str))

    async def _reload(self, request: web.Request) -> web.Response:
        self.daemon.request_reload("HTTP")
        return web.json_response({"reload": "requested"}, status=202)


async def _deadline(coro, seconds: float):
    """A body must arrive within ``seconds``: a trickling client does not hold a slot."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except asyncio.TimeoutError:
        raise avatars_mod.AvatarError(408, f"the request body took more than {seconds:.0f} s") from None


async def _read_json(request: web.Request) -> dict:
    """A small JSON object body, or AvatarError 400/413."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise avatars_mod.AvatarError(413, f"the body is more than {MAX_JSON_BYTES >> 10} KB")

    async def read() -> bytes:
        buf = bytearray()
        while chunk := await request.content.read(1 << 16):  # read(n) may return less: to EOF
            buf += chunk
            if len(buf) > MAX_JSON_BYTES:
                raise avatars_mod.AvatarError(413, f"the body is more than {MAX_JSON_BYTES >> 10} KB")
        return bytes(buf)

    raw = await _deadline(read(), BODY_TIMEOUT_S)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise avatars_mod.AvatarError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise avatars_mod.AvatarError(400, "the body must be a JSON object")
    return body
