"""The avatar folder behind the control page: list, select (written to the config file,
which the daemon then reloads), upload. No HTTP here, so it is tested directly.

Names come from the network: a name is a plain file name that is listed in the folder,
and its resolved path stays inside it (no '..', no separators, no symlink out). Uploads
are decoded and re-encoded as PNG under a name made from their hash; the client's file
name is never used. Nothing outside the folder (and the config file) is written.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import yaml

from vcam_talker.errors import VcamError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MAX_UPLOAD_BYTES = 10 << 20
#: larger pictures are refused before decoding: 40 MP of RGBA is 160 MB
MAX_PIXELS = 40_000_000
MAX_LISTED = 500


class AvatarError(VcamError):
    """A refused request; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def folder_of(cfg) -> Path:
    """``control.avatars_dir`` (relative: to the config file's folder); empty:
    $XDG_DATA_HOME/vcam-talker/avatars, by default ~/.local/share/vcam-talker/avatars."""
    d = cfg.control.avatars_dir
    if not d:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        return Path(base) / "vcam-talker" / "avatars"
    p = Path(d).expanduser()
    if not p.is_absolute() and cfg.source is not None:
        p = cfg.source.parent / p
    return p


def list_avatars(folder: Path) -> list[str]:
    """Image files directly in ``folder`` (sorted); a missing folder lists nothing."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise AvatarError(500, f"cannot list {folder}: {exc.strerror or exc}") from None
    names = []
    for e in entries:
        if e.name.lower().endswith(IMAGE_EXTS) and _inside(folder, Path(e.path)) and e.is_file():
            names.append(e.name)
            if len(names) >= MAX_LISTED:
                break
    return names


def _inside(folder: Path, p: Path) -> bool:
    try:
        return p.resolve().parent == folder.resolve()
    except (OSError, RuntimeError):
        return False


def resolve(folder: Path, name: object) -> Path:
    """The file ``name`` in ``folder``; AvatarError 400 for a name that is not a plain
    image file name, 404 for one that is not there."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise AvatarError(400, "name must be a file name")
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.startswith("."):
        raise AvatarError(400, "name must be a plain file name in the avatar folder, without a path")
    if not name.lower().endswith(IMAGE_EXTS):
        raise AvatarError(400, f"name must end in one of {', '.join(IMAGE_EXTS)}")
    p = folder / name
    if not p.is_file():
        raise AvatarError(404, f"no avatar named {name!r} in {folder}")
    if not _inside(folder, p):
        raise AvatarError(400, f"{name!r} leads outside the avatar folder")
    return p.resolve()


def select(config_path: Path | None, folder: Path, name: object) -> Path:
    """Point ``avatar.image`` of the config file at the avatar ``name`` (an absolute path),
    written atomically; the daemon's reload does the rest. Returns the avatar's path."""
    if config_path is None:
        raise AvatarError(409, "the daemon runs on the embedded defaults, with no config file to write the "
                               "avatar to; start it with --config FILE")
    p = resolve(folder, name)
    from vcam_talker import config as config_mod
    from vcam_talker.errors import ConfigError
    from vcam_talker.safeio import read_capped

    target = Path(config_path).resolve()  # a symlinked config: its file is edited, the link stays
    try:
        text = read_capped(target, "config file", config_mod.MAX_CONFIG_BYTES, ConfigError).decode("utf-8")
        new_text = set_avatar(text, str(p))
        config_mod.from_dict(yaml.safe_load(new_text), source=target)
    except (ConfigError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AvatarError(409, f"the config file cannot take the new avatar: {' '.join(str(exc).split())[:300]}")
    write_atomic(target, new_text.encode("utf-8"))
    return p


_TOP = re.compile(r"^avatar\s*:\s*(#.*)?$")
_IMAGE = re.compile(r"^(\s+)image\s*:")


def set_avatar(text: str, image: str) -> str:
    """``text`` with ``avatar.image`` set to ``image``. The line is edited in place so the
    file's comments stay; if the result does not parse to exactly the intended change,
    the document is dumped anew instead (comments lost, content right)."""
    data = yaml.safe_load(text) if text.strip() else {}
    if not isinstance(data, dict):
        data = {}  # from_dict refuses it afterwards with the real reason
    want = copy.deepcopy(data)
    if not isinstance(want.get("avatar"), dict):
        want["avatar"] = {}
    want["avatar"]["image"] = image
    edited = _edit_lines(text, json.dumps(image))
    if edited is not None:
        try:
            if yaml.safe_load(edited) == want:
                return edited
        except yaml.YAMLError:
            pass
    return yaml.safe_dump(want, sort_keys=False)


def _edit_lines(text: str, value: str) -> str | None:
    lines = text.splitlines(keepends=True)
    top = [i for i, line in enumerate(lines) if _TOP.match(line.rstrip("\r\n"))]
    if not top:
        if any(line.startswith("avatar") for line in lines):
            return None  # a flow mapping or something unusual: dump instead
        sep = "" if not text or text.endswith("\n") else "\n"
        return f"{text}{sep}avatar:\n  image: {value}\n"
    i = top[0]
    indent = "  "
    for j in range(i + 1, len(lines)):
        line = lines[j]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            break  # the next top-level key: no image line in the block
        m = _IMAGE.match(line)
        if m:
            return "".join(lines[:j]) + f"{m.group(1)}image: {value}\n" + "".join(lines[j + 1:])
        indent = line[: len(line) - len(line.lstrip())]
    return "".join(lines[: i + 1]) + f"{indent}image: {value}\n" + "".join(lines[i + 1:])


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """A temporary file in the same folder, synced, renamed over ``path``: a reader sees
    the old file or the new one, never half of it. Keeps the old file's mode."""
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def store_upload(folder: Path, data: bytes) -> str:
    """Decode ``data`` as a PNG, JPEG or WebP picture, re-encode it as PNG and store it in
    ``folder`` as upload-<sha256 prefix>.png; returns that name. AvatarError 413 for too
    many bytes or pixels, 400 for anything that is not such a picture."""
    from PIL import Image

    if len(data) > MAX_UPLOAD_BYTES:
        raise AvatarError(413, f"the picture is more than {MAX_UPLOAD_BYTES >> 20} MB")
    if not data:
        raise AvatarError(400, "the upload is empty")
    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as im:
            _check_pixels(im.size)
            im.verify()  # structure and checksums, without decoding
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "WEBP")) as im:
            _check_pixels(im.size)
            im.load()
            rgb = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
    except AvatarError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AvatarError(413, f"the picture has more than {MAX_PIXELS // 1_000_000} megapixels") from None
    except Exception as exc:  # Pillow raises many kinds for malformed files
        raise AvatarError(400, f"not a PNG, JPEG or WebP picture ({type(exc).__name__})") from None
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    png = out.getvalue()
    name = f"upload-{hashlib.sha256(png).hexdigest()[:16]}.png"
    from vcam_talker.safeio import private_dir

    try:
        private_dir(folder)
        write_atomic(folder / name, png, mode=0o600)
    except OSError as exc:
        raise AvatarError(500, f"cannot store the picture in {folder}: {exc.strerror or exc}") from None
    return name


def _check_pixels(size: tuple[int, int]) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise AvatarError(400, "the picture has no pixels")
    if w * h > MAX_PIXELS:
        raise AvatarError(413, f"the picture is {w}x{h}, more than {MAX_PIXELS // 1_000_000} megapixels")
