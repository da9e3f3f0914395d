"""Turning a configured device name into something PortAudio can open.

PortAudio on Debian reaches PulseAudio/PipeWire through ALSA's pulse plugin, so it lists
"pulse" and "default" but not the server's individual sinks and sources (such as the
virtual mic's sink ``vcam_talker_mic``). A name PortAudio does not know, but the sound
server does, is therefore opened as the "pulse" device with PULSE_SINK / PULSE_SOURCE
naming it: libpulse reads those when a stream connects.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from vcam_talker.audio.capture import import_sounddevice
from vcam_talker.errors import DeviceError

ENV = {"input": "PULSE_SOURCE", "output": "PULSE_SINK"}


def _portaudio_names(kind: str) -> list[str]:
    sd = import_sounddevice()
    return [d["name"] for d in sd.query_devices() if d[f"max_{kind}_channels"] > 0]


def _server_names(kind: str) -> list[str]:
    if shutil.which("pactl") is None:
        return []
    what = "sources" if kind == "input" else "sinks"
    try:
        out = subprocess.run(["pactl", "list", "short", what], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split("\t")[1] for line in out.splitlines() if "\t" in line]


def route_device(name: str, kind: str) -> int | str | None:
    """The PortAudio device for ``name`` ("default", an index, a PortAudio name part, or
    a PulseAudio sink/source name). Raises DeviceError with the choices when none fits."""
    if name == "default":
        return None
    if name.isdigit():
        return int(name)
    pa = _portaudio_names(kind)
    if any(name in n for n in pa):
        return name
    server = _server_names(kind)
    if name in server and any(n.startswith("pulse") for n in pa):
        os.environ[ENV[kind]] = name
        return "pulse"
    raise DeviceError(
        f"audio.{'input' if kind == 'input' else 'output'}: no {kind} device {name!r}; "
        f"PortAudio has {', '.join(map(repr, pa)) or 'none'}"
        + (f"; the sound server has {', '.join(map(repr, server))}" if server else "")
    )
