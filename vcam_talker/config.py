"""The config.yaml schema, as dataclasses, and its validating loader.

Every field declares its constraint in ``metadata``; the loader walks the dataclasses, so
the schema is written once. Errors name the field path and the bad value (``video.fps:
must be 1..60, got 0``); unknown keys get the closest known key as a hint."""

from __future__ import annotations

import dataclasses
import difflib
import os
import reprlib
import stat
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vcam_talker.errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent
DEFAULT_AVATAR = PROJECT_ROOT / "avatars" / "default.png"
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"


def _f(default: Any, *, range: tuple | None = None, choices: tuple | None = None,
       even: bool = False) -> Any:
    meta = {"range": range, "choices": choices, "even": even}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AvatarConfig:
    image: str = _f("default")
    face_scale: float = _f(0.35, range=(0.1, 0.9))
    max_side: int = _f(2048, range=(256, 8192))
    landmarks: str = _f("auto", choices=("auto", "dlib", "face-alignment"))


@dataclass
class ClassicConfig:
    lookahead_ms: float = _f(60.0, range=(0.0, 1000.0))
    mouth_gain: float = _f(1.0, range=(0.0, 3.0))
    attack_ms: float = _f(25.0, range=(0.0, 500.0))
    release_ms: float = _f(70.0, range=(0.0, 1000.0))
    silence_db: float = _f(-45.0, range=(-90.0, 0.0))
    blink_min_s: float = _f(2.0, range=(0.5, 30.0))
    blink_max_s: float = _f(6.0, range=(0.5, 60.0))
    sway: float = _f(1.0, range=(0.0, 3.0))
    seed: int = _f(0, range=(0, 2**31 - 1))


@dataclass
class SadTalkerConfig:
    size: int = _f(256, choices=(256, 512))  # the checkpoints exist for these only
    preprocess: str = _f("crop", choices=("crop", "extcrop", "full", "extfull", "resize"))
    still: bool = _f(False)
    pose_style: int = _f(0, range=(0, 45))
    expression_scale: float = _f(1.0, range=(0.0, 3.0))
    # fixed head angles in degrees; None (empty in YAML): driven by the audio
    yaw: float | None = _f(None, range=(-90.0, 90.0))
    pitch: float | None = _f(None, range=(-90.0, 90.0))
    roll: float | None = _f(None, range=(-90.0, 90.0))
    preset: str = _f("low-latency", choices=("reference", "balanced", "low-latency", "custom"))
    lookahead_frames: int = _f(3, range=(0, 60))
    pose_chunk: int = _f(4, range=(1, 32))
    blink: bool = _f(True)
    seed: int = _f(0, range=(0, 2**31 - 1))
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    # speed switches (engines/sadtalker/accel.py); half: true is the legacy float16
    half: bool = _f(False)
    precision: str = _f("float32", choices=("float32", "float16", "bfloat16", "tf32"))
    compile: bool = _f(False)
    compile_mode: str = _f("default", choices=("default", "reduce-overhead", "max-autotune"))
    channels_last: bool = _f(False)
    # throw-away frames rendered by prepare, so the first live frame pays no initialisation
    warmup_frames: int = _f(2, range=(0, 20))
    # most backlog windows the live worker renders in one batch instead of skipping them
    catch_up_batch: int = _f(4, range=(1, 16))
    weights_dir: str = _f("")


@dataclass
class EngineConfig:
    name: str = _f("classic", choices=("classic", "sadtalker"))
    classic: ClassicConfig = field(default_factory=ClassicConfig)
    sadtalker: SadTalkerConfig = field(default_factory=SadTalkerConfig)


@dataclass
class VideoConfig:
    width: int = _f(512, range=(64, 3840), even=True)
    height: int = _f(512, range=(64, 2160), even=True)
    fps: int = _f(25, range=(1, 60))


@dataclass
class AudioConfig:
    input: str = _f("default")
    output: str = _f("vcam_talker_mic")
    trim_ms: float = _f(0.0, range=(-500.0, 500.0))
    block_ms: float = _f(10.0, range=(2.0, 100.0))
    helper: bool = _f(True)  # capture and mic in their own process (audio/helper.py)
    realtime: bool = _f(True)  # the helper's threads at realtime priority, where allowed (audio/realtime.py)


@dataclass
class VirtualCamConfig:
    enabled: bool = _f(True)
    device: str = _f("")
    fmt: str = _f("RGB", choices=("RGB", "BGR", "I420", "NV12", "YUYV", "UYVY", "GRAY"))
    backend: str = _f("")


