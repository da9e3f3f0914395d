"""Model weights: the manifest, where files live, download with resume, verification.

Manifest (``weights/manifest.yaml``; ``$VCAM_TALKER_MANIFEST`` overrides): a top-level
``files:`` list whose entries have exactly these keys

- ``name``: the file name on disk (no folders);
- ``url``: where to get it (http or https);
- ``size``: bytes, or null when unknown;
- ``sha256``: 64 hex digits, or null when no published hash was found;
- ``groups``: what needs it, e.g. ``[sadtalker-256]``; ``--only`` takes a group or a file name;
- ``purpose``, ``license``: one line each;
- optional ``location``: ``weights`` (default: the weights folder) or ``torch-hub``
  (torch hub's ``checkpoints`` folder, where face-alignment looks).

It is validated on load; any problem is a one-line :class:`ManifestError` naming the entry.

Weights folder (:func:`default_dir`): ``$VCAM_TALKER_WEIGHTS``, else the checkout's
``weights/`` (next to the manifest), else ``~/.local/share/vcam-talker/weights``.

Download: urllib into ``<name>.part``, resumed with a ``Range`` request when a ``.part`` is
there (a server that answers 200 instead restarts from zero), size and pinned sha256
checked, then renamed into place atomically. A bad hash deletes the ``.part``. Unpinned
files are accepted on size alone and :func:`verify_file` reports them as ``unpinned``
with their computed sha256, so a user can pin it.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from vcam_talker import __version__
from vcam_talker.errors import CheckpointError, VcamError
from vcam_talker.progress import Progress
from vcam_talker.safeio import private_dir

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
USER_WEIGHTS = Path.home() / ".local" / "share" / "vcam-talker" / "weights"
DEFAULT_GROUP = "sadtalker-256"
CHUNK = 1 << 20
MiB = float(1 << 20)

_KEYS = ("name", "url", "size", "sha256", "groups", "purpose", "license")
_OPTIONAL = ("location",)
_LOCATIONS = ("weights", "torch-hub")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_GROUP = re.compile(r"[a-z0-9][a-z0-9.-]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class ManifestError(VcamError):
    """The weights manifest is unreadable or an entry in it is invalid."""


class WeightsError(CheckpointError):
    """A weights file could not be downloaded or does not match the manifest."""


@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    size: int | None
    sha256: str | None
    groups: tuple[str, ...]
    purpose: str
    license: str
    location: str = "weights"


@dataclass(frozen=True)
class VerifyResult:
    entry: Entry
    path: Path
    status: str  # ok | missing | size-mismatch | sha256-mismatch | unpinned
    sha256: str | None = None  # computed; None when not hashed
    size: int | None = None  # on disk; None when missing

    @property
    def failed(self) -> bool:
        return self.status in ("size-mismatch", "sha256-mismatch")

    def line(self) -> str:
        e = self.entry
        if self.status == "ok":
            return f"{e.name}: ok (sha256 {self.sha256})"
        if self.status == "missing":
            return f"{e.name}: missing ({self.path})"
        if self.status == "size-mismatch":
            return f"{e.name}: FAILED size-mismatch: {self.size} bytes, expected {e.size} ({self.path})"
        if self.status == "sha256-mismatch":
            return f"{e.name}: FAILED sha256-mismatch: got {self.sha256}, expected {e.sha256} ({self.path})"
        checked = "size checked only" if e.size is not None else "no pinned size either"
        return f"{e.name}: present, no pinned sha256 ({checked}); sha256 {self.sha256}"


@dataclass(frozen=True)
class Manifest:
    files: tuple[Entry, ...]
    source: Path

    def groups(self) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.files:
            seen.update(dict.fromkeys(e.groups))
        return list(seen)

    def group(self, name: str) -> list[Entry]:
        entries = [e for e in self.files if name in e.groups]
        if not entries:
            raise ManifestError(f"unknown weights group {name!r}; known groups: {', '.join(self.groups())}")
        return entries

    def entry(self, name: str) -> Entry:
        for e in self.files:
            if e.name == name:
                return e
        raise ManifestError(f"{name!r} is not in {self.source}")

    def select(self, names: list[str]) -> list[Entry]:
        """Entries for group or file names, in manifest order, each once."""
        wanted: set[str] = set()
        files = {e.name for e in self.files}
        for n in names:
            if n in files:
                wanted.add(n)
            elif n in self.groups():
                wanted.update(e.name for e in self.group(n))
            else:
                raise ManifestError(f"--only {n!r}: neither a group nor a file of the manifest; "
                                    f"groups: {', '.join(self.groups())}")
        return [e for e in self.files if e.name in wanted]


def default_dir() -> Path:
    env = os.environ.get("VCAM_TALKER_WEIGHTS")
    if env:
        return Path(env).expanduser()
    # a checkout or editable install; a wheel has no manifest next to the package
    if (REPO_WEIGHTS / "manifest.yaml").is_file():
        return REPO_WEIGHTS
    return USER_WEIGHTS


def torch_hub_checkpoints() -> Path:
    """torch.hub.get_dir()/checkpoints, computed without importing torch."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def path_for(entry: Entry, directory: Path | None = None) -> Path:
    """Where ``entry`` lives: ``directory`` (default :func:`default_dir`), or torch hub's folder."""
    if entry.location == "torch-hub":
        return torch_hub_checkpoints() / entry.name
    return Path(directory if directory is not None else default_dir()) / entry.name


