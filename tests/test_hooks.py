"""The hook objects: what TransformerLens sees of them when it attaches them."""

import torch

from lineas_tl.hooks import FitThenSteer, GenerationPositions, PoolingRecorder, SteeringHook
from lineas_tl.maps import AffineMap


def test_hook_reprs_format_no_tensor() -> None:
    """TransformerLens takes a hook's repr every time it attaches it (each forward call of a fit):
    it must not print masks, stores or maps."""
    mask = torch.ones(32, 40, dtype=torch.long)
    site = "blocks.0.hook_resid_post"
    recorder = PoolingRecorder(site, None, "mean", mask, {"x": torch.randn(8, 4)})
    assert repr(recorder) == f"PoolingRecorder({site!r})"
    assert repr(FitThenSteer(site, None, "mean", mask, lambda s, x: AffineMap((4,)))) == f"FitThenSteer({site!r})"
    tracker = GenerationPositions(5, left_pad=torch.zeros(32, dtype=torch.long))
    assert repr(SteeringHook(AffineMap((4,)), tracker=tracker)) == "SteeringHook()"
    assert repr(tracker) == "GenerationPositions()"