@dataclass
class FfmpegSinkConfig:
    enabled: bool = _f(False)
    target: str = _f("")
    crf: int = _f(23, range=(0, 51))


@dataclass
class SinksConfig:
    virtualcam: VirtualCamConfig = field(default_factory=VirtualCamConfig)
    ffmpeg: FfmpegSinkConfig = field(default_factory=FfmpegSinkConfig)
    fallback_record: str = _f("~/Videos/vcam-talker-live.mp4")


@dataclass
class StatusConfig:
    interval_s: float = _f(5.0, range=(0.5, 3600.0))
    http: str = _f("127.0.0.1:8765")


@dataclass
class ControlConfig:
    """The control server (on ``status.http``). Empty ``token``: the per-install token file
    ($XDG_STATE_HOME/vcam-talker/token); empty ``avatars_dir``: $XDG_DATA_HOME/vcam-talker/avatars."""

    token: str = _f("")
    avatars_dir: str = _f("")


@dataclass
class CacheConfig:
    dir: str = _f("~/.cache/vcam-talker")
    enabled: bool = _f(True)


@dataclass
class Config:
    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log_level: str = _f("info", choices=("debug", "info", "warning", "error"))
    #: the file this config came from; relative paths in it resolve against its folder
    source: Path | None = field(default=None, compare=False, metadata={"internal": True})

    def avatar_path(self) -> Path:
        """The avatar image path: ``default`` is the bundled portrait."""
        if self.avatar.image == "default":
            return DEFAULT_AVATAR
        p = Path(self.avatar.image).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p

    def cache_dir(self) -> Path:
        """``$VCAM_TALKER_CACHE`` overrides ``cache.dir``."""
        return Path(os.environ.get("VCAM_TALKER_CACHE") or self.cache.dir).expanduser()


#: bounds on what a config file may be: its size, YAML aliases, nesting and errors listed
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 64
MAX_DEPTH = 32
MAX_ERRORS = 6
#: the largest avatar image accepted (the image loader has the same cap)
MAX_AVATAR_BYTES = 64 << 20

# a bad value is shown shortened: an alias bomb expands to billions of elements
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel = 80, 80, 2
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 5


def _describe(v: Any) -> str:
    if isinstance(v, (str, int, float, list, dict, tuple, set)) and not isinstance(v, bool):
        return _short.repr(v)
    return str(v)[:80]


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs and deep nesting while composing, before any
    value is built."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_ALIASES:
                ev = self.peek_event()
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*name) at line {ev.start_mark.line + 1}; "
                                     f"a config needs few, if any")
        depth = getattr(self, "_depth", 0) + 1
        if depth > MAX_DEPTH:
            ev = self.peek_event()
            raise yaml.YAMLError(f"nested more than {MAX_DEPTH} levels deep at line {ev.start_mark.line + 1}")
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1


def _check_scalar(path: str, typ: Any, meta: dict, value: Any) -> tuple[Any, str | None]:
    """Returns (converted value, error or None)."""
    if typ is bool:
        if not isinstance(value, bool):
            return value, f"{path}: must be true or false, got {_describe(value)}"
        return value, None
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"{path}: must be an integer, got {_describe(value)}"
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"{path}: must be a number, got {_describe(value)}"
        value = float(value)
        if value != value:
            return value, f"{path}: must be a number, got nan"
    elif typ is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return value, f"{path}: must be a string, got {_describe(value)}"
        value = str(value)
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            # NUL breaks every path call; a newline breaks log lines and unit files
            return value, f"{path}: must not contain control characters (NUL, newline, ...), got {_describe(value)}"
    rng, choices = meta.get("range"), meta.get("choices")
    if rng is not None and not (rng[0] <= value <= rng[1]):
        return value, f"{path}: must be {rng[0]}..{rng[1]}, got {_describe(value)}"
    if choices is not None and value not in choices:
        allowed = f"one of {', '.join(choices)}" if isinstance(choices[0], str) else \
            " or ".join(str(c) for c in choices)
        return value, f"{path}: must be {allowed}, got {_describe(value)}"
    if meta.get("even") and value % 2:
        return value, f"{path}: must be even (video encoders need it), got {value}"
    return value, None


