"""One torch thread per sadtalker engine, host syncs per live frame, and engine rebuilds that
stay compiled (issue 20). Engines on reduced-width weights in the official layout, on the CPU.

- Every torch call of ``prepare`` (the source nets and the warm-up), of a swap's ``prepare``
  from a third thread, and of ``render`` / ``render_batch`` from the caller's thread runs on
  the engine's own thread.
- Host syncs of one live frame: a TorchFunctionMode counts the calls that wait for the device
  or copy to the host (``.cpu()``, ``.numpy()``, ``__array__``, ``.item()``, ``.tolist()``,
  ``nonzero``, bool/int/float of a tensor) inside the frame's job on the
  engine's thread. On the CPU the engine runs the code the CUDA path runs, except the last
  copy (pinned buffer on CUDA), so a count here is the count there. A frame makes exactly
  one (its picture); a frame that runs a pose decode one more (the decode's rows, which the
  numpy smoothing reads; once per pose chunk). A control adds one ``.cpu()`` and sees it.
- Ten rebuilds, each compiled (inductor, CPU) and closed: every one still gets its own
  compiled graph (dynamo's recompile limit raising, not warning, when hit) and gives the
  eager picture. A control shows the check would catch a shared cache.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from vcam_talker.engines.sadtalker.accel import own_code
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config

AVATAR = Path(__file__).resolve().parents[2] / "avatars" / "default.png"

SYNCS = {"cpu", "numpy", "__array__", "item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__"}


@pytest.fixture(scope="module")
def reduced_dir(tmp_path_factory):
    from .reduced_weights import write_reduced_weights

    return write_reduced_weights(tmp_path_factory.mktemp("reduced_weights"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VCAM_TALKER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def make_engine(reduced_dir, **st) -> SadTalkerEngine:
    st = {"preprocess": "full", "device": "cpu", "warmup_frames": 1, **st}
    return SadTalkerEngine(sadtalker_config(weights_dir=str(reduced_dir), **st))


class Threads:
    """Stands in for a callable attribute and records the thread names that call it."""

    def __init__(self, obj, name: str) -> None:
        self.names: list[str] = []
        self._real = getattr(obj, name)
        setattr(obj, name, self)

    def __call__(self, *a, **k):
        self.names.append(threading.current_thread().name)
        return self._real(*a, **k)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_torch_work_runs_on_the_engine_thread(reduced_dir, cache, speech_wav, tmp_path):
    engine = make_engine(reduced_dir)
    s = engine.stages
    frame, encode, motion = Threads(s, "frame"), Threads(s.source, "encode"), Threads(s, "motion")
    embed = Threads(s.audio, "exp_embed")
    try:
        avatar = engine.prepare(AVATAR)  # the source nets and the warm-up
        wav, _ = sf.read(speech_wav, dtype="float32")
        win = Windower(ArrayAudio(wav, 16000), engine.window_spec, 25)
        out: dict = {}

        def live():
            out["one"] = engine.render(win.window(10), avatar)
            out["many"] = engine.render_batch([win.window(k) for k in range(11, 14)], avatar)

        def swap():
            other = tmp_path / "other.png"
            other.write_bytes(AVATAR.read_bytes() + b"")  # same face, another file: prepared again
            out["swap"] = engine.prepare(other)

        for target in (live, swap):
            t = threading.Thread(target=target, name=f"test-{target.__name__}")
            t.start()
            t.join(300)
        assert out["one"].shape[2] == 3 and len(out["many"]) == 3 and out["swap"] is not None
        for rec in (frame, encode, motion, embed):
            assert rec.names and set(rec.names) == {engine.torch.name}, rec.names
    finally:
        engine.close()


class SyncCount(TorchFunctionMode):
    """Counts host syncs. ``.numpy()`` etc. of what ``.cpu()`` returned is that same copy,
    not another. ``.to(device)`` is not counted: on the CPU it cannot tell the way up
    (host-to-device on CUDA, no sync) from the way down, so the engine's host copies are
    written as ``.cpu()`` / ``.numpy()``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self._host: list[torch.Tensor] = []  # kept alive so their ids stay theirs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        out = func(*args, **(kwargs or {}))
        if name in SYNCS and not (args and any(args[0] is h for h in self._host)):
            self.calls.append(name)
            if name == "cpu":
                self._host.append(out)
        return out


