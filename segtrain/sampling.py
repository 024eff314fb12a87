"""Seeded step batches: which samples step ``s`` trains on, and under which augmentation seed.

The batch of step ``s`` is batch ``s % P`` of epoch ``s // P`` (``P`` = samples // batch; the last
incomplete batch of an epoch is dropped), each epoch's order is a permutation drawn from ``(seed, epoch)``
alone, and each sample's augmentation runs under generators seeded from ``(seed, epoch, index)``. Any
step's batch is therefore known without replaying the steps before it (exact resume) and without any state
in the DataLoader workers (the same run for any number of workers).
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import SegTrainError

# Key spaces of derive_seed, so that a permutation seed never equals a sample seed.
_PERM, _SAMPLE, _LOADER = 0, 1, 2


def derive_seed(*keys: int) -> int:
    """A 64-bit seed from integer keys alone (``SeedSequence`` mixing): no global state involved."""
    return int(np.random.SeedSequence([k % 2**64 for k in keys]).generate_state(1, np.uint64)[0])


def loader_generator(seed: int) -> torch.Generator:
    """The DataLoader's own generator (base seed of its workers): it never touches the global RNG."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, _LOADER))
    return g


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a permutation of ``range(n)`` drawn from ``(seed, epoch)`` only."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, _PERM, epoch))
    return torch.randperm(n, generator=g).tolist()


class StepBatches:
    """Batch sampler for steps ``start .. total-1`` that yields ``[(index, sample_seed), ...]`` per step.

    With ``world`` processes, process ``rank`` gets its share ``[rank::world]`` of each step's global batch
    of ``batch`` samples (the same global batch for any number of processes).

    Raises:
        SegTrainError: ``batch`` is larger than the ``n`` samples (no batch could be filled) or below 1.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
        if not 1 <= batch <= n:
            raise SegTrainError(f"batch {batch} does not fit {n} training sample(s); use a batch of 1 to {n}")
        if world < 1 or not 0 <= rank < world or batch % world:
            raise SegTrainError(f"batch {batch} does not split over {world} processes (rank {rank}); use a multiple "
                                f"of {world}")
        self.n, self.batch, self.seed, self.start, self.total = n, batch, seed, start, total
        self.rank, self.world = rank, world
        self.per_epoch = n // batch

    def position(self, step: int) -> dict:
        """Where step ``step`` (the next one to run) lies: epoch and batch within the epoch."""
        epoch, b = divmod(step, self.per_epoch)
        return {"epoch": epoch, "batch": b, "per_epoch": self.per_epoch, "train_samples": self.n,
                "seed": self.seed}

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        cached, order = None, []
        for s in range(self.start, self.total):
            epoch, b = divmod(s, self.per_epoch)
            if epoch != cached:
                cached, order = epoch, epoch_order(self.n, self.seed, epoch)
            idx = order[b * self.batch:(b + 1) * self.batch][self.rank::self.world]
            yield [(i, derive_seed(self.seed, _SAMPLE, epoch, i)) for i in idx]


@contextmanager
def seeded(seed: int):
    """Run a block with torch, NumPy (legacy global) and Python ``random`` seeded from ``seed``, and put the
    three generators back afterwards: one sample's augmentation neither reads nor disturbs the state of
    the process it runs in (the main process with ``--workers 0``, or any worker)."""
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party augmentations may use the legacy RNG
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]`` = ``dataset[index]`` drawn under :func:`seeded` ``(seed)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, s = key
        with seeded(s):
            return self.dataset[i]