#: keys that older versions had elsewhere: the error names the new place
MOVED = {"engine.lookahead_ms": "engine.classic.lookahead_ms"}


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{path or 'config'}: must be a mapping of keys, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in data.items():
        key = key if isinstance(key, str) and len(key) <= 80 else _describe(key)
        kpath = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(fields)})"
            if kpath in MOVED:
                hint = f" (moved to {MOVED[kpath]})"
            errors.append(f"{kpath}: unknown key{hint}")
            continue
        typ = hints[key]
        optional = typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in typing.get_args(typ)
        if optional:
            if value is None:  # an empty YAML value
                kwargs[key] = None
                continue
            typ = next(t for t in typing.get_args(typ) if t is not type(None))
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, kpath, errors)
            continue
        converted, err = _check_scalar(kpath, typ, fields[key].metadata, value)
        if err:
            errors.append(err)
        else:
            kwargs[key] = converted
    return cls(**kwargs)


def _cross_checks(cfg: Config, errors: list[str]) -> None:
    _check_control(cfg, errors)
    t = cfg.sinks.ffmpeg.target
    if cfg.sinks.ffmpeg.enabled and not t:
        errors.append("sinks.ffmpeg.target: must name a file or an rtmp:// or srt:// URL when enabled, got ''")
    if "://" in t and not t.startswith(("rtmp://", "rtmps://", "srt://")):
        errors.append(f"sinks.ffmpeg.target: only rtmp://, rtmps:// and srt:// URLs are supported, got {t!r}")
    _check_avatar_file(cfg, errors)
    st = cfg.engine.sadtalker
    if st.half and st.precision not in ("float32", "float16"):
        errors.append(f"engine.sadtalker.half: true means precision float16, which conflicts with precision {st.precision}")
    c = cfg.engine.classic
    if c.blink_min_s > c.blink_max_s:
        errors.append(
            f"engine.classic.blink_min_s: must not exceed blink_max_s ({c.blink_max_s}), got {c.blink_min_s}"
        )


def _check_control(cfg: Config, errors: list[str]) -> None:
    from vcam_talker.web.security import is_loopback, split_addr, token_problem

    token = cfg.control.token
    if token and token_problem(token):
        errors.append(f"control.token: {token_problem(token)}, got {len(token)} characters")
    http = cfg.status.http
    if not http:
        return
    try:
        host, _ = split_addr(http)
    except ValueError:
        errors.append(f"status.http: must be HOST:PORT such as 127.0.0.1:8765, or empty, got {_describe(http)}")
        return
    if not is_loopback(host) and not token:
        # the network can reach the API: the secret its clients need must be chosen on purpose
        errors.append(f"control.token: must be set when status.http binds a non-loopback address "
                      f"({host or 'every interface'}); e.g. python3 -c 'import secrets; "
                      f"print(secrets.token_urlsafe(32))'")


def _check_avatar_file(cfg: Config, errors: list[str]) -> None:
    """A FIFO would block whoever reads it, /dev/zero never ends: only a regular file of
    sane size may be the avatar. stat only; a missing file is check-config's warning."""
    try:
        p = cfg.avatar_path()
        st = os.stat(p)
    except (OSError, ValueError, RuntimeError):
        return
    if stat.S_ISDIR(st.st_mode):
        errors.append(f"avatar.image: is a folder, not an image file, got {_describe(str(p))}")
    elif not stat.S_ISREG(st.st_mode):
        errors.append(f"avatar.image: is not a regular file (a device, FIFO or socket), got {_describe(str(p))}")
    elif st.st_size > MAX_AVATAR_BYTES:
        errors.append(f"avatar.image: file is {st.st_size >> 20} MB, more than {MAX_AVATAR_BYTES >> 20} MB, "
                      f"got {_describe(str(p))}")


def from_dict(data: Any, source: Path | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem in one line."""
    errors: list[str] = []
    cfg = _build(Config, data, "", errors)
    cfg.source = source
    _cross_checks(cfg, errors)
    if errors:
        where = f"{source}: " if source else ""
        more = f"; and {len(errors) - MAX_ERRORS} more problems" if len(errors) > MAX_ERRORS else ""
        raise ConfigError(where + "; ".join(errors[:MAX_ERRORS]) + more)
    return cfg


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a config file; ``None`` means the embedded defaults."""
    if path is None:
        return Config()
    from vcam_talker.safeio import read_capped

    if "\0" in os.fspath(path):
        raise ConfigError(f"config path contains a NUL byte: {_describe(os.fspath(path))}")
    p = Path(path).expanduser()
    try:
        text = read_capped(p, "config file", MAX_CONFIG_BYTES, ConfigError).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: cannot read config ({exc})") from None
    if "\0" in text:
        raise ConfigError(f"{p}: invalid YAML: the file contains NUL bytes")
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: invalid YAML{where}: {problem}") from None
    return from_dict(data, source=p.resolve())


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d
