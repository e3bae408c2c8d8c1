"""The trained digits diffusion model: judges, cache mechanics, and steering measured by ground truth.

The steering test trains a reduced recipe (500 steps, ~1.5 min on a busy 2-core CPU, then cached
in the user cache like the SmolLM2 test) that has learned the colours but not yet the digit shapes,
so it checks the colour concept only; the full recipe's numbers are in the tutorial and the report.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lineas_tl import HookedSteerer
from lineas_tl.diffusers import HookedPipeline
from lineas_tl.diffusion.digits import (
    COLOURS,
    FIT_TEMPLATES,
    DigitsConfig,
    DigitsJudge,
    DigitsPipeline,
    caption,
    colourise,
    digit_images,
    evaluate_colour_steering,
    load_digits_pipeline,
    to_array,
)

TEST_CONFIG = DigitsConfig(steps=500, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def judge() -> DigitsJudge:
    return DigitsJudge()


def test_judges_read_real_coloured_digits(judge):
    assert judge.accuracy_ > 0.93  # held-out sklearn digits
    grey, labels = digit_images()
    colour = torch.arange(len(grey)) % 3
    images = colourise(grey, colour).permute(0, 2, 3, 1).numpy()  # [n, 8, 8, 3] in [0, 1]
    shares = judge.colour_shares(images)
    assert shares.shape == (len(grey), 3)
    np.testing.assert_allclose(shares.sum(1), 1.0)  # every real digit has ink
    assert (shares.argmax(1) == colour.numpy()).all()  # the dominant colour is the drawn one
    assert (judge.digits(images) == labels.numpy()).mean() > 0.95  # colour does not fool the classifier
    black = np.zeros((2, 8, 8, 3), dtype=np.float32)
    assert (judge.colour_shares(black) == 0).all()
    # upscaled images are judged at 8x8
    assert (judge.digits(np.repeat(np.repeat(images[:50], 2, 1), 2, 2)) == labels[:50].numpy()).mean() > 0.9


def test_captions_and_conversions():
    assert caption("red", 7) == "a red seven"
    assert caption("blue", 3, 1) == "the digit three in blue ink"
    with pytest.raises(ValueError, match="unknown colour"):
        caption("purple", 1)
    pil = DigitsPipeline.numpy_to_pil(np.ones((2, 8, 8, 3), dtype=np.float32) * 0.5)
    arr = to_array(pil)
    assert arr.shape == (2, 8, 8, 3) and np.allclose(arr, 128 / 255)
    assert to_array(torch.zeros(2, 3, 8, 8)).shape == (2, 8, 8, 3)


def test_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    config = DigitsConfig(steps=3, batch_size=4)
    first = load_digits_pipeline(config, cache_dir=tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"digits-{config.key()}.json", f"digits-{config.key()}.safetensors"]  # no temp files left
    assert first.training_record["from_cache"] is None
    assert json.loads((tmp_path / files[0]).read_text())["config"]["steps"] == 3

    from lineas_tl.diffusion import digits

    monkeypatch.setattr(digits, "train_digits_pipeline", lambda *a, **k: pytest.fail("retrained despite the cache"))
    second = load_digits_pipeline(config, cache_dir=tmp_path)
    assert second.training_record["from_cache"]
    for a, b in zip(first.unet.state_dict().values(), second.unet.state_dict().values()):
        assert torch.equal(a, b)
    image = second("a red seven", generator=torch.Generator().manual_seed(0), num_inference_steps=2).images[0]
    assert image.size == (8, 8)
    assert DigitsConfig(steps=4).key() != config.key()  # another recipe, another cache entry


@pytest.mark.slow
def test_removing_red_lowers_the_red_share_and_spares_other_colours(judge):
    pipe = load_digits_pipeline(TEST_CONFIG, progress=False)  # user cache: fast after the first run
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    hooked = HookedPipeline(pipe, num_inference_steps=10, guidance_scale=1.0)
    others = [c for c in COLOURS if c != "red"]
    source = [caption("red", d, t) for t in FIT_TEMPLATES for d in range(10)]
    target = [caption(others[(d + t) % 2], d, t) for t in FIT_TEMPLATES for d in range(10)]
    steerer = HookedSteerer(hooked).fit(source, target, steps=60, lr=2e-2, progress=False)
    res = evaluate_colour_steering(steerer, judge, "red", seeds=(0, 1))
    print({k: round(v, 3) for k, v in res.items()})
    assert res["concept_share_unsteered"] > 0.8  # the model draws red when asked
    assert res["concept_share_steered"] < 0.5 * res["concept_share_unsteered"]  # removed on held-out prompts
    assert res["other_mae"] < 0.5 * res["other_mae_seed"]  # other prompts: far less change than a new seed
    assert res["other_colour_acc_steered"] >= res["other_colour_acc_unsteered"] - 0.05
    assert res["induced_share"] > res["other_share_unsteered"] + 0.3  # the inverse map induces red
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    hooked.remove_hook_points()
