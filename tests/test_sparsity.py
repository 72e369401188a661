import math

import pytest
import torch

from worker.engine.sparsity import SparseParam, density_at, lr_at, target_nonzeros, topk_project_


def test_topk_projection_keeps_exactly_k_largest():
    torch.manual_seed(0)
    w = torch.randn(32, 16)
    ref = w.clone()
    topk_project_(w, 50)
    assert int((w != 0).sum()) == 50
    kept = ref.abs()[w != 0]
    dropped = ref.abs()[w == 0]
    assert kept.min() >= dropped.max()
    assert torch.equal(w[w != 0], ref[w != 0])  # kept values unchanged


@pytest.mark.parametrize("min_dim", [0, 1])
def test_topk_projection_minimum_per_neuron(min_dim):
    torch.manual_seed(1)
    w = torch.randn(24, 20)
    w[3] *= 1e-3  # a row (and column) that the global top-k alone would empty
    w[:, 5] *= 1e-3
    k = 4 * w.shape[1 - min_dim] + 10
    topk_project_(w, k, min_per=4, min_dim=min_dim)
    assert int((w != 0).sum()) == k
    per_slice = (w != 0).sum(dim=min_dim)
    assert int(per_slice.min()) >= 4


@pytest.mark.parametrize("min_dim", [None, 0, 1])
def test_topk_projection_kernel_matches_the_torch_path(min_dim):
    """The CPU kernel (contiguous float32) and the torch path (here: a transposed view) zero the same
    entries, ties and already-zero entries included."""
    torch.manual_seed(2)
    w = torch.randn(48, 40)
    w[w.abs() < 0.5] = 0.0  # many zeros, as after earlier projections
    w[7, :6] = w[7, 6]  # ties
    fast, slow = w.clone(), w.T.contiguous().T  # same values; the second is not contiguous
    assert fast.is_contiguous() and not slow.is_contiguous()
    for k in (30, 4 * 40 + 3, 900):
        topk_project_(fast, k, 4, min_dim)
        topk_project_(slow, k, 4, min_dim)
        assert torch.equal(fast, slow)


def test_target_nonzeros_never_below_forced_minimum():
    p = torch.nn.Parameter(torch.zeros(64, 32))
    sp = SparseParam("x.fc_in.weight", p, "weight", 1)
    assert target_nonzeros(sp, 1 / 1024, 4) == 4 * 64
    assert target_nonzeros(sp, 0.5, 4) == 1024


def test_l0_anneal_is_linear_between_1_and_50_percent():
    total, target = 1000, 0.1
    assert density_at(0, total, target) == 1.0
    assert density_at(10, total, target) == 1.0
    assert density_at(500, total, target) == pytest.approx(target)
    assert density_at(900, total, target) == pytest.approx(target)
    mid = (10 + 500) / 2
    assert density_at(int(mid), total, target) == pytest.approx(1 + (target - 1) * (mid - 10) / 490)


def test_sharkfin_lr():
    total, base, target = 1000, 1e-2, 1 / 16
    # warmup over 1 % of training
    assert lr_at(0, total, base, 0.01, 1.0, 1.0) == pytest.approx(base / 10)
    assert lr_at(9, total, base, 0.01, 1.0, 1.0) == pytest.approx(base)
    # linear decay to zero
    assert lr_at(505, total, base, 0.01, 1.0, 1.0) == pytest.approx(base * 495 / 990)
    assert lr_at(999, total, base, 0.01, 1.0, 1.0) == pytest.approx(base / 990)
    # multiplied by sqrt(target L0 / current L0): rises as the model sparsifies
    d = density_at(200, total, target)
    assert lr_at(200, total, base, 0.01, d, target) == pytest.approx(base * 800 / 990 * math.sqrt(target / d))
    assert lr_at(600, total, base, 0.01, target, target) == pytest.approx(base * 400 / 990)
