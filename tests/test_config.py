"""config.yaml validation: every error names the field path and the bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from vcam_talker import config as C
from vcam_talker.errors import ConfigError

ROOT = C.PROJECT_ROOT


def err(data) -> str:
    with pytest.raises(ConfigError) as e:
        C.from_dict(data)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_shipped_config_is_valid_and_spells_out_every_default():
    cfg = C.load(ROOT / "config.yaml")
    assert cfg == C.Config()
    # every schema field appears in the commented file, so users can see all knobs
    data = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert data == C.to_dict(C.Config())


def test_range_error_names_path_and_value():
    assert err({"video": {"fps": 0}}) == "video.fps: must be 1..60, got 0"
    assert err({"engine": {"classic": {"mouth_gain": 7}}}) == "engine.classic.mouth_gain: must be 0.0..3.0, got 7.0"


def test_type_errors():
    assert err({"video": {"fps": "25"}}) == "video.fps: must be an integer, got '25'"
    assert err({"video": {"width": 512.5}}) == "video.width: must be an integer, got 512.5"
    assert err({"cache": {"enabled": "yes"}}) == "cache.enabled: must be true or false, got 'yes'"
    assert err({"engine": {"classic": {"lookahead_ms": [1]}}}) == "engine.classic.lookahead_ms: must be a number, got [1]"
    assert err({"engine": {"lookahead_ms": 60}}) == "engine.lookahead_ms: unknown key (moved to engine.classic.lookahead_ms)"
    assert err({"video": 5}) == "video: must be a mapping of keys, got int"
    assert err(["a"]) == "config: must be a mapping of keys, got list"


def test_unknown_keys_suggest_the_closest():
    assert err({"vidoe": {}}) == "vidoe: unknown key (did you mean 'video'?)"
    assert err({"engine": {"classic": {"mouth_gian": 1}}}) == (
        "engine.classic.mouth_gian: unknown key (did you mean 'mouth_gain'?)")
    assert "known keys: width, height, fps" in err({"video": {"zzz": 1}})


def test_choices_even_and_cross_field():
    assert err({"engine": {"name": "wav2lip"}}) == "engine.name: must be one of classic, sadtalker, got 'wav2lip'"
    assert err({"video": {"width": 641}}) == "video.width: must be even (video encoders need it), got 641"
    assert "blink_min_s: must not exceed blink_max_s (3.0), got 5.0" in err(
        {"engine": {"classic": {"blink_min_s": 5.0, "blink_max_s": 3.0}}})


def test_all_errors_reported_together():
    msg = err({"video": {"fps": 0, "height": 1}, "log_level": "loud"})
    assert "video.fps" in msg and "video.height: must be 64..2160, got 1" in msg and "log_level" in msg


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        C.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("video:\n  fps: 25\n   width: 3\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line 3"):
        C.load(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert C.load(empty) == C.Config()


def test_relative_avatar_resolves_against_config_dir(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("avatar:\n  image: faces/me.png\n")
    assert C.load(p).avatar_path() == tmp_path.resolve() / "faces" / "me.png"
    assert C.Config().avatar_path() == C.DEFAULT_AVATAR


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vcam_talker", *args], capture_output=True, text=True,
                          cwd=kw.get("cwd", ROOT), timeout=120)


def test_check_config_cli(tmp_path):
    ok = run_cli("check-config", str(ROOT / "config.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("video:\n  fps: 0\n")
    r = run_cli("check-config", str(bad))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines == [f"vcam-talker: error: {bad}: video.fps: must be 1..60, got 0"]


def test_sadtalker_errors_are_collected_with_the_others():
    """Every problem in one message: the sadtalker size no longer raises on its own first."""
    with pytest.raises(ConfigError) as e:
        C.from_dict({"engine": {"sadtalker": {"size": 300, "pose_style": 46}}, "video": {"fps": 0}})
    msg = str(e.value)
    for part in ("engine.sadtalker.size: must be 256 or 512, got 300", "engine.sadtalker.pose_style: must be 0..45",
                 "video.fps: must be 1..60, got 0"):
        assert part in msg, msg
    assert "\n" not in msg
