"""The model fingerprint saved with a steerer: the same model gives the same fingerprint whatever the
thread count or the float dtype it was loaded in; other weights give another."""

import copy

import torch

from conftest import native
from lineas_tl.fingerprint import WEIGHTS_SCHEME, model_fingerprint


def test_same_under_any_thread_count_and_in_bfloat16():
    model = native(n_layers=1, d_model=512, d_vocab=8192)  # a 4M-value embedding: a float sum of it depends on the threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model_fingerprint(model)
        torch.set_num_threads(2)
        assert model_fingerprint(model) == one
    finally:
        torch.set_num_threads(threads)
    assert model_fingerprint(copy.deepcopy(model).to(torch.bfloat16)) == one
    assert one["weights_scheme"] == WEIGHTS_SCHEME


def test_other_weights_and_other_shapes_differ():
    a = model_fingerprint(native())
    b = model_fingerprint(native(seed=1))
    c = model_fingerprint(native(d_model=64))
    assert a["architecture"] == b["architecture"] and a["weights"] != b["weights"]
    assert c["architecture"] != a["architecture"]
