"""Who may talk to the control server: pure checks, tested as tables.

The threat is a web page in the user's browser, not a local process (any local process
of this user can read the token file anyway):

- DNS rebinding: a page on evil.example re-resolves its name to 127.0.0.1 and reads our
  answers as same-origin. Its requests carry ``Host: evil.example:PORT``: refused.
- CSRF: a page POSTs to http://127.0.0.1:PORT. Its ``Origin`` is its own: refused; and it
  cannot know the token, which only our own page (same origin) can read.
- a non-loopback bind: anyone on the network can connect, so every request needs the token.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path

TOKEN_HEADER = "X-VCam-Token"
#: a configured token must fit in a URL and a header as is
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
MIN_TOKEN_LEN = 16


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; an empty host binds every interface."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def split_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) into the bind host, without brackets, and the port."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be HOST:PORT such as 127.0.0.1:8765, got {addr!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"unbalanced brackets in {addr!r}")
    host = host[1:-1] if host.startswith("[") else host
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"an IPv6 address goes in brackets, e.g. [::1]:8765, got {addr!r}") from None
    return host, int(port)


def _authority(host: str, port: int) -> str:
    """The Host header a browser sends for ``host`` on ``port``."""
    h = f"[{host}]" if ":" in host else host
    return h if port == 80 else f"{h}:{port}"


def allowed_hosts(bound_host: str, port: int) -> frozenset[str] | None:
    """The Host header values accepted, lower case; None: any (a wildcard bind, where every
    request needs the token, which a rebinding page cannot have)."""
    h = bound_host.strip("[]").lower()
    if is_wildcard(h):
        return None
    names = {h}
    if h == "localhost":
        names |= {"127.0.0.1", "::1"}
    elif h in ("127.0.0.1", "::1"):
        names.add("localhost")
    return frozenset(_authority(n, port) for n in names)


def host_allowed(host_header: str | None, bound_host: str, port: int) -> bool:
    if not host_header:
        return False  # HTTP/1.1 requires it; a client without one is not a browser page of ours
    allowed = allowed_hosts(bound_host, port)
    return allowed is None or host_header.strip().lower() in allowed


def origin_allowed(origin: str | None, host_header: str | None) -> bool:
    """A state-changing request must come from our own page: Origin is exactly
    http://<Host>. A missing Origin (or "null", sent from sandboxes and file:) is refused."""
    if not origin or not host_header:
        return False
    return origin.strip().lower() == "http://" + host_header.strip().lower()


def token_ok(given: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty expected token matches nothing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def token_problem(token: str) -> str | None:
    """Why a configured token is unusable, or None."""
    if len(token) < MIN_TOKEN_LEN:
        return f"must be at least {MIN_TOKEN_LEN} characters"
    if not set(token) <= TOKEN_CHARS:
        return "may contain only letters, digits and - . _ ~"
    return None


def token_path(env: dict | None = None) -> Path:
    """``$XDG_STATE_HOME/vcam-talker/token``, by default ~/.local/state/vcam-talker/token."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "vcam-talker" / "token"


def read_token(path: Path | None = None) -> str:
    """The per-install token if the file exists and holds one, else ''."""
    try:
        t = (path or token_path()).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    return t if t and not token_problem(t) else ""


def install_token(path: Path | None = None) -> str:
    """The per-install token: read, or created once (0600, in a 0700 folder) and reused."""
    from vcam_talker.safeio import private_dir

    path = path or token_path()
    existing = read_token(path)
    if existing:
        return existing
    private_dir(path.parent)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".token.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it meanwhile: use theirs
    except FileExistsError:
        theirs = read_token(path)
        if theirs:
            token = theirs
        else:  # an empty or broken file: ours replaces it
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    return token
