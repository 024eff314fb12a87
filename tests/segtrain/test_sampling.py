"""Seeded step batches and per-sample seeds (exact resume rests on them); class maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

T = torch.tensor
CAR, ROAD = 13, 0


def test_class_map_is_argmax_with_first_maximum_on_ties():
    from segtrain.inference import class_map

    logits = torch.randn(2, 5, 7, 9)
    logits[:, 3] = logits[:, 1]  # ties everywhere between classes 1 and 3
    logits[0, :, 0, 0] = 0.0  # an all-equal pixel: class 0
    assert torch.equal(class_map(logits), logits.argmax(1))
    assert class_map(logits)[0, 0, 0] == 0 and class_map(logits).dtype == torch.int64


def test_step_batches_are_a_function_of_seed_and_step():
    from segtrain.sampling import StepBatches, derive_seed, epoch_order

    full = list(StepBatches(5, 2, seed=7, start=0, total=7))
    assert len(full) == 7 and all(len(b) == 2 for b in full)  # 5 samples, batch 2: 2 steps per epoch
    for epoch in range(3):  # each epoch is a prefix of its own permutation (the odd sample is dropped)
        idx = [i for b in full[2 * epoch:2 * epoch + 2] for i, _ in b]
        assert idx == epoch_order(5, 7, epoch)[:4] and len(set(idx)) == 4
    assert epoch_order(5, 7, 0) != epoch_order(5, 7, 1) or epoch_order(5, 7, 1) != epoch_order(5, 7, 2)
    assert list(StepBatches(5, 2, seed=7, start=3, total=7)) == full[3:]  # resume = the tail, nothing replayed
    assert full[0][0][1] == derive_seed(7, 1, 0, full[0][0][0])  # sample seed from (seed, epoch, index)
    assert full != list(StepBatches(5, 2, seed=8, start=0, total=7))
    assert StepBatches(5, 2, 7, 0, 7).position(5) == {"epoch": 2, "batch": 1, "per_epoch": 2, "train_samples": 5,
                                                       "seed": 7}
    from segtrain.errors import SegTrainError

    with pytest.raises(SegTrainError, match="batch 8 does not fit 3"):  # said, not clamped silently
        StepBatches(3, 8, 0, 0, 2)


def test_seeded_sample_leaves_the_process_rngs_alone():
    import random

    from segtrain.sampling import seeded

    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    with seeded(42):
        a = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    with seeded(42):
        b = torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]  # noqa: NPY002


