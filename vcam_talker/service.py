"""Installing the systemd user unit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from vcam_talker.config import DEFAULT_CONFIG, PROJECT_ROOT
from vcam_talker.errors import VcamError

TEMPLATE = PROJECT_ROOT / "systemd" / "vcam-talker.service"


def render_unit(exe: str, config: Path) -> str:
    return (TEMPLATE.read_text().replace("@EXEC@", exe).replace("@CONFIG@", str(config))
            .replace("@PROJECT@", str(PROJECT_ROOT)))


def install_service(user: bool = True, config: Path | None = None, enable: bool = True,
                    home: Path | None = None) -> str:
    """Write the unit, copying the default config to ~/.config/vcam-talker/ if none exists;
    then daemon-reload, enable --now. Returns what to run to check it."""
    home = home or Path.home()
    cfg = config or home / ".config" / "vcam-talker" / "config.yaml"
    if not cfg.exists():
        cfg.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEFAULT_CONFIG, cfg)
    # the console script of this very installation (a venv is usually not on PATH)
    script = Path(sys.executable).parent / "vcam-talker"
    exe = str(script) if script.exists() else shutil.which("vcam-talker") or f"{sys.executable} -m vcam_talker"
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
