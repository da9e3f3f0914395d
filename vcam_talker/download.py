"""Downloading weights files: urllib into ``<name>.part`` with resume by ``Range``, https-only
redirects, a deadline per file and a size cap; size and sha256 are checked before the
rename into place."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from vcam_talker import __version__
from vcam_talker.manifest import CHUNK, Entry, MiB, WeightsError, path_for, verify_file
from vcam_talker.progress import Progress
from vcam_talker.safeio import private_dir

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


#: redirects followed per request, and the most an entry without a pinned size may be
MAX_REDIRECTS = 5
MAX_UNPINNED_BYTES = 8 << 30
#: a whole download may take this long plus its size at this rate (a trickle is cut off)
DEADLINE_BASE_S = 300.0
DEADLINE_MIN_RATE = 64 * 1024


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https (or, from a plain-http URL, to http too): never
    to ftp:// or file://, never from https down to http, and at most MAX_REDIRECTS."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url).scheme, urllib.parse.urlsplit(newurl).scheme
        if not (new == "https" or (old == "http" and new == "http")):
            raise WeightsError(f"{req.full_url} redirects to {newurl[:200]!r}; only https redirects are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_SafeRedirects)


def deadline_for(e: Entry) -> float:
    """Seconds a download of ``e`` may take in all."""
    return DEADLINE_BASE_S + (e.size or 0) / DEADLINE_MIN_RATE


def download(entries: list[Entry], directory: Path | None = None, *, progress: bool = True,
             timeout: float = 30, retries: int = 2, deadline_s: float | None = None) -> None:
    """Fetch each entry that is not already in place and valid.

    An interrupted transfer is resumed up to ``retries`` times in this call; when it still
    fails the ``.part`` stays, so the next call resumes it. Each entry must arrive within
    ``deadline_s`` (default :func:`deadline_for`), retries included.
    """
    for e in entries:
        deadline = time.monotonic() + (deadline_s if deadline_s is not None else deadline_for(e))
        final = path_for(e, directory)
        if final.is_file():
            r = verify_file(e, directory, progress=progress)
            if r.status in ("ok", "unpinned"):
                continue
        private_dir(final.parent)
        for attempt in range(retries + 1):
            try:
                _fetch(e, final, progress=progress, timeout=timeout, deadline=deadline)
                break
            except _Interrupted as exc:
                if attempt == retries:
                    raise WeightsError(f"{e.name}: {exc} from {e.url}; run the download again to resume") from None
            except WeightsError:
                part = final.with_name(final.name + ".part")
                if part.is_file() and part.stat().st_size == 0:  # nothing worth resuming
                    part.unlink()
                raise


class _Interrupted(Exception):
    """A transfer stopped early; the .part holds what arrived."""


def _fetch(e: Entry, final: Path, *, progress: bool, timeout: float, deadline: float) -> None:
    import fcntl

    part = final.with_name(final.name + ".part")
    with open(os.open(part, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "ab+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise WeightsError(f"{e.name}: another download of it is running ({part})") from None
        have = f.seek(0, os.SEEK_END)
        if e.size is not None and have > e.size:
            have = _truncate(f)
        h = hashlib.sha256()
        if have:
            f.seek(0)
            while block := f.read(CHUNK):
                h.update(block)
        if e.size is None or have < e.size:
            have, h = _transfer(e, f, have, h, progress=progress, timeout=timeout, deadline=deadline)
        f.flush()
        os.fsync(f.fileno())
    if e.size is not None and have != e.size:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{e.name}: downloaded {have} bytes, expected {e.size}; deleted the partial file")
    digest = h.hexdigest()
    if e.sha256 is not None and digest != e.sha256:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{e.name}: sha256 mismatch: got {digest}, expected {e.sha256} "
                           f"(from {e.url}); deleted the download")
    os.replace(part, final)


def _truncate(f) -> int:
    f.seek(0)
    f.truncate()
    return 0


def _transfer(e: Entry, f, have: int, h, *, progress: bool, timeout: float, deadline: float):
    """Append the rest of ``e.url`` to ``f`` (which holds ``have`` bytes hashed into ``h``)."""
    headers = {"User-Agent": f"vcam-talker/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    _check_deadline(e, deadline, have)
    try:
        resp = _opener.open(urllib.request.Request(e.url, headers=headers),
                            timeout=max(0.1, min(timeout, deadline - time.monotonic())))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # the .part cannot be continued (e.g. already complete when size is unknown)
            exc.close()
            if e.size is None:
                return have, h
            _truncate(f)
            return _transfer(e, f, 0, hashlib.sha256(), progress=progress, timeout=timeout, deadline=deadline)
        raise WeightsError(f"{e.name}: HTTP {exc.code} {exc.reason} from {e.url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(f"{e.name}: cannot reach {e.url} ({reason})") from None
    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if have and status == 206:
            m = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
            if not m or int(m.group(1)) != have:
                raise WeightsError(f"{e.name}: {e.url} answered a resume with an unexpected "
                                   f"Content-Range {resp.headers.get('Content-Range')!r}")
            total = int(m.group(3)) if m.group(3) != "*" else (have + length if length is not None else None)
        elif status == 200:
            if have:  # the server ignored Range: start again
                have = _truncate(f)
                h = hashlib.sha256()
            total = length
        else:
            raise WeightsError(f"{e.name}: unexpected HTTP {status} from {e.url}")
        if e.size is not None and total is not None and total != e.size:
            _truncate(f)
            raise WeightsError(f"{e.name}: {e.url} serves {total} bytes but the manifest expects {e.size}; "
                               "the upstream file changed or the URL is wrong")
        expected = e.size if e.size is not None else total
        cap = e.size if e.size is not None else MAX_UNPINNED_BYTES
        f.seek(0, os.SEEK_END)
        with Progress((expected or 0) / MiB, e.name, "MiB", progress and expected is not None) as bar:
            bar.update(have / MiB)
            try:
                # read at most one byte past the cap: a server sending more is refused, not stored
                # read1: returns what one recv brings, so a trickle still meets the deadline check
                while block := resp.read1(min(CHUNK, cap - have + 1)):
                    if have + len(block) > cap:
                        _truncate(f)
                        raise WeightsError(f"{e.name}: {e.url} sends more than the {cap} bytes expected; "
                                           "deleted what arrived")
                    _check_deadline(e, deadline, have)
                    f.write(block)
                    h.update(block)
                    have += len(block)
                    bar.update(len(block) / MiB)
            except (http.client.IncompleteRead, OSError, socket.timeout, http.client.HTTPException) as exc:
                f.flush()
                raise _Interrupted(f"transfer interrupted after {have} of {expected or '?'} bytes "
                                   f"({type(exc).__name__})") from None
        f.flush()
        if expected is not None and have < expected:
            raise _Interrupted(f"transfer interrupted after {have} of {expected} bytes (connection closed)")
    return have, h


def _check_deadline(e: Entry, deadline: float, have: int) -> None:
    if time.monotonic() > deadline:
        raise WeightsError(f"{e.name}: download from {e.url} took too long ({have} bytes so far); "
                           "stopped, run it again to resume")