# ---------------------------------------------------------------- manifest


def _manifest_path(path: Path | None) -> Path:
    if path is not None:
        return Path(path)
    env = os.environ.get("VCAM_TALKER_MANIFEST")
    if env:
        return Path(env).expanduser()
    return REPO_WEIGHTS / "manifest.yaml"


def load_manifest(path: Path | None = None) -> Manifest:
    p = _manifest_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{p}: weights manifest not found; set $VCAM_TALKER_MANIFEST "
                            "or run from a vcam-talker checkout") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{p}: cannot read the weights manifest ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ManifestError(f"{p}: invalid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict) or set(data) != {"files"} or not isinstance(data["files"], list):
        raise ManifestError(f"{p}: must be a mapping with exactly one key, 'files:', holding a list")
    entries: list[Entry] = []
    for i, raw in enumerate(data["files"]):
        e = _entry(p, i, raw)
        if any(x.name == e.name for x in entries):
            raise ManifestError(f"{p}: files[{i}] ({e.name}): duplicate name")
        entries.append(e)
    if not entries:
        raise ManifestError(f"{p}: 'files' is empty")
    man = Manifest(tuple(entries), p)
    clash = sorted(set(man.groups()) & {e.name for e in entries})
    if clash:
        raise ManifestError(f"{p}: group name {clash[0]!r} is also a file name (--only could not tell them apart)")
    return man


def _entry(p: Path, i: int, raw: object) -> Entry:
    label = f"{p}: files[{i}]"
    if not isinstance(raw, dict):
        raise ManifestError(f"{label}: must be a mapping with keys {', '.join(_KEYS)}")
    name = raw.get("name")
    if isinstance(name, str) and name:
        label += f" ({name})"

    def bad(msg: str) -> ManifestError:
        return ManifestError(f"{label}: {msg}")

    unknown = sorted(set(raw) - set(_KEYS) - set(_OPTIONAL), key=str)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r}; known keys: {', '.join(_KEYS + _OPTIONAL)}")
    missing = [k for k in _KEYS if k not in raw]
    if missing:
        raise bad(f"missing key {missing[0]!r} (write null where a value is unknown)")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise bad(f"name must be a plain file name, got {name!r}")
    url = raw["url"]
    if not isinstance(url, str) or not re.match(r"https?://[^\s/]+/\S*$", url):
        raise bad(f"url must be an http(s) URL, got {url!r}")
    size = raw["size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise bad(f"size must be a positive number of bytes or null, got {size!r}")
    sha = raw["sha256"]
    if sha is not None and (not isinstance(sha, str) or not _HEX64.fullmatch(sha)):
        raise bad(f"sha256 must be 64 lowercase hex digits or null, got {sha!r}")
    groups = raw["groups"]
    if (not isinstance(groups, list) or not groups
            or not all(isinstance(g, str) and _GROUP.fullmatch(g) for g in groups)):
        raise bad(f"groups must be a non-empty list of lowercase names like sadtalker-256, got {groups!r}")
    for key in ("purpose", "license"):
        v = raw[key]
        if not isinstance(v, str) or not v.strip() or "\n" in v.strip():
            raise bad(f"{key} must be one non-empty line, got {v!r}")
    location = raw.get("location", "weights")
    if location not in _LOCATIONS:
        raise bad(f"location must be one of {', '.join(_LOCATIONS)}, got {location!r}")
    return Entry(name, url, size, sha, tuple(dict.fromkeys(groups)), raw["purpose"].strip(),
                 raw["license"].strip(), location)


# ---------------------------------------------------------------- checks


def missing_for(group: str, directory: Path | None = None, manifest: Manifest | None = None) -> list[Entry]:
    """Entries of ``group`` absent from ``directory`` or of the wrong size (no hashing)."""
    man = manifest if manifest is not None else load_manifest()
    out = []
    for e in man.group(group):
        p = path_for(e, directory)
        try:
            n = p.stat().st_size
        except OSError:
            out.append(e)
            continue
        if not p.is_file() or (e.size is not None and n != e.size):
            out.append(e)
    return out


def sha256_file(path: Path, desc: str | None = None, progress: bool = True) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    with open(path, "rb") as f, Progress(total / MiB, f"sha256 {desc or path.name}", "MiB", progress) as bar:
        while block := f.read(CHUNK):
            h.update(block)
            bar.update(len(block) / MiB)
    return h.hexdigest()


def verify_file(entry: Entry, directory: Path | None = None, *, progress: bool = True) -> VerifyResult:
    p = path_for(entry, directory)
    if not p.is_file():
        return VerifyResult(entry, p, "missing")
    n = p.stat().st_size
    if entry.size is not None and n != entry.size:
        return VerifyResult(entry, p, "size-mismatch", None, n)
    digest = sha256_file(p, entry.name, progress)
    if entry.sha256 is None:
        return VerifyResult(entry, p, "unpinned", digest, n)
    return VerifyResult(entry, p, "ok" if digest == entry.sha256 else "sha256-mismatch", digest, n)


# ---------------------------------------------------------------- download


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


# ---------------------------------------------------------------- CLI


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / MiB:.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.dir).expanduser() if args.dir else default_dir()


