"""Fixed head angles (engine.sadtalker yaw / pitch / roll): as the reference's --input_yaw
etc., a given angle replaces the mapped one for the driving keypoints; the others stay
audio-driven. Reduced-width fixture networks (sadtalker_parity)."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch

from vcam_talker.avatar import PreparedAvatar
from vcam_talker.engines.sadtalker.engine import SadTalkerEngine
from vcam_talker.engines.sadtalker.keypoints import head_angles, transform_keypoints
from vcam_talker.engines.sadtalker.timeline import SourceCoeffs
from vcam_talker.stream.windows import ArrayAudio, Windower

from .official_weights import sadtalker_config
from .parity_build import fixture_stages
from .weight_rule import PARITY


def test_fixed_angles_replace_the_driving_ones(speech_wav):
    stages = fixture_stages()
    inputs, outputs = np.load(PARITY / "inputs.npz"), np.load(PARITY / "outputs.npz")
    windows = torch.from_numpy(outputs["target_semantics"][:4])
    with torch.inference_mode():
        enc = stages.source.encode(torch.from_numpy(inputs["source_image"]))
        kp = enc["kp_canonical"]
        free = stages.motion(windows, kp)
        fixed = stages.motion(windows, kp, yaw=15.0, roll=-5.0)
        motion = stages.motion.mapping(windows)
        ypr = head_angles(motion, 15.0, None, -5.0)
        ref = transform_keypoints(kp, motion, yaw=15.0, roll=-5.0)
    assert torch.equal(ypr[:, 0], torch.full((4,), 15.0)) and torch.equal(ypr[:, 2], torch.full((4,), -5.0))
    assert torch.equal(ypr[:, 1], head_angles(motion)[:, 1])  # pitch stays audio-driven
    assert torch.allclose(fixed, ref) and (fixed - free).abs().max() > 1e-3

    # the engine passes the configured angles for the driving keypoints of every frame
    source = SourceCoeffs.from_row(inputs["source_coeff_3dmm"][0], full=False)
    with torch.inference_mode():
        kp_source = stages.motion(torch.from_numpy(source.source_window())[None], kp)
    data = {k: v[0].numpy() for k, v in enc.items()}
    data.update(coeff=inputs["source_coeff_3dmm"][0], kp_source=kp_source[0].numpy(),
                box=np.array([0.0, 0.0, 256.0, 256.0]), framing=np.array([[2.0, 0, 0], [0, 2.0, 0]]))
    av = PreparedAvatar(image=np.zeros((512, 512, 3), np.uint8), landmarks=np.zeros((68, 2), np.float32),
                        face_box=(0, 0, 1, 1), engine="sadtalker", sha256="", data=data)
    engine = SadTalkerEngine(sadtalker_config(yaw=15.0, roll=-5.0), stages=stages)
    calls = []
    real = stages.motion

    class Spy:
        def __call__(self, *args, **kwargs):
            calls.append(kwargs)
            return real(*args, **kwargs)

    stages.motion = Spy()
    wav, rate = sf.read(speech_wav, dtype="float32")
    win = Windower(ArrayAudio(wav, rate), engine.window_spec, engine.config.video.fps)
    frame = engine.render(win.window(30), av)
    assert frame.shape == (512, 512, 3)
    assert calls == [{"yaw": 15.0, "pitch": None, "roll": -5.0}]
