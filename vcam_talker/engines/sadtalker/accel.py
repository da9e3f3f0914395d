"""Speed switches of the per-frame generator (``engine.sadtalker``): precision, memory
format, torch.compile, and the warm-up that makes the first live frame pay none of them.

- ``precision``: float32 (default), float16 (CUDA only: CPU float16 convolutions are slow or
  missing, so it is refused there), bfloat16 (runs on both), tf32 (float32 tensors with TF32
  matmuls/convolutions: CUDA only). The legacy ``half: true`` means float16. Only the
  generator's per-frame part changes dtype; the keypoint detector, MappingNet, the keypoint
  transform and the audio nets keep float32 tensors (under ``tf32`` their matmuls and
  convolutions round through TF32 too: the switches are global), and inside the generator
  float32 islands stay (:func:`keep_float32_islands`): the dense-motion mask conv and its
  softmax, the SPADE instance-norm statistics and the final RGB conv.
- ``channels_last``: NHWC weights and activations for the 2-D part (the decoder); it pays on
  GPUs with tensor cores and rarely on a CPU: measured in benchmarks/bench_sadtalker.py.
- ``compile`` with ``compile_mode``: torch.compile of the per-frame generator call;
  ``reduce-overhead`` uses CUDA graphs. The inductor cache (kernels, autotuning) is kept on
  disk under the cache folder so a restart does not compile from scratch.
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import torch
from torch import nn

from vcam_talker.errors import EngineError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "tf32": torch.float32}


def precision_name(st) -> str:
    """The configured precision; the legacy ``half: true`` is float16."""
    return "float16" if getattr(st, "half", False) else getattr(st, "precision", "float32")


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The generator's dtype for ``name`` on ``device``; EngineError (one line) where it cannot run."""
    if name not in DTYPES:
        raise EngineError(f"engine.sadtalker.precision: must be one of {', '.join(DTYPES)}, got {name!r}")
    if name in ("float16", "tf32") and device.type != "cuda":
        field = "half" if name == "float16" else "precision"
        raise EngineError(f"engine.sadtalker.{field}: {name} needs a CUDA device; use float32 "
                          f"(or bfloat16) on {device.type}")
    if device.type == "cuda":
        # TF32 only where asked: it changes float32 results by ~1e-3 relative
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        torch.backends.cudnn.allow_tf32 = name == "tf32"
        torch.backends.cudnn.benchmark = True  # fixed shapes per size: autotuned once, at warm-up
    return DTYPES[name]


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
                 else a for a in args)


def use_channels_last(generator: nn.Module) -> None:
    """NHWC for the 2-D per-frame part: the weights of every 4-D parameter, and the inputs of
    the decoder and the layers before it (the 3-D part keeps its layout)."""
    for part in (generator.third, generator.fourth, generator.decoder):
        part.to(memory_format=torch.channels_last)
        part.register_forward_pre_hook(_to_channels_last)


def keep_float32_islands(generator: nn.Module) -> None:
    """After the generator's cast to half: the mask conv (its logits feed a softmax over K+1
    motions) and the output conv (its 3 channels are the pixels) back to float32."""
    generator.dense_motion_network.mask.float()
    generator.decoder.conv_img.float()


def compile_cache(cache_dir: Path) -> None:
    """Keep inductor's compiled kernels and autotuning results across restarts."""
    d = Path(cache_dir) / "torch_inductor"
    d.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(d))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")


def own_code(fn):
    """A copy of function ``fn`` with its own code object. Dynamo keeps its compiled graphs
    on the code object, so every engine built on a shared function would add entries to one
    cache until the recompile limit (8) sends it eager; an own copy's cache dies with it."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def compile_fn(fn, mode: str):
    """torch.compile with fixed shapes (one graph per batch size) of an own copy of ``fn``
    (:func:`own_code`); ``mode``: default, reduce-overhead (CUDA graphs) or max-autotune."""
    return torch.compile(own_code(fn), dynamic=False, mode=None if mode == "default" else mode)
