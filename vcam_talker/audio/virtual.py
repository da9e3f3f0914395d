"""The virtual microphone, made with pactl in the running PulseAudio or PipeWire server.

A null sink ``vcam_talker_mic`` receives the delayed voice; a remapped source of its
monitor, described "VCam Talker Mic", is what meeting apps list as a microphone
(many apps hide monitor sources, so the monitor alone is not enough).

On PipeWire (through pipewire-pulse) the microphone is instead a second null node of
``media.class=Audio/Source/Virtual``, the class PipeWire gives virtual microphones and
that browsers and the desktop's sound settings list as an input, fed from the sink's
monitor by a lingering ``pw-link``. A remapped source of that class stalled the whole
graph under WirePlumber 0.4 (measured on Debian 12: every stream stopped), and a
module-loopback into it was never linked.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

from vcam_talker.errors import DeviceError

SINK_NAME = "vcam_talker_mic"
SOURCE_NAME = "vcam_talker_mic_src"
DESCRIPTION = "VCam Talker Mic"
#: PipeWire's class for a virtual microphone (the default for a remapped source is Audio/Source)
MEDIA_CLASS = "Audio/Source/Virtual"


@dataclass(frozen=True)
class VirtualMicResult:
    """What :func:`setup_virtual_mic` did.

    action: "created", "exists" (nothing to do), "removed" or "absent" (nothing to undo).
    changed: True when modules were loaded or unloaded.
    modules: the module indices loaded or unloaded.
    sink / source: the names of the sink the daemon plays into and of the microphone.
    message: one line for the user.
    server: the server's name as pactl reports it, e.g. "PulseAudio (on PipeWire 0.3.65)".
    """

    action: str
    changed: bool
    modules: tuple[int, ...]
    sink: str
    source: str
    message: str
    server: str = ""


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


def _check_server(pactl: str) -> str:
    """The server's name (``pactl info``'s "Server Name"); raises DeviceError when none answers."""
    if shutil.which(pactl) is None:
        raise DeviceError(f"{pactl} not found: install pulseaudio-utils (PulseAudio) or pipewire-pulse "
                          "(PipeWire) to create the virtual microphone")
    try:
        info = _pactl(pactl, "info")
    except DeviceError as exc:
        raise DeviceError(f"no PulseAudio/PipeWire server is reachable ({exc}); start one, or run inside "
                          "the desktop session") from None
    for line in info.splitlines():
        if line.startswith("Server Name:"):
            return line.split(":", 1)[1].strip()
    return ""


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
        if (name == "module-remap-source" and f"source_name={source}" in args) or \
                (name == "module-null-sink" and f"sink_name={source}" in args):  # the PipeWire mic
            remap.append(idx)
        elif name == "module-null-sink" and f"sink_name={sink}" in args:
            null.append(idx)
    return remap + null


def _is_null_node(pactl: str, name: str) -> bool:
    """Whether a module-null-sink made ``name`` (our PipeWire mic, as opposed to a remap)."""
    for line in _pactl(pactl, "list", "short", "modules").splitlines():
        cols = line.split("\t")
        if len(cols) >= 3 and cols[1] == "module-null-sink" and f"sink_name={name}" in cols[2].split():
            return True
    return False


def _pw_ports(pw_link: str, flag: str, node: str, prefix: str) -> dict[str, str]:
    """Ports of ``node`` named ``prefix*`` (``pw-link -o`` / ``-i``), by channel suffix."""
    try:
        out = subprocess.run([pw_link, flag], capture_output=True, text=True, timeout=10).stdout
    except FileNotFoundError:
        raise DeviceError(f"{pw_link} not found: install pipewire-bin to link the virtual microphone") from None
    return {line[len(node) + 1 + len(prefix):]: line.strip() for line in out.splitlines()
            if line.startswith(f"{node}:{prefix}")}


def _link_monitor(sink: str, source: str, pw_link: str = "pw-link") -> bool:
    """Link every monitor port of ``sink`` to the same channel's input of ``source``.
    Links made by pw-link linger after it exits; returns True when one was made."""
    deadline = time.monotonic() + 3.0
    while True:  # the nodes' ports appear shortly after load-module returns
        outs = _pw_ports(pw_link, "-o", sink, "monitor_")
        ins = _pw_ports(pw_link, "-i", source, "input_")
        pairs = [(outs[ch], ins[ch]) for ch in outs if ch in ins]
        if pairs or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not pairs:
        raise DeviceError(f"no ports to link from {sink!r}'s monitor to {source!r} (pw-link -o/-i list none)")
    made = False
    for a, b in pairs:
        res = subprocess.run([pw_link, a, b], capture_output=True, text=True, timeout=10)
        if res.returncode != 0 and "exists" not in res.stderr:
            why = (res.stderr.strip() or f"exit status {res.returncode}").splitlines()[-1]
            raise DeviceError(f"'{pw_link} {a} {b}' failed: {why}")
        made |= res.returncode == 0
    return made


def setup_virtual_mic(undo: bool = False, *, sink: str = SINK_NAME, source: str = SOURCE_NAME,
                      description: str = DESCRIPTION, rate: int = 48000, pactl: str = "pactl") -> VirtualMicResult:
    """Create (or with ``undo=True`` remove) the virtual microphone. Idempotent.

    Creates the null sink ``sink`` and ``module-remap-source master=<sink>.monitor``
    named ``source`` with ``description`` (on PipeWire: a null node of class
    Audio/Source/Virtual named ``source``, linked from the monitor); parts that already
    exist are kept. Undo unloads exactly the modules that define these two names.
    Raises DeviceError (one line) when pactl is missing, no server runs, or a module
    fails to load.
    """
    if "'" in description or '"' in description:
        raise ValueError(f"description must not contain quotes: {description!r}")
    server = _check_server(pactl)
    if undo:
        mods = _our_modules(pactl, sink, source)
        for m in mods:
            _pactl(pactl, "unload-module", str(m))
        if not mods:
            return VirtualMicResult("absent", False, (), sink, source,
                                    f"virtual microphone {source!r} is not set up; nothing to remove", server)
        return VirtualMicResult("removed", True, tuple(mods), sink, source,
                                f"removed virtual microphone {source!r} and sink {sink!r} (modules {mods})", server)

    loaded: list[int] = []
    if sink not in _names(pactl, "sinks"):
        out = _pactl(pactl, "load-module", "module-null-sink", f"sink_name={sink}", f"rate={rate}", "channels=1",
                     f"sink_properties=\"device.description='{description} (sink)'\"")
        loaded.append(int(out.split()[0]))
    pipewire = "PipeWire" in server
    linked = False
    try:
        if source not in _names(pactl, "sources"):
            if pipewire:
                out = _pactl(pactl, "load-module", "module-null-sink", f"sink_name={source}",
                             f"media.class={MEDIA_CLASS}", f"rate={rate}", "channels=1",
                             f"sink_properties=\"device.description='{description}'\"")
            else:
                out = _pactl(pactl, "load-module", "module-remap-source", f"master={sink}.monitor",
                             f"source_name={source}", "channels=1",
                             f"source_properties=\"device.description='{description}'\"")
            loaded.append(int(out.split()[0]))
        # a null-node mic needs its link (a remap source from older versions links itself)
        if pipewire and _is_null_node(pactl, source):
            linked = _link_monitor(sink, source) and not loaded
    except DeviceError:
        for m in reversed(loaded):  # leave nothing half made
            _pactl(pactl, "unload-module", str(m))
        raise
    if linked:
        return VirtualMicResult("exists", True, (), sink, source,
                                f"virtual microphone {description!r} ({source}) was set up; re-linked it to "
                                f"{sink!r}", server)
    if not loaded:
        return VirtualMicResult("exists", False, (), sink, source,
                                f"virtual microphone {description!r} ({source}) already set up; nothing changed",
                                server)
    return VirtualMicResult("created", True, tuple(loaded), sink, source,
                            f"created virtual microphone {description!r} ({source}) in {server or 'the server'}; "
                            f"the daemon plays into {sink!r}", server)
