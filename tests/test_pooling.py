import pytest
import torch

from lineas_tl.pooling import pool


def test_mean_ignores_padding():
    act = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    out = pool(act, (3,), 2, mask, "mean")
    torch.testing.assert_close(out[0], act[0, :2].mean(0))
    torch.testing.assert_close(out[1], act[1, 1:].mean(0))


def test_last_takes_last_real_token_with_either_padding_side():
    act = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    out = pool(act, (3,), 2, mask, "last")
    torch.testing.assert_close(out, torch.stack([act[0, 1], act[1, 3]]))


def test_all_returns_one_row_per_real_token():
    act = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    assert pool(act, (3,), 2, mask, "all").shape == (5, 3)


def test_head_features_and_channel_first_layouts():
    z = torch.randn(2, 5, 4, 8)  # [batch, pos, head, d_head]
    assert pool(z, (4, 8), 2, None, "mean").shape == (2, 32)
    img = torch.randn(2, 6, 3, 3)  # [batch, channel, h, w]
    torch.testing.assert_close(pool(img, (6,), 1), img.mean(dim=(2, 3)))


def test_bad_pooling_or_mask():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.randn(1, 2, 3), (3,), 2, None, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not fit"):
        pool(torch.randn(1, 2, 3), (3,), 2, torch.ones(1, 5), "mean")