def counted_frames(engine, avatar, windows, extra=None):
    """(syncs, pose decodes) of each frame, counted inside its job on the engine's thread."""
    rows = []
    for w in windows:
        def job():
            before = engine.timeline.decodes
            with SyncCount() as count:
                engine._render(w, avatar)
            return len(count.calls), engine.timeline.decodes - before
        rows.append(engine.torch.call(job))
    return rows


def test_one_host_sync_per_live_frame(reduced_dir, cache, speech_wav):
    engine = make_engine(reduced_dir)
    try:
        avatar = engine.prepare(AVATAR)
        wav, _ = sf.read(speech_wav, dtype="float32")
        win = Windower(ArrayAudio(wav, 16000), engine.window_spec, 25)
        for k in range(20):  # the stream is running
            engine.render(win.window(k), avatar)
        rows = counted_frames(engine, avatar, [win.window(k) for k in range(20, 60)])
        plain = [n for n, d in rows if d == 0]
        decoding = [(n, d) for n, d in rows if d > 0]
        print("syncs per frame:", rows)
        assert plain and decoding  # both kinds of frame were met
        assert set(plain) == {1}  # the picture
        assert all(d == 1 and n == 2 for n, d in decoding)  # + the decode's rows

        # control: one more .cpu() inside the frame is seen
        real = engine.stages.motion

        def leaky(*a, **k):
            return real(*a, **k).cpu()

        engine.stages.motion = leaky
        try:
            rows = counted_frames(engine, avatar, [win.window(k) for k in range(60, 64)])
        finally:
            engine.stages.motion = real
        assert all(n == 2 + d for n, d in rows), rows
    finally:
        engine.close()


@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
def test_ten_rebuilds_stay_compiled(reduced_dir, cache, speech_wav):
    wav, _ = sf.read(speech_wav, dtype="float32")
    eager = make_engine(reduced_dir, catch_up_batch=1)
    avatar = eager.prepare(AVATAR)
    win = Windower(ArrayAudio(wav, 16000), eager.window_spec, 25)
    want = eager.render(win.window(30), avatar)
    eager.close()
    limit = torch._dynamo.config.recompile_limit
    for i in range(10):
        assert 10 > limit  # more rebuilds than one shared cache could hold
        graphs = counters["stats"]["unique_graphs"]
        engine = make_engine(reduced_dir, catch_up_batch=1, compile=True, compile_mode="default")
        try:
            av = engine.prepare(AVATAR)  # compiles batch 1 in the warm-up, on the engine's thread
            got = engine.render(win.window(30), av)
        finally:
            engine.close()
        assert counters["stats"]["unique_graphs"] - graphs >= 1, f"rebuild {i}: no compiled graph"
        assert engine.stages.frame._fn is None  # released by close()
        d = np.abs(got.astype(int) - want.astype(int))
        assert d.max() <= 3 and d.mean() < 0.05, (i, d.max(), d.mean())


@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=2)
def test_rebuild_check_catches_a_shared_cache():
    """Control: with one code object shared by every instance (the old FrameStage._run), the
    limit is hit and raises; with own_code each instance has its own cache."""

    class Stage:
        def __init__(self, own: bool, k: int) -> None:
            self.k = k  # a constant the graph bakes in: each instance needs its own graph
            fn = own_code(Stage.run) if own else Stage.run
            self.fn = torch.compile(fn.__get__(self), backend="eager", dynamic=False)

        def run(self, x):
            return x * self.k

    for k in range(4):
        assert Stage(True, k).fn(torch.ones(3))[0] == k
    with pytest.raises(Exception, match="(?i)recompile|cache.?size|limit"):
        for k in range(4):
            Stage(False, k).fn(torch.ones(3))
