"""Installing the systemd user unit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from vcam_talker.config import DEFAULT_CONFIG, PROJECT_ROOT
from vcam_talker.errors import VcamError
from vcam_talker.safeio import private_dir

TEMPLATE = PROJECT_ROOT / "systemd" / "vcam-talker.service"


def _refuse_controls(value: str, what: str) -> None:
    bad = sorted({f"\\x{ord(c):02x}" for c in value if ord(c) < 32 or ord(c) == 127})
    if bad:  # a newline would start a new unit line, e.g. ExecStartPre=
        raise VcamError(f"{what}: path contains control characters ({', '.join(bad)}), "
                        f"which a systemd unit cannot hold: {value!r}")


def exec_word(value: str, what: str, executable: bool = False) -> str:
    """One word of a systemd command line, by systemd.service(5) "Command lines":
    ``%`` is a specifier and, in arguments, ``$`` an environment variable unless
    doubled; backslash and double quote are escaped; a word with spaces, quotes or ``;``
    is double-quoted. systemd refuses quotes and backslashes in the executable's name
    (and expands no ``$`` there), so those are refused here, in one line."""
    _refuse_controls(value, what)
    if executable and any(c in value for c in "'\"\\"):
        raise VcamError(f"{what}: systemd cannot run a program whose path holds quotes or backslashes: {value!r}")
    esc = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if not executable:
        esc = esc.replace("$", "$$")
    if not value or any(c in value for c in " \t'\";\\"):
        esc = f'"{esc}"'
    return esc


def file_url(path: Path, what: str) -> str:
    """A file:// URL for Documentation= (a space-separated list): percent-encoded, with
    the percent signs doubled for systemd's specifiers."""
    _refuse_controls(str(path), what)
    return "file://" + quote(str(path)).replace("%", "%%")


def render_unit(exe: str | list[str], config: Path) -> str:
    words = exe if isinstance(exe, list) else [exe]
    cmd = " ".join(exec_word(w, "vcam-talker executable", executable=i == 0) for i, w in enumerate(words))
    return (TEMPLATE.read_text().replace("@EXEC@", cmd)
            .replace("@CONFIG@", exec_word(str(config), "--config"))
            .replace("file://@PROJECT@", file_url(PROJECT_ROOT, "project folder")))


def install_service(user: bool = True, config: Path | None = None, enable: bool = True,
                    home: Path | None = None) -> str:
    """Write the unit, copying the default config to ~/.config/vcam-talker/ if none exists;
    then daemon-reload, enable --now. Returns what to run to check it."""
    home = home or Path.home()
    cfg = config or home / ".config" / "vcam-talker" / "config.yaml"
    _refuse_controls(str(cfg), "--config")  # before anything is written
    if not cfg.exists():
        private_dir(cfg.parent)
        shutil.copy(DEFAULT_CONFIG, cfg)
        os.chmod(cfg, 0o600)
    # the console script of this very installation (a venv is usually not on PATH)
    script = Path(sys.executable).parent / "vcam-talker"
    found = str(script) if script.exists() else shutil.which("vcam-talker")
    exe = [found] if found else [sys.executable, "-m", "vcam_talker"]
    unit = home / ".config" / "systemd" / "user" / "vcam-talker.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(exe, cfg.resolve()))
    lines = [f"wrote {unit} (config {cfg})"]
    if enable:
        if shutil.which("systemctl") is None:
            raise VcamError(f"wrote {unit}, but systemctl is not available to enable it")
        for cmd in (["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", "--now", "vcam-talker"]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise VcamError(f"wrote {unit}, but `{' '.join(cmd)}` failed: "
                                f"{(r.stderr.strip() or r.stdout.strip()).splitlines()[-1:]}")
        lines.append("enabled and started")
    lines.append("check it: systemctl --user status vcam-talker; journalctl --user -u vcam-talker -f; "
                 "vcam-talker status")
    return "\n".join(lines)
