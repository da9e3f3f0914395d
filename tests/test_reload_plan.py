"""reload_plan.plan as a table: a config edit (and the window spec of the engine that will
render) in, what restarts out. The end-to-end reloads are in test_daemon_reload.py."""

from __future__ import annotations

import pytest

from vcam_talker.config import Config, from_dict, to_dict
from vcam_talker.frames import WindowSpec
from vcam_talker.reload_plan import Plan, engine_needed, plan

CLASSIC = WindowSpec(16000, 0.05, 0.06)
CLASSIC_120 = WindowSpec(16000, 0.05, 0.12)
SADTALKER = WindowSpec(16000, 0.2, 0.33)
SADTALKER_LOW = WindowSpec(16000, 0.2, 0.13)  # fewer lookahead frames


def cfg(**sections) -> Config:
    d = to_dict(Config())
    for path, value in sections.items():
        *parents, key = path.split("__")
        node = d
        for p in parents:
            node = node[p]
        node[key] = value
    return from_dict(d)


BASE = cfg()
ST = cfg(engine__name="sadtalker")

# (name, old config, new config, old spec, new spec, expected plan)
TABLE = [
    ("nothing", BASE, cfg(), CLASSIC, CLASSIC, Plan()),
    ("status only", BASE, cfg(status__interval_s=2.0), CLASSIC, CLASSIC, Plan()),
    ("status endpoint", BASE, cfg(status__http="127.0.0.1:9999"), CLASSIC, CLASSIC, Plan(status_server=True)),
    ("status endpoint off", BASE, cfg(status__http=""), CLASSIC, CLASSIC, Plan(status_server=True)),
    ("control token", BASE, cfg(control__token="t" * 20), CLASSIC, CLASSIC, Plan(status_server=True)),
    ("avatar folder", BASE, cfg(control__avatars_dir="/tmp/a"), CLASSIC, CLASSIC, Plan(status_server=True)),
    ("classic tuning is live", BASE, cfg(engine__classic__mouth_gain=1.5), CLASSIC, CLASSIC, Plan(tuning=True)),
    ("classic tuning while sadtalker renders", ST, cfg(engine__name="sadtalker", engine__classic__mouth_gain=1.5),
     SADTALKER, SADTALKER, Plan()),
    ("trim is live", BASE, cfg(audio__trim_ms=20.0), CLASSIC, CLASSIC, Plan(trim=True)),
    ("log level", BASE, cfg(log_level="debug"), CLASSIC, CLASSIC, Plan(log_level=True)),
    ("avatar", BASE, cfg(avatar__face_scale=0.5), CLASSIC, CLASSIC, Plan(avatar=True)),
    ("engine switch re-windows", BASE, ST, CLASSIC, SADTALKER, Plan(engine=True, video=True)),
    ("switch back re-windows", ST, BASE, SADTALKER, CLASSIC, Plan(engine=True, video=True)),
    ("classic lookahead re-windows", BASE, cfg(engine__classic__lookahead_ms=120.0), CLASSIC, CLASSIC_120,
     Plan(engine=True, video=True)),
    ("classic lookahead is not read by sadtalker", ST,
     cfg(engine__name="sadtalker", engine__classic__lookahead_ms=120.0), SADTALKER, SADTALKER, Plan()),
    ("sadtalker setting with the same windows", ST, cfg(engine__name="sadtalker", engine__sadtalker__pose_style=3),
     SADTALKER, SADTALKER, Plan(engine=True)),
    ("sadtalker setting that changes the windows", ST,
     cfg(engine__name="sadtalker", engine__sadtalker__preset="balanced"), SADTALKER, SADTALKER_LOW,
     Plan(engine=True, video=True)),
    ("sadtalker setting while classic renders", BASE, cfg(engine__sadtalker__pose_style=3), CLASSIC, CLASSIC,
     Plan()),
    ("fps", BASE, cfg(video__fps=20), CLASSIC, CLASSIC, Plan(engine=True, video=True)),
    ("size reopens the camera", BASE, cfg(video__width=320, video__height=240), CLASSIC, CLASSIC,
     Plan(engine=True, video=True, camera=True)),
    ("sinks alone", BASE, cfg(sinks__virtualcam__fmt="BGR"), CLASSIC, CLASSIC, Plan(sinks=True)),
    ("sinks with a video restart", BASE, cfg(video__fps=20, sinks__virtualcam__fmt="BGR"), CLASSIC, CLASSIC,
     Plan(engine=True, video=True, camera=True)),
    ("audio input", BASE, cfg(audio__input="demo"), CLASSIC, CLASSIC, Plan(audio_input=True)),
    ("capture block", BASE, cfg(audio__block_ms=20.0), CLASSIC, CLASSIC, Plan(audio_input=True)),
    ("audio output", BASE, cfg(audio__output="none"), CLASSIC, CLASSIC, Plan(audio_output=True)),
    ("audio helper off: both devices reopen in the daemon", BASE, cfg(audio__helper=False), CLASSIC, CLASSIC,
     Plan(audio_input=True, audio_output=True)),
    ("realtime off: both devices reopen at normal priority", BASE, cfg(audio__realtime=False), CLASSIC, CLASSIC,
     Plan(audio_input=True, audio_output=True)),
    ("switch and new tuning: the new engine is built with it", ST, cfg(engine__classic__mouth_gain=1.5),
     SADTALKER, CLASSIC, Plan(engine=True, video=True)),
    # the fallback to classic after engine failures: same config but the engine name
    ("fallback", ST, BASE, SADTALKER, CLASSIC, Plan(engine=True, video=True)),
]


@pytest.mark.parametrize("old,new,old_spec,new_spec,expected", [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_plan_table(old, new, old_spec, new_spec, expected):
    assert plan(old, new, old_spec, new_spec) == expected


def test_a_new_spec_alone_restarts_the_video_stage():
    """Whatever the configs say, windows that differ restart the windower and the pacer."""
    p = plan(BASE, cfg(), CLASSIC, CLASSIC_120)
    assert p.video and not p.camera


def test_avatar_file_saved_over():
    assert plan(BASE, cfg(), CLASSIC, CLASSIC, avatar_file_changed=True) == Plan(avatar=True)


def test_engine_needed_agrees_with_plan():
    for _, old, new, old_spec, new_spec, expected in TABLE:
        assert engine_needed(old, new) == expected.engine


@pytest.mark.parametrize("p,words", [
    (Plan(), []),
    (Plan(engine=True, video=True), ["video", "engine"]),
    (Plan(engine=True, video=True, camera=True), ["video (camera reopened)", "engine"]),
    (Plan(avatar=True, tuning=True, trim=True), ["avatar", "engine tuning (live)", "audio trim (live)"]),
    (Plan(sinks=True, audio_input=True, audio_output=True), ["sinks", "audio input", "audio output"]),
])
def test_describe(p, words):
    assert p.describe() == words