def cmd_download(args: argparse.Namespace) -> int:
    man = load_manifest()
    entries = man.select(args.only or [DEFAULT_GROUP])
    directory = _dir(args)
    for e in entries:
        p = path_for(e, directory)
        if p.is_file():
            r = verify_file(e, directory, progress=not args.quiet)
            if r.status in ("ok", "unpinned"):
                print(f"{r.line()} (already present)", flush=True)
                continue
            print(f"{r.line()}; downloading again", flush=True)
        print(f"{e.name} ({_human(e.size)}): {e.url} -> {p}", flush=True)
        download([e], directory, progress=not args.quiet, timeout=args.timeout)
        if e.sha256 is None:  # show the hash so the user can pin it
            print(verify_file(e, directory, progress=not args.quiet).line(), flush=True)
        else:
            print(f"{e.name}: ok (sha256 {e.sha256})", flush=True)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    man = load_manifest()
    entries = man.select(args.only) if args.only else list(man.files)
    directory = _dir(args)
    failed = 0
    for e in entries:
        r = verify_file(e, directory, progress=not args.quiet)
        failed += r.failed
        print(r.line(), flush=True)
    if failed:
        print(f"{failed} file(s) failed; re-download with `vcam-talker weights download --only NAME`")
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    man = load_manifest()
    directory = _dir(args)
    rows = [("NAME", "SIZE", "GROUPS", "PRESENT")]
    for e in man.files:
        p = path_for(e, directory)
        part = p.with_name(p.name + ".part")
        if p.is_file():
            n = p.stat().st_size
            present = "yes" if e.size is None or n == e.size else f"wrong size ({n} bytes)"
        elif part.is_file():
            present = f"partial ({_human(part.stat().st_size)})"
        else:
            present = "no"
        if e.location == "torch-hub":
            present += " (torch hub)"
        rows.append((e.name, _human(e.size), ",".join(e.groups), present))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"weights folder: {directory}  (torch hub: {torch_hub_checkpoints()}; manifest: {man.source})")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3])
    return 0


def add_cli(sub) -> None:
    w = sub.add_parser("weights", help="download, verify and list model weights",
                       description="Manage the model weights listed in weights/manifest.yaml "
                                   "($VCAM_TALKER_MANIFEST overrides). Weights folder: --dir, "
                                   "$VCAM_TALKER_WEIGHTS, the checkout's weights/, or "
                                   "~/.local/share/vcam-talker/weights.")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", help="weights folder (default: see `vcam-talker weights --help`)")

    d = wsub.add_parser("download", help="download weights (default group: sadtalker-256)",
                        description="Download the files of a group or single files, resuming an "
                                    "interrupted .part, and check size and sha256 before use.")
    d.add_argument("--only", nargs="+", metavar="GROUP_OR_FILE",
                   help=f"groups or file names (default: {DEFAULT_GROUP})")
    common(d)
    d.add_argument("--timeout", type=float, default=30, help="network timeout in seconds (default: %(default)s)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_download)

    v = wsub.add_parser("verify", help="check size and sha256 of the weights on disk",
                        description="Hash every present file of the manifest (or --only) and print one "
                                    "line per file; exit 1 when a present file fails. Missing files are "
                                    "listed but do not fail.")
    v.add_argument("--only", nargs="+", metavar="GROUP_OR_FILE", help="groups or file names (default: all)")
    common(v)
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_verify)

    ls = wsub.add_parser("list", help="list the known weights and whether they are present",
                         description="Print a table of the manifest: name, size, groups and whether the "
                                     "file is present (by size; no hashing).")
    common(ls)
    ls.set_defaults(func=cmd_list)
