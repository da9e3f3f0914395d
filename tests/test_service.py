"""The systemd user unit that `vcam-talker install-service` writes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys

from vcam_talker.cli import main


def test_install_service_writes_a_valid_notify_unit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["install-service", "--no-enable"]) == 0
    out = capsys.readouterr().out
    unit = tmp_path / ".config" / "systemd" / "user" / "vcam-talker.service"
    cfg = tmp_path / ".config" / "vcam-talker" / "config.yaml"
    assert str(unit) in out and "systemctl --user status vcam-talker" in out
    assert cfg.is_file()  # the default config, copied for the user to edit
    ini = configparser.ConfigParser(strict=False, interpolation=None)
    ini.optionxform = str
    ini.read_string(unit.read_text())
    svc = ini["Service"]
    assert svc["Type"] == "notify" and int(svc["WatchdogSec"]) > 0
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID" and svc["Restart"] == "on-failure"
    # the daemon feeds the meeting app: it must not run at a lower share than it
    assert "Nice" not in svc and "CPUWeight" not in svc
    exe, *rest = svc["ExecStart"].split()
    assert exe.startswith("/") and rest[-3:] == ["run", "--config", str(cfg)]
    assert subprocess.run([exe, "--help"], capture_output=True).returncode == 0  # it runs
    assert ini["Install"]["WantedBy"] == "default.target"
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert r.returncode == 0 and "vcam-talker.service" not in r.stderr, r.stderr


def test_status_command_without_daemon_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    r = subprocess.run([sys.executable, "-m", "vcam_talker", "status", "--address", "127.0.0.1:9"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no daemon answering on 127.0.0.1:9" in lines[0]
