"""Both sound servers as the tests start them (tests/pulse_env.py), and the virtual
microphone `setup-audio` makes on each: on PipeWire it must be a node of
media.class=Audio/Source/Virtual (what browsers and desktop settings list as a mic),
and on both, speech played into its sink must come out of it."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import numpy as np

from tests.conftest import espeak_wav
from tests.daemon_proc import DaemonProc, base_config, free_port, write_atomic
from tests.live_harness import envelope, onsets, record_mic_while_playing
from tests.pulse_env import both_servers
from vcam_talker.audio.virtual import MEDIA_CLASS, SINK_NAME, SOURCE_NAME, setup_virtual_mic


def pw_nodes(env) -> dict[str, dict]:
    """PipeWire's own view of the graph (pw-dump): node.name → its properties."""
    dump = json.loads(subprocess.run(["pw-dump"], env=env, capture_output=True, text=True, check=True,
                                     timeout=10).stdout)
    return {o["info"]["props"].get("node.name"): o["info"]["props"] for o in dump
            if o.get("type") == "PipeWire:Interface:Node"}


def pw_links(env, port: str) -> str:
    """What ``pw-link -l`` lists under ``port`` (its links, one "|-> peer" a line)."""
    out = subprocess.run(["pw-link", "-l"], env=env, capture_output=True, text=True, check=True, timeout=10).stdout
    lines, mine = [], False
    for line in out.splitlines():
        if not line.startswith(" "):
            mine = line.strip() == port
        elif mine:
            lines.append(line)
    return "\n".join(lines)


@both_servers
def test_the_private_server_is_the_one_asked_for(pulse_server):
    info = pulse_server.pactl("info")
    on_pipewire = "on PipeWire" in info
    assert on_pipewire == (pulse_server.kind == "pipewire"), info
    sinks = pulse_server.pactl("list", "short", "sinks")
    assert "vcam_in" in sinks and "vcam_mic" in sinks


@both_servers
def test_virtual_mic_is_listed_as_a_microphone_and_carries_speech(pulse_server, tmp_path):
    wav = espeak_wav(tmp_path / "hi.wav", "Hello from the virtual microphone.", rate=48000)
    r = setup_virtual_mic()
    try:
        assert r.action == "created"
        assert ("PipeWire" in r.server) == (pulse_server.kind == "pipewire")
        sources = pulse_server.pactl("list", "sources")
        block = sources[sources.index(f"Name: {SOURCE_NAME}"):]
        assert "Description: VCam Talker Mic\n" in block and "Monitor of Sink: n/a" in block.split("\n\n")[0]
        if pulse_server.kind == "pipewire":
            props = pw_nodes(pulse_server.env)[SOURCE_NAME]
            assert props["media.class"] == MEDIA_CLASS and props["node.description"] == "VCam Talker Mic"
            # a lost link (e.g. removed in a patchbay) is made again by the next setup-audio
            port = f"{SINK_NAME}:monitor_MONO"
            subprocess.run(["pw-link", "-d", port, f"{SOURCE_NAME}:input_MONO"], env=pulse_server.env,
                           check=True, timeout=10)
            assert SOURCE_NAME not in pw_links(pulse_server.env, port)
            again = setup_virtual_mic()
            assert again.action == "exists" and again.changed and "re-linked" in again.message
            assert f"{SOURCE_NAME}:input_MONO" in pw_links(pulse_server.env, port)
        # what a meeting app records from the mic is what the daemon plays into the sink;
        # play only once the recorder receives data (a new idle null sink on PulseAudio can
        # take ~2 s to deliver its first block to a monitor's reader)
        rec = subprocess.Popen(["parec", f"--device={SOURCE_NAME}", "--latency-msec=20", "--raw",
                                "--format=float32le", "--rate=16000", "--channels=1"],
                               env=pulse_server.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: rec.stdout.read(640), b"")),
                                  daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 10
            while sum(map(len, chunks)) < 6400 and time.monotonic() < deadline:  # 0.1 s recorded
                time.sleep(0.02)
            subprocess.run(["paplay", f"--device={SINK_NAME}", str(wav)], env=pulse_server.env, check=True,
                           timeout=30)
            time.sleep(0.5)
        finally:
            rec.terminate()
            rec.wait(timeout=5)
            reader.join(5)
        data = b"".join(chunks)
        x = np.frombuffer(data[: len(data) // 4 * 4], np.float32)
        loud = np.abs(x[: len(x) // 160 * 160]).reshape(-1, 160).max(1) > 0.05  # 10 ms blocks
        assert loud.sum() * 0.01 > 1.0, (f"{pulse_server.kind}: {loud.sum() * 10} ms of speech (about 1500 went "
                                         f"in) came out of the mic; the recording lasted {len(loud) * 10} ms")
    finally:
        setup_virtual_mic(undo=True)
    if pulse_server.kind == "pipewire":
        assert SOURCE_NAME not in pw_nodes(pulse_server.env)



@both_servers
def test_reload_switches_the_delayed_mic_on(pulse_server, tmp_path):
    """Editing audio.output while the daemon runs restarts that stream alone, on either
    server: the camera keeps going and speech then flows from vcam_in to vcam_mic."""
    from tests.test_daemon_reload import check_frames_continuous

    wav = espeak_wav(tmp_path / "hello.wav", "Hello, the mic is on.")
    cfg = base_config(free_port(), audio={"input": "vcam_in_monitor", "output": "none"})
    with DaemonProc(tmp_path, cfg, env=pulse_server.env) as d:
        d.started()
        time.sleep(0.5)
        cfg["audio"]["output"] = "vcam_mic_sink"
        t_edit = time.monotonic()
        write_atomic(d.config_path, cfg)
        _, line = d.wait_for("reloaded (file changed)", since=t_edit)
        assert "audio output" in line and "video" not in line and "audio input" not in line, line
        time.sleep(1.0)
        mic = record_mic_while_playing(wav, pulse_server.env)
        st = d.status()
        d.terminate()
    assert st["output"] == "ok" and st["input"] == "ok" and st["playback"]["lost_samples"] == 0
    assert len(onsets(envelope(mic))) == 1 and np.abs(mic).max() > 0.05
    times, frames = d.frames()
    check_frames_continuous(times, frames)
