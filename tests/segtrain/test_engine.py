"""engine.fit: trains the model it is given (fresh or to fine-tune), calls its hooks at the right steps,
leaves the run unchanged by evaluations, and resumes bit for bit from a checkpoint."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from segtrain import checkpoint
from segtrain.config import TrainConfig
from segtrain.engine import FitResult, Hooks, fit, seed_everything
from segtrain.errors import SegTrainError


class Tiny(nn.Module):
    """Conv-BN-ReLU-Dropout-Conv: BatchNorm buffers and dropout draws make resume mistakes visible."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.3))
        self.head = nn.Conv2d(8, k, 1)
        self.aux = nn.Conv2d(8, k, 1)

    def forward(self, x):
        f = self.body(x)
        return {"out": self.head(f), "aux": self.aux(f)}


class Pairs(Dataset):
    """``n`` fixed 16x16 images; the augmentation (flip, noise) draws from torch's RNG, as train_transform."""

    def __init__(self, n: int = 5):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, 3, (n, 16, 16), generator=g)
        self.images = torch.stack([self.labels.float()] * 3, 1) + 0.1 * torch.randn(n, 3, 16, 16, generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img, lab = self.images[i], self.labels[i]
        if float(torch.rand(())) < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        return img + 0.05 * torch.randn_like(img), lab, f"s{i}"


def cfg(**kw) -> TrainConfig:
    base = {"iters": 6, "batch": 2, "lr": 0.05, "device": "cpu", "workers": 0, "seed": 3, "arch": "pspnet",
            "backbone": "resnet18", "ckpt_every": 10**6, "log_every": 1}
    return TrainConfig(**{**base, **kw})


def fresh(seed: int = 0) -> Tiny:
    seed_everything(seed)
    return Tiny()


def params(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_trains_the_model_it_is_given():
    model = fresh()
    before = params(model)
    res = fit(model, Pairs(), cfg())
    assert isinstance(res, FitResult) and res.model is model  # trained in place, not rebuilt
    assert (res.step, res.total, res.finished, res.device.type) == (6, 6, True, "cpu")
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])
    assert model.training


def test_fine_tuning_starts_from_the_given_weights():
    trained = fresh()
    fit(trained, Pairs(), cfg(iters=4))
    start = {k: v.detach().clone() for k, v in trained.named_parameters()}
    tuned = copy.deepcopy(trained)
    fit(tuned, Pairs(3), cfg(iters=2, lr=1e-9, optimizer="adamw", seed=9))  # another dataset, optimizer, seed
    for k, v in tuned.named_parameters():  # a negligible lr: the weights stay where training left them
        assert torch.allclose(v, start[k], atol=1e-6), k
    scratch = fresh(1)
    assert not torch.allclose(dict(scratch.named_parameters())["head.weight"], start["head.weight"])


def test_hooks_are_called_at_the_right_steps():
    calls = {"step": [], "log": [], "eval": [], "ckpt": []}
    hooks = Hooks(
        on_step=lambda s, total, rec: (calls["step"].append((s, total)), rec and calls["log"].append(rec["step"])),
        on_eval=lambda m, s, sec: calls["eval"].append((s, m.training, sec >= 0)),
        on_checkpoint=lambda st: calls["ckpt"].append((st["step"], sorted(st))),
    )
    fit(fresh(), Pairs(), cfg(iters=7, log_every=3, eval_every=3, ckpt_every=2), hooks)
    assert calls["step"] == [(s, 7) for s in range(1, 8)]
    assert calls["log"] == [3, 6, 7]  # every --log-every and the last
    assert [e[0] for e in calls["eval"]] == [3, 6, 7] and all(e[2] for e in calls["eval"])
    assert [c[0] for c in calls["ckpt"]] == [2, 4, 6, 7]  # every --ckpt-every and at the end
    assert calls["ckpt"][0][1] == ["model", "optimizer", "rng", "sampler", "scaler", "step"]
    calls = {k: [] for k in calls}
    res = fit(fresh(), Pairs(), cfg(iters=7, log_every=3, eval_every=3, ckpt_every=2, stop_after=5), hooks)
    assert (res.step, res.finished) == (5, False)
    assert calls["log"] == [3, 5] and [e[0] for e in calls["eval"]] == [3]
    assert [c[0] for c in calls["ckpt"]] == [2, 4, 5]


def test_an_evaluation_hook_does_not_change_the_run():
    def noisy_eval(model, step, seconds):  # uses every RNG and switches to eval mode, as a real evaluation
        model.eval()
        torch.rand(100)
        model(torch.zeros(1, 3, 8, 8))

    a = fresh()  # dropout draws from the generator as fresh() leaves it: build each model just before its fit
    fit(a, Pairs(), cfg())
    b = fresh()
    fit(b, Pairs(), cfg(eval_every=2), Hooks(on_eval=noisy_eval))
    assert same(params(a), params(b))


def test_resume_from_a_saved_checkpoint_is_bit_identical(tmp_path):
    straight = fresh()
    fit(straight, Pairs(), cfg())  # 5 samples at batch 2: 2 steps per epoch, the run crosses 3 epochs
    first = fresh()
    saved = []
    fit(first, Pairs(), cfg(stop_after=3), Hooks(on_checkpoint=lambda st: saved.append(st)))
    checkpoint.save(tmp_path / "last.pt", {**saved[-1], "config": cfg().to_dict(), "num_classes": 3})
    state = checkpoint.load(tmp_path / "last.pt")
    assert state["step"] == 3 and state["sampler"]["epoch"] == 1 and state["sampler"]["batch"] == 1
    torch.manual_seed(123)  # the process's generators are whatever they are: the checkpoint's are restored
    resumed = fresh(7)  # another initialisation: the checkpoint's weights replace it
    res = fit(resumed, Pairs(), cfg(), resume=state)
    assert res.step == 6
    assert same(params(straight), params(resumed))


def test_fit_refuses_what_cannot_run():
    with pytest.raises(SegTrainError, match=r"--batch 8 is larger than the training data \(5 samples\)"):
        fit(fresh(), Pairs(), cfg(batch=8))
    saved = []
    fit(fresh(), Pairs(), cfg(iters=1), Hooks(on_checkpoint=saved.append))
    with pytest.raises(SegTrainError, match="has 4 samples, the checkpoint's run trained on 5"):
        fit(fresh(), Pairs(4), cfg(), resume=saved[-1])
