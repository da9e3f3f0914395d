"""The `vcam-talker` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from vcam_talker import __version__
from vcam_talker import config as config_mod
from vcam_talker.errors import ConfigError, VcamError

log = logging.getLogger("vcam_talker")

DEMO_SPEECH = Path(__file__).resolve().parent / "data" / "demo_speech.wav"


def find_config(explicit: str | None) -> Path | None:
    """--config, then $VCAM_TALKER_CONFIG, ./config.yaml, ~/.config/vcam-talker/config.yaml;
    None means the embedded defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("VCAM_TALKER_CONFIG")
    if env:
        return Path(env)
    for p in (Path("config.yaml"), Path.home() / ".config" / "vcam-talker" / "config.yaml"):
        if p.is_file():
            return p
    return None


def load_config(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(find_config(getattr(args, "config", None)))
    # command-line overrides go through the same validation as the file
    over: dict = {}
    if getattr(args, "engine", None):
        over.setdefault("engine", {})["name"] = args.engine
    if getattr(args, "fps", None) is not None:
        over.setdefault("video", {})["fps"] = args.fps
    if getattr(args, "size", None):
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--size: must be WIDTHxHEIGHT, e.g. 512x512, got {args.size!r}") from None
        over.setdefault("video", {}).update(width=w, height=h)
    if over:
        merged = config_mod.to_dict(cfg)
        for section, values in over.items():
            merged[section].update(values)
        cfg = config_mod.from_dict(merged, source=cfg.source)
    return cfg


def cmd_render(args: argparse.Namespace) -> int:
    from vcam_talker.render import render_file

    cfg = load_config(args)
    res = render_file(cfg, Path(args.audio), Path(args.out), Path(args.avatar) if args.avatar else None,
                      progress=not args.quiet, streaming=args.streaming)
    print(f"wrote {res.out}: {res.frames} frames at {res.fps} fps, {res.audio_seconds:.2f} s of audio, "
          f"{res.wall_s:.2f} s wall ({res.realtime_factor:.1f}x real time; prepare {res.prepare_s:.2f} s)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vcam_talker.engines import create_engine

    cfg = load_config(args)
    engine = create_engine(cfg)
    t = time.perf_counter()
    av = engine.prepare(Path(args.image))
    ms = (time.perf_counter() - t) * 1e3
    info = dict(av.info)
    if args.json:
        print(json.dumps({"face_box": [round(v, 1) for v in av.face_box],
                          "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in av.landmarks],
                          "from_cache": av.from_cache, "ms": round(ms, 2), **info}))
        return 0
    print(f"avatar {args.image} for engine {engine.name}: "
          f"{'loaded from cache' if av.from_cache else 'prepared'} in {ms:.1f} ms")
    print(f"  faces found: {info.get('faces')} (detector {info.get('detector')}, score {info.get('detector_score')})")
    print(f"  face box in frame ({av.size[0]}x{av.size[1]}): " + ", ".join(f"{v:.0f}" for v in av.face_box))
    print(f"  face box in image: {info.get('source_face_box')}, roll {info.get('roll_deg')} deg, scale {info.get('scale')}")
    lm = av.landmarks
    print(f"  68 landmarks: jaw {lm[0].round(1).tolist()}..{lm[16].round(1).tolist()}, "
          f"eyes {lm[36:48].mean(0).round(1).tolist()}, mouth {lm[48:68].mean(0).round(1).tolist()}")
    for note in info.get("notes", []):
        print(f"  note: {note}")
    print(f"  timing ms: {info.get('timing_ms')}")
    print(f"  cache: {info.get('cache_file') or 'disabled or unwritable'}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else find_config(None)
    cfg = config_mod.load(path)
    where = path if path else "embedded defaults"
    print(f"{where}: valid (engine {cfg.engine.name}, {cfg.video.width}x{cfg.video.height} at "
          f"{cfg.video.fps} fps, avatar {cfg.avatar_path()})")
    if not cfg.avatar_path().is_file():
        print(f"warning: avatar.image: file not found: {cfg.avatar_path()}")
        return 1
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from vcam_talker.devices import list_audio_devices, list_video_devices

    audio_ok = True
    print("audio devices:")
    try:
        for d in list_audio_devices():
            io = ", ".join(k for k, v in (("in", d["inputs"]), ("out", d["outputs"])) if v)
            print(f"  [{d['index']}] {d['name']} ({io}; {d['rate']:.0f} Hz){' *default' if d['default'] else ''}")
    except VcamError as exc:
        audio_ok = False
        print(f"  unavailable: {exc}")
    print("video devices (v4l2):")
    vids = list_video_devices()
    for v in vids:
        kind = "v4l2loopback" if v["loopback"] else "camera"
        print(f"  {v['path']}: {v['name']} ({kind})")
    if not any(v["loopback"] for v in vids):
        print("  no v4l2loopback device: sudo modprobe v4l2loopback video_nr=10 "
              'card_label="VCam Talker" exclusive_caps=1')
    return 0 if audio_ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from vcam_talker.daemon import Daemon

    cfg = load_config(args)
    if args.demo or cfg.audio.output == "vcam_talker_mic":
        try:
            from vcam_talker.audio.virtual import setup_virtual_mic

            setup_virtual_mic()
        except VcamError as exc:
            log.warning("virtual mic not created: %s", exc)
    daemon = Daemon(cfg, demo=args.demo, config_path=find_config(getattr(args, "config", None)))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload("SIGHUP"))
    daemon.start()
    try:
        while not stop.wait(0.2):
            if args.duration and time.monotonic() - daemon.started_at >= args.duration:
                break
    finally:
        t = time.monotonic()
        daemon.stop(timeout=1.5)
        log.info("stopped in %.2f s; %s", time.monotonic() - t, daemon.status_line())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    cfg = load_config(args)
    addr = args.address or cfg.status.http
    if not addr:
        raise VcamError("status.http is empty in the config: the daemon serves no status")
    from vcam_talker.web.security import TOKEN_HEADER, is_loopback, read_token

    # a network bind needs the token for GET /status too; this machine's own token file is
    # never sent to another machine
    token = cfg.control.token or (read_token() if is_loopback(addr.rpartition(":")[0]) else "")
    req = urllib.request.Request(f"http://{addr}/status", headers={TOKEN_HEADER: token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            data = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise VcamError(f"the daemon on {addr} refused: {exc.code} {_error_line(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise VcamError(f"no daemon answering on {addr} ({getattr(exc, 'reason', exc)}); is `vcam-talker run` up?") from None
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k}: {v}")
    return 0


def _error_line(exc) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except Exception:  # noqa: BLE001 - not our server's JSON: its reason phrase
        return str(exc.reason)


def cmd_install_service(args: argparse.Namespace) -> int:
    from vcam_talker.service import install_service

    print(install_service(user=True, config=Path(args.config) if args.config else None, enable=not args.no_enable))
    return 0


def cmd_setup_audio(args: argparse.Namespace) -> int:
    from vcam_talker.audio.virtual import setup_virtual_mic

    result = setup_virtual_mic(undo=args.undo)
    print(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vcam-talker", description=__doc__ or "")
    p.description = ("Animate a portrait photo from speech and publish it as a webcam. "
                     "Config: --config, $VCAM_TALKER_CONFIG, ./config.yaml, "
                     "~/.config/vcam-talker/config.yaml, or the embedded defaults.")
    p.add_argument("--version", action="version", version=f"vcam-talker {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("render", help="render a speech file to an mp4 (offline)",
                       description="Render a speech file and an avatar to an H.264/AAC mp4 with the "
                                   "daemon's engine. The sadtalker engine computes the whole clip as the "
                                   "reference does; --streaming shows what the live camera would show.")
    r.add_argument("--audio", default=str(DEMO_SPEECH),
                   help="speech file (WAV/FLAC/OGG, any rate; default: a bundled demo sentence)")
    r.add_argument("--out", default="vcam-talker-demo.mp4", help="output .mp4 (default: %(default)s)")
    r.add_argument("--avatar", help="portrait image (default: avatar.image from the config)")
    r.add_argument("--config", help="config.yaml to use")
    r.add_argument("--engine", help="override engine.name")
    r.add_argument("--fps", type=int, help="override video.fps")
    r.add_argument("--size", help="override video size, WIDTHxHEIGHT")
    r.add_argument("--streaming", action="store_true",
                   help="render what the live camera would show (the engine's streaming horizon) "
                        "instead of the whole-clip offline form")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_render)

    pr = sub.add_parser("prepare", help="precompute an avatar into the cache",
                        description="Detect the face and landmarks, frame and precompute an avatar "
                                    "for the configured engine, store it in the cache, and print what was found.")
    pr.add_argument("image", help="portrait image")
    pr.add_argument("--config", help="config.yaml to use")
    pr.add_argument("--engine", help="override engine.name")
    pr.add_argument("--size", help="override video size, WIDTHxHEIGHT")
    pr.add_argument("--json", action="store_true", help="print JSON (all 68 landmarks)")
    pr.set_defaults(func=cmd_prepare)

    c = sub.add_parser("check-config", help="validate a config file",
                       description="Validate config.yaml (or PATH); exit 0 when valid, "
                                   "1 with a one-line reason naming the field otherwise.")
    c.add_argument("path", nargs="?", help="config file (default: the one the daemon would use)")
    c.set_defaults(func=cmd_check_config)

    d = sub.add_parser("devices", help="list audio devices and v4l2 (loopback) video devices",
                       description="List the audio devices PortAudio sees and the v4l2 video devices, "
                                   "marking v4l2loopback ones.")
    d.set_defaults(func=cmd_devices)

    rn = sub.add_parser("run", help="run the daemon: audio in, virtual camera and delayed mic out",
                        description="Capture speech, animate the avatar, publish frames to the virtual camera "
                                    "(or record them when there is none) and play the speech, delayed to match "
                                    "the video, into the virtual mic. Stops cleanly on SIGINT/SIGTERM.")
    rn.add_argument("--config", help="config.yaml to use")
    rn.add_argument("--demo", action="store_true",
                    help="loop a bundled speech clip as input (and create the virtual mic if missing)")
    rn.add_argument("--engine", help="override engine.name")
    rn.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until stopped)")
    rn.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="ask the running daemon for its state and metrics",
                        description="Query the running daemon over its local HTTP endpoint (status.http).")
    st.add_argument("--config", help="config.yaml to read status.http from")
    st.add_argument("--address", help="HOST:PORT (default: status.http)")
    st.add_argument("--json", action="store_true", help="print raw JSON")
    st.set_defaults(func=cmd_status)

    ins = sub.add_parser("install-service", help="install and enable the systemd user unit",
                         description="Write ~/.config/systemd/user/vcam-talker.service for this installation, "
                                     "reload systemd, enable and start it, and print how to check it.")
    ins.add_argument("--config", help="config file the service runs with (default ~/.config/vcam-talker/config.yaml)")
    ins.add_argument("--no-enable", action="store_true", help="only write the unit file")
    ins.set_defaults(func=cmd_install_service)

    sa = sub.add_parser("setup-audio", help="create (or --undo) the 'VCam Talker Mic' virtual microphone",
                        description="Create the null sink vcam_talker_mic and a source named 'VCam Talker Mic' "
                                    "in the running PulseAudio/PipeWire via pactl. Idempotent.")
    sa.add_argument("--undo", action="store_true", help="remove what setup-audio created")
    sa.set_defaults(func=cmd_setup_audio)

    from vcam_talker.weights import add_cli

    add_cli(sub)
    return p


def load_plugins() -> None:
    """Import the modules named in $VCAM_TALKER_PLUGINS (comma-separated), e.g. one that
    registers a pyvirtualcam backend for sinks.virtualcam.backend."""
    import importlib

    for name in filter(None, (m.strip() for m in os.environ.get("VCAM_TALKER_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise VcamError(f"VCAM_TALKER_PLUGINS: cannot import {name!r} ({type(exc).__name__}: {exc})") from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="vcam-talker: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        load_plugins()
        return int(args.func(args) or 0)
    except VcamError as exc:
        print(f"vcam-talker: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vcam-talker: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
