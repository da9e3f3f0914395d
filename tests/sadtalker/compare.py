"""One comparison for every parity test: prints the largest difference, then asserts."""

from __future__ import annotations

import numpy as np
import torch


def assert_close(name: str, ours, ref: np.ndarray, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """ours (array or tensor) against a reference array, with numpy's allclose rule."""
    got = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape}"
    d = np.abs(got.astype(np.float64) - ref)
    where = np.unravel_index(d.argmax(), d.shape) if d.size else ()
    print(f"{name}: max|diff| {d.max() if d.size else 0:.3g} at {tuple(int(i) for i in where)}, mean {d.mean() if d.size else 0:.3g}")
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=name)
