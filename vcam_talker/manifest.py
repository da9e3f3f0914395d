"""The weights manifest: loading and validating it, where each file lives, and verifying
files on disk by size and sha256. The format is described in :mod:`vcam_talker.weights`."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from vcam_talker.errors import CheckpointError, VcamError
from vcam_talker.progress import Progress

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
USER_WEIGHTS = Path.home() / ".local" / "share" / "vcam-talker" / "weights"
CHUNK = 1 << 20
MiB = float(1 << 20)

_KEYS = ("name", "url", "size", "sha256", "groups", "purpose", "license")
_OPTIONAL = ("location",)
_LOCATIONS = ("weights", "torch-hub")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_GROUP = re.compile(r"[a-z0-9][a-z0-9.-]*")


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

