"""Reading what the user points us at, and creating what we own, defensively.

A path in a config can name anything: a FIFO (opening it blocks until a writer comes),
/dev/zero (reading it never ends), a multi-GB file. Inputs are therefore read only
when they are regular files, and never past a cap; folders and files we create are
private (0700/0600), since they hold recordings and pictures of the user's face.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vcam_talker.errors import VcamError

MB = 1 << 20


def check_path_text(path: str | os.PathLike, what: str, error: type[VcamError] = VcamError) -> None:
    """One-line error for a path no file can have (NUL) or that would break a line."""
    s = os.fspath(path)
    if "\0" in s:
        shown = s.replace("\0", "\\0")[:200]
        raise error(f"{what}: path contains a NUL byte: {shown!r}")


def regular_file(path: Path, what: str, max_bytes: int, error: type[VcamError] = VcamError) -> int:
    """Size of ``path`` if it is a regular file (links followed) of at most ``max_bytes``;
    otherwise a one-line ``error``. Uses stat only: nothing is opened, so a FIFO cannot
    block us here."""
    check_path_text(path, what, error)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: is a folder; the {what} must be a file")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: is not a regular file (a device, FIFO or socket); the {what} must be one")
    if st.st_size > max_bytes:
        raise error(f"{path}: {what} is {st.st_size / MB:.0f} MB, more than the {max_bytes / MB:.0f} MB allowed")
    return st.st_size


def read_capped(path: Path, what: str, max_bytes: int, error: type[VcamError] = VcamError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``. Opened non-blocking and
    re-checked on the descriptor, so a file swapped for a FIFO after the stat cannot
    block us, and the read stops at the cap even if the file grows meanwhile."""
    regular_file(path, what, max_bytes, error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: is not a regular file; the {what} must be one")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is more than the {max_bytes / MB:.0f} MB allowed")
    return data


def private_dir(path: Path) -> Path:
    """mkdir -p with 0700 for each folder created (existing ones are left alone)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(d, 0o700)  # mkdir's mode is masked by the umask
    return path
