"""The virtual microphone, made with pactl in the running PulseAudio or PipeWire server.

A null sink ``vcam_talker_mic`` receives the delayed voice; a remapped source of its
monitor, described "VCam Talker Mic", is what meeting apps list as a microphone
(many apps hide monitor sources, so the monitor alone is not enough).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from vcam_talker.errors import DeviceError

SINK_NAME = "vcam_talker_mic"
SOURCE_NAME = "vcam_talker_mic_src"
DESCRIPTION = "VCam Talker Mic"


@dataclass(frozen=True)
class VirtualMicResult:
    """What :func:`setup_virtual_mic` did.

    action: "created", "exists" (nothing to do), "removed" or "absent" (nothing to undo).
    changed: True when modules were loaded or unloaded.
    modules: the module indices loaded or unloaded.
    sink / source: the names of the sink the daemon plays into and of the microphone.
    message: one line for the user.
    """

    action: str
    changed: bool
    modules: tuple[int, ...]
    sink: str
    source: str
    message: str


def _pactl(pactl: str, *args: str) -> str:
    try:
        res = subprocess.run([pactl, *args], capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        raise DeviceError(f"{pactl} not found: install pulseaudio-utils (PulseAudio) or pipewire-pulse "
                          "(PipeWire) to create the virtual microphone") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"'{pactl} {' '.join(args)}' did not answer within 15 s; is the sound server hung?") from None
    if res.returncode != 0:
        why = (res.stderr.strip() or res.stdout.strip() or f"exit status {res.returncode}").splitlines()[-1]
        raise DeviceError(f"'{pactl} {' '.join(args)}' failed: {why}")
    return res.stdout


def _check_server(pactl: str) -> None:
    if shutil.which(pactl) is None:
        raise DeviceError(f"{pactl} not found: install pulseaudio-utils (PulseAudio) or pipewire-pulse "
                          "(PipeWire) to create the virtual microphone")
    try:
        _pactl(pactl, "info")
    except DeviceError as exc:
        raise DeviceError(f"no PulseAudio/PipeWire server is reachable ({exc}); start one, or run inside "
                          "the desktop session") from None


def _names(pactl: str, kind: str) -> set[str]:
    """Names in ``pactl list short sinks|sources`` (second column)."""
    out = set()
    for line in _pactl(pactl, "list", "short", kind).splitlines():
        cols = line.split("\t")
        if len(cols) > 1:
            out.add(cols[1])
    return out


def _our_modules(pactl: str, sink: str, source: str) -> list[int]:
    """Indices of the modules that made ``source`` and ``sink``, source first (unload order)."""
    remap, null = [], []
    for line in _pactl(pactl, "list", "short", "modules").splitlines():
        cols = line.split("\t")
        if len(cols) < 3 or not cols[0].strip().isdigit():
            continue
        idx, name, args = int(cols[0]), cols[1], cols[2].split()
        if name == "module-remap-source" and f"source_name={source}" in args:
            remap.append(idx)
        elif name == "module-null-sink" and f"sink_name={sink}" in args:
            null.append(idx)
    return remap + null


def setup_virtual_mic(undo: bool = False, *, sink: str = SINK_NAME, source: str = SOURCE_NAME,
                      description: str = DESCRIPTION, rate: int = 48000, pactl: str = "pactl") -> VirtualMicResult:
    """Create (or with ``undo=True`` remove) the virtual microphone. Idempotent.

    Creates the null sink ``sink`` and ``module-remap-source master=<sink>.monitor``
    named ``source`` with ``description``; parts that already exist are kept. Undo
    unloads exactly the modules that define these two names. Raises DeviceError (one
    line) when pactl is missing, no server runs, or a module fails to load.
    """
    if "'" in description or '"' in description:
        raise ValueError(f"description must not contain quotes: {description!r}")
    _check_server(pactl)
    if undo:
        mods = _our_modules(pactl, sink, source)
        for m in mods:
            _pactl(pactl, "unload-module", str(m))
        if not mods:
            return VirtualMicResult("absent", False, (), sink, source,
                                    f"virtual microphone {source!r} is not set up; nothing to remove")
        return VirtualMicResult("removed", True, tuple(mods), sink, source,
                                f"removed virtual microphone {source!r} and sink {sink!r} (modules {mods})")

    loaded: list[int] = []
    if sink not in _names(pactl, "sinks"):
        out = _pactl(pactl, "load-module", "module-null-sink", f"sink_name={sink}", f"rate={rate}", "channels=1",
                     f"sink_properties=\"device.description='{description} (sink)'\"")
        loaded.append(int(out.split()[0]))
    if source not in _names(pactl, "sources"):
        try:
            out = _pactl(pactl, "load-module", "module-remap-source", f"master={sink}.monitor",
                         f"source_name={source}", f"source_properties=\"device.description='{description}'\"")
        except DeviceError:
            for m in loaded:  # leave nothing half made
                _pactl(pactl, "unload-module", str(m))
            raise
        loaded.append(int(out.split()[0]))
    if not loaded:
        return VirtualMicResult("exists", False, (), sink, source,
                                f"virtual microphone {description!r} ({source}) already set up; nothing changed")
    return VirtualMicResult("created", True, tuple(loaded), sink, source,
                            f"created virtual microphone {description!r} ({source}); the daemon plays into {sink!r}")
