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

The code is in :mod:`vcam_talker.manifest` (manifest, paths, verification) and
:mod:`vcam_talker.download` (the downloader); this module re-exports both and holds the
``weights`` command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vcam_talker.download import (
    DEADLINE_BASE_S, DEADLINE_MIN_RATE, MAX_REDIRECTS, MAX_UNPINNED_BYTES, deadline_for, download)
from vcam_talker.manifest import (
    CHUNK, REPO_WEIGHTS, USER_WEIGHTS, Entry, Manifest, ManifestError, MiB, VerifyResult, WeightsError,
    default_dir, load_manifest, missing_for, path_for, sha256_file, torch_hub_checkpoints, verify_file)

# the manifest's and the downloader's names stay importable from here
__all__ = [
    "CHUNK", "DEADLINE_BASE_S", "DEADLINE_MIN_RATE", "DEFAULT_GROUP", "MAX_REDIRECTS", "MAX_UNPINNED_BYTES",
    "REPO_WEIGHTS", "USER_WEIGHTS", "Entry", "Manifest", "ManifestError", "MiB", "VerifyResult", "WeightsError",
    "add_cli", "cmd_download", "cmd_list", "cmd_verify", "deadline_for", "default_dir", "download",
    "load_manifest", "missing_for", "path_for", "sha256_file", "torch_hub_checkpoints", "verify_file",
]

DEFAULT_GROUP = "sadtalker-256"


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
