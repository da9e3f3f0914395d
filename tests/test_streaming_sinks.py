"""The ffmpeg sink streaming for real: the daemon process publishes to a local RTMP or SRT
listener (ffmpeg), the listener is killed mid-stream and started again. The stream must
resume, the camera must not stall meanwhile, and status must tell the story."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.daemon_proc import DaemonProc, base_config, free_port
from tests.stream_listener import Listener, packet_times, probe, url
from tests.test_daemon_reload import FPS, check_frames_continuous


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(d: DaemonProc) -> dict:
    return d.status()["health"]["ffmpeg"]


@pytest.mark.parametrize("proto", ["rtmp", "srt"])
def test_listener_killed_and_restarted(tmp_path, proto):
    port = free_port() if proto == "rtmp" else _free_udp_port()
    first = Listener(proto, port, tmp_path / f"first.{proto}")
    cfg = base_config(free_port(), sinks={"ffmpeg": {"enabled": True, "target": url(proto, port)}})
    second = None
    try:
        with DaemonProc(tmp_path, cfg) as d:
            d.started()
            first.wait_bytes(20_000, timeout=20)
            time.sleep(2.0)
            before = _health(d)
            assert before["state"] == "ok" and before["outages"] == 0, (before, [ln for _, ln in d.lines[-20:]])
            t_kill = time.monotonic()
            first.kill()
            t_failed, line = d.wait_for(f"ffmpeg -> {url(proto, port)} failed (", since=t_kill, timeout=15)
            down = d.status()
            # the listener is still away: the daemon keeps retrying, quietly
            time.sleep(3.0)
            still_down = _health(d)
            t_restart = time.monotonic()
            second = Listener(proto, port, tmp_path / f"second.{proto}")
            t_data = second.wait_bytes(20_000, timeout=30)
            t_back, _ = d.wait_for("is back", since=t_restart, timeout=30)
            time.sleep(2.0)
            after = d.status()
            d.terminate()
        second.stop()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    detect_s, resume_s = t_failed - t_kill, t_data - t_restart
    assert down["sinks"]["ffmpeg"] != "ok" and down["health"]["ffmpeg"]["state"] in ("down", "reopening")
    assert still_down["state"] in ("down", "reopening") and still_down["outages"] == 1
    assert after["sinks"]["ffmpeg"] == "ok"
    h = after["health"]["ffmpeg"]
    assert h["state"] == "ok" and h["outages"] == 1 and h["last_outage_s"] >= 3.0, h
    assert d.count("failed (") == 1, "the outage is logged once, not once per retry"
    # the camera went on at its rate throughout: the recording backend saw no gap
    times, frames = d.frames()
    check_frames_continuous(times, frames)
    during = (times > t_kill) & (times < t_back)
    rate = during.sum() / (t_back - t_kill)
    assert abs(rate - FPS) < 1.5, f"camera at {rate:.1f} fps during the outage"
    # both listeners got audio and video
    for f in (first.out, second.out):
        p = probe(f)
        assert {"audio", "video"} <= set(p), p
    got = float(probe(second.out)["format"]["duration"])
    assert got > (time.monotonic() - t_data) - 4.0 - 3.0  # streamed from the resume to the end
    gaps = np.diff(times)
    print(f"\n{proto}: listener killed, daemon said so after {detect_s:.1f} s ({line.split('failed ')[-1]}); "
          f"listener restarted, data again after {resume_s:.1f} s, 'is back' after {t_back - t_restart:.1f} s; "
          f"camera {rate:.2f} fps during the outage, largest frame gap {gaps.max() * 1e3:.0f} ms; "
          f"status while down: {still_down}; after: {h}")


def test_obs_media_source_route_gets_audio_and_video_in_step(tmp_path):
    """OBS's Media Source receiving our SRT stream is an ffmpeg SRT listener reading mpegts
    (Input srt://127.0.0.1:PORT?mode=listener, Input Format mpegts): the same client here.
    What it receives must start audio and video together and keep them together."""
    port = _free_udp_port()
    obs = Listener("srt", port, tmp_path / "obs.ts")
    cfg = base_config(free_port(), sinks={"ffmpeg": {"enabled": True, "target": url("srt", port)}})
    try:
        with DaemonProc(tmp_path, cfg) as d:
            d.started()
            obs.wait_bytes(20_000, timeout=20)
            time.sleep(6.0)
            d.terminate()
        obs.stop()
    finally:
        obs.kill()
    p = probe(obs.out)
    a, v = packet_times(obs.out, "a"), packet_times(obs.out, "v")
    # mpegts has no edit list: the AAC encoder's priming (1024 samples, decoded as near
    # silence) is sent with timestamps before the first frame, so the first real audio
    # sample is stamped where the first frame is, to the millisecond
    priming = 1024 / 16000
    start_gap = float(p["audio"]["start_time"]) + priming - float(p["video"]["start_time"])
    a_end, v_end = a[-1][0] + a[-1][1], v[-1][0] + v[-1][1]
    assert abs(start_gap) <= 0.002, f"audio starts {start_gap * 1e3:+.1f} ms after video (priming removed)"
    # and they end together (within what the encoders hold back) after 6 s of streaming
    assert v_end - v[0][0] > 5.0 and abs(a_end - v_end) <= 0.25, (a_end, v_end)
    # no holes in either: each packet follows the last
    assert np.diff([t for t, _ in v]).max() <= 1.5 / FPS
    assert np.diff([t for t, _ in a]).max() <= 0.2
    print(f"\nOBS route (SRT, mpegts): first audio sample {start_gap * 1e3:+.1f} ms after the first frame "
          f"(AAC priming of {priming * 1e3:.0f} ms before both); "
          f"video {v_end - v[0][0]:.2f} s, audio {a_end - a[0][0]:.2f} s, ends {(a_end - v_end) * 1e3:+.0f} ms apart")


def test_a_hung_listener_is_reported_and_closing_does_not_wait(tmp_path):
    """A listener that stops reading (SIGSTOP: a hung network, no reset) never makes ffmpeg
    fail; the sink must notice that ffmpeg takes no frames, report it through its health
    hook once, and close without waiting for the stuck pipe."""
    import os
    import signal
    import threading

    from vcam_talker.frames import AudioSpan, VideoFrame
    from vcam_talker.sinks.ffmpeg import FfmpegLiveSink

    port = free_port()
    listener = Listener("rtmp", port, tmp_path / "hung.flv")
    listener.wait_listening(port)
    sink = FfmpegLiveSink(url("rtmp", port), (256, 256), FPS, 16000)
    reports, reported = [], threading.Event()
    sink.report = lambda reason: (reports.append((time.monotonic(), reason)), reported.set())
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (256, 256, 3), np.uint8) for _ in range(8)]  # fills socket buffers fast
    sink.open()
    try:
        t0, i, t_stop, slowest = time.monotonic(), 0, None, 0.0
        while not reported.is_set() and time.monotonic() - t0 < 90:
            if t_stop is None and time.monotonic() - t0 > 2.0:
                listener.wait_bytes(10_000, timeout=5)
                os.kill(listener.proc.pid, signal.SIGSTOP)
                t_stop = time.monotonic()
            t_send = time.monotonic()
            sink.send(VideoFrame(index=i, t=i / FPS, image=noise[i % 8], sample=i * 640),
                      AudioSpan.of(np.zeros(640, np.float32), i * 640))  # as the pacer hands it over
            slowest = max(slowest, time.monotonic() - t_send)
            i += 1
            time.sleep(max(0.0, t0 + i / FPS - time.monotonic()))
        t_close = time.monotonic()
        sink.close()
        close_s = time.monotonic() - t_close
    finally:
        os.kill(listener.proc.pid, signal.SIGCONT)
        listener.kill()
    assert t_stop is not None and len(reports) == 1, reports
    t_report, reason = reports[0]
    assert reason == f"ffmpeg took no frame for {sink.STALLED_S:.0f} s"
    assert close_s < 1.0 and sink.dropped > 0
    assert slowest < 1.0 / FPS, f"send() blocked the pacer for {slowest * 1e3:.0f} ms"
    print(f"\nhung listener: reported {t_report - t_stop:.1f} s after it stopped reading ({reason}); "
          f"{sink.dropped} frames dropped meanwhile; slowest send() {slowest * 1e3:.1f} ms; closed in {close_s:.2f} s")
