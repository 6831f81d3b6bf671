"""NT-Xent: loop/NumPy references, analytic values, accuracy, and exactness under 2-process DDP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ddp_utils import run_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from audio_ssl.losses import NTXentLoss, NTXentOutput, nt_xent
from audio_ssl.utils.distributed import all_gather_no_grad, gather_with_grad, is_dist, rank, world_size

# ----------------------------------------------------------------------------- references


def reference_numpy(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """SimCLR NT-Xent written out anchor by anchor with NumPy."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    two_n = len(z)
    losses = []
    for a in range(two_n):
        pos = (a + two_n // 2) % two_n
        denom = sum(math.exp(z[a] @ z[k] / temperature) for k in range(two_n) if k != a)
        losses.append(-math.log(math.exp(z[a] @ z[pos] / temperature) / denom))
    return float(np.mean(losses))


def reference_torch(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Same loop as ``reference_numpy`` in torch ops, so that autograd gives reference gradients."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    two_n = z.shape[0]
    total = z.new_zeros(())
    for a in range(two_n):
        pos = (a + two_n // 2) % two_n
        others = [k for k in range(two_n) if k != a]
        denom = torch.stack([torch.exp(z[a] @ z[k] / temperature) for k in others]).sum()
        total = total - torch.log(torch.exp(z[a] @ z[pos] / temperature) / denom)
    return total / two_n


def reference_accuracy(z1: torch.Tensor, z2: torch.Tensor, k: int) -> float:
    """Fraction of anchors whose positive is among the k most similar other projections."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    two_n = z.shape[0]
    hits = 0
    for a in range(two_n):
        pos = (a + two_n // 2) % two_n
        others = [j for j in range(two_n) if j != a]
        order = sorted(others, key=lambda j: -(z[a] @ z[j]).item())
        hits += pos in order[:k]
    return hits / two_n


# ----------------------------------------------------------------------------- single process


@pytest.mark.parametrize("n", [1, 2, 5, 12])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_matches_references_values_and_gradients(n: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(100 * n + int(temperature * 100))
    z1 = (torch.randn(n, 6, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    z2 = (torch.randn(n, 6, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()

    loss = nt_xent(z1, z2, temperature)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))

    ref = reference_torch(z1, z2, temperature)
    r1, r2 = torch.autograd.grad(ref, (z1, z2))

    assert loss.item() == pytest.approx(
        reference_numpy(z1.detach().numpy(), z2.detach().numpy(), temperature), rel=1e-10
    )
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, r1, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(g2, r2, rtol=1e-8, atol=1e-10)
    if n > 1:  # the gradient is not trivially zero
        assert g1.abs().max() > 1e-3


def test_float32_matches_float64_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=gen), torch.randn(8, 16, generator=gen)
    loss = nt_xent(z1, z2, 0.1)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_numpy(z1.numpy(), z2.numpy(), 0.1), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_identical_embeddings_give_log_2n_minus_1(n: int, temperature: float) -> None:
    v = torch.randn(1, 10, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    z1 = v.repeat(n, 1)
    # All 2N - 1 candidates have the same logit: softmax is uniform.
    assert nt_xent(z1, z1.clone(), temperature).item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_ties_count_against_the_positive(n: int) -> None:
    # Axis-aligned vectors give bit-exact equal similarities (a GEMM may round random ones differently).
    z1 = torch.zeros(n, 4)
    z1[:, 0] = 2.0
    out = nt_xent(z1, z1.clone(), 0.5, return_accuracy=True)
    assert out.loss.item() == pytest.approx(math.log(2 * n - 1), abs=1e-6)
    # The positive is placed last among 2N - 1 equal candidates.
    assert out.top1.item() == (1.0 if n == 1 else 0.0)
    assert out.top5.item() == (1.0 if 2 * n - 1 <= 5 else 0.0)


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_perfect_positives_orthogonal_negatives_analytic(n: int, temperature: float) -> None:
    # z1[i] and z2[i] point along e_i (arbitrary positive scales): positive cosine 1, all 2N - 2
    # negatives cosine 0, so each anchor has loss -log(e^{1/t} / (e^{1/t} + 2N - 2)).
    eye = torch.eye(n + 2, dtype=torch.float64)[:n]
    z1 = eye * torch.rand(n, 1, dtype=torch.float64).add(0.5)
    z2 = eye * torch.rand(n, 1, dtype=torch.float64).add(2.0)
    out = nt_xent(z1, z2, temperature, return_accuracy=True)
    expected = math.log1p((2 * n - 2) * math.exp(-1.0 / temperature))
    assert out.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert out.top1.item() == 1.0 and out.top5.item() == 1.0


def test_invariant_to_row_scaling() -> None:
    z1, z2 = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    scales = torch.rand(6, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(nt_xent(z1 * scales, z2, 0.3), nt_xent(z1, z2, 0.3))


def test_swapping_views_leaves_loss_unchanged() -> None:
    z1, z2 = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z2, z1, 0.3), nt_xent(z1, z2, 0.3))


@pytest.mark.parametrize("n", [2, 4, 9])
def test_accuracy_matches_reference_ranking(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    base = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    z1 = base + 0.8 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    z2 = base + 0.8 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    out = nt_xent(z1, z2, 0.5, return_accuracy=True)
    assert isinstance(out, NTXentOutput)
    assert out.top1.item() == pytest.approx(reference_accuracy(z1, z2, 1))
    assert out.top5.item() == pytest.approx(reference_accuracy(z1, z2, 5))
    assert not out.top1.requires_grad


def test_module_matches_functional() -> None:
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    loss_fn = NTXentLoss(temperature=0.2)
    assert "temperature=0.2" in repr(loss_fn)
    torch.testing.assert_close(loss_fn(z1, z2), nt_xent(z1, z2, 0.2))
    torch.testing.assert_close(loss_fn(z1, z2, return_accuracy=True).loss, nt_xent(z1, z2, 0.2))


def test_low_precision_inputs_computed_in_float32() -> None:
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    loss = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, nt_xent(z1.bfloat16().float(), z2.bfloat16().float(), 0.1))


def test_autocast_does_not_lower_similarity_precision() -> None:
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z1, z2, 0.05)
    # bfloat16 similarities would be off by ~0.1 in the logits at this temperature.
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_numpy(z1.numpy(), z2.numpy(), 0.05), rel=1e-5)


def test_single_process_distributed_helpers_are_identities() -> None:
    assert not is_dist() and world_size() == 1 and rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    y = all_gather_no_grad(x)
    assert torch.equal(y, x) and not y.requires_grad


@pytest.mark.parametrize(
    ("z1", "z2", "temperature", "match"),
    [
        (torch.randn(4, 8), torch.randn(3, 8), 0.5, "same shape"),
        (torch.randn(4), torch.randn(4), 0.5, r"\[N, D\]"),
        (torch.randn(0, 8), torch.randn(0, 8), 0.5, "empty"),
        (torch.randn(4, 8), torch.randn(4, 8), 0.0, "temperature"),
        (torch.randn(4, 8), torch.randn(4, 8), float("nan"), "temperature"),
    ],
)
def test_invalid_inputs_raise(z1: torch.Tensor, z2: torch.Tensor, temperature: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        nt_xent(z1, z2, temperature)


def test_module_rejects_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=-1.0)


# ----------------------------------------------------------------------------- two gloo processes

WORLD = 2
N_LOCAL = 5
D_IN, D_OUT = 7, 4
TEMPERATURE = 0.3


def _ddp_worker(rank_: int, world: int, x1_all: torch.Tensor, x2_all: torch.Tensor, state: dict) -> dict:
    """Each rank takes its own slice of the data; a shared linear layer is wrapped in real DDP."""
    torch.set_num_threads(1)
    sl = slice(rank_ * N_LOCAL, (rank_ + 1) * N_LOCAL)
    x1 = x1_all[sl].clone().requires_grad_()
    x2 = x2_all[sl].clone().requires_grad_()

    # gather helpers: values in rank order, and backward sums every rank's gradient into the owner.
    gathered = gather_with_grad(x1)
    weight = torch.arange(gathered.numel(), dtype=x1.dtype).reshape(gathered.shape) * (rank_ + 1)
    (gx1,) = torch.autograd.grad((gathered * weight).sum(), x1)
    no_grad = all_gather_no_grad(x1)

    layer = nn.Linear(D_IN, D_OUT).double()
    layer.load_state_dict(state)
    model = DistributedDataParallel(layer)
    z = model(torch.cat([x1, x2]))  # one forward for both views, as a SimCLR step does
    z1, z2 = z[:N_LOCAL], z[N_LOCAL:]
    out = nt_xent(z1, z2, TEMPERATURE, return_accuracy=True)
    out.loss.backward()  # DDP all-reduces and averages the parameter gradients here

    local_only = nt_xent(z1.detach(), z2.detach(), TEMPERATURE, gather_distributed=False)
    return {
        "world": world,
        "gathered": gathered.detach(),
        "gather_grad": gx1,
        "no_grad": no_grad,
        "no_grad_requires_grad": no_grad.requires_grad,
        "loss": out.loss.detach(),
        "top1": out.top1,
        "top5": out.top5,
        "x1_grad": x1.grad,
        "x2_grad": x2.grad,
        "param_grads": {k: p.grad.clone() for k, p in layer.named_parameters()},
        "local_only": local_only,
        "is_dist": is_dist(),
    }


@pytest.mark.ddp
def test_two_gloo_processes_equal_one_process_on_concatenated_batch() -> None:
    gen = torch.Generator().manual_seed(7)
    n_global = WORLD * N_LOCAL
    base = torch.randn(n_global, D_IN, generator=gen, dtype=torch.float64)
    x1_all = base + 0.5 * torch.randn(n_global, D_IN, generator=gen, dtype=torch.float64)
    x2_all = base + 0.5 * torch.randn(n_global, D_IN, generator=gen, dtype=torch.float64)
    layer = nn.Linear(D_IN, D_OUT).double()
    state = {k: v.clone() for k, v in layer.state_dict().items()}

    results = run_distributed(_ddp_worker, world_size=WORLD, args=(x1_all, x2_all, state), timeout_s=60)

    # One process on the concatenated batch.
    x1 = x1_all.clone().requires_grad_()
    x2 = x2_all.clone().requires_grad_()
    z = layer(torch.cat([x1, x2]))
    ref = nt_xent(z[:n_global], z[n_global:], TEMPERATURE, return_accuracy=True)
    ref.loss.backward()

    for r, res in enumerate(results):
        sl = slice(r * N_LOCAL, (r + 1) * N_LOCAL)
        assert res["is_dist"] and res["world"] == WORLD
        # gather_with_grad / all_gather_no_grad
        torch.testing.assert_close(res["gathered"], x1_all)
        torch.testing.assert_close(res["no_grad"], x1_all)
        assert not res["no_grad_requires_grad"]
        w = torch.arange(n_global * D_IN, dtype=torch.float64).reshape(n_global, D_IN)
        summed_weight = sum(w * (q + 1) for q in range(WORLD))  # each rank weighs the gather by (q + 1)
        torch.testing.assert_close(res["gather_grad"], summed_weight[sl])
        # Input gradients: rank r holds d(sum_q L_q)/dx_r; DDP's 1/W averaging makes it the global gradient.
        torch.testing.assert_close(res["x1_grad"] / WORLD, x1.grad[sl], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res["x2_grad"] / WORLD, x2.grad[sl], rtol=1e-9, atol=1e-12)
        # Parameter gradients after DDP averaging equal the single-process gradients.
        for name, p in layer.named_parameters():
            torch.testing.assert_close(res["param_grads"][name], p.grad, rtol=1e-9, atol=1e-12)
        # gather_distributed=False: each rank only contrasts against its own batch.
        zr = layer(torch.cat([x1_all[sl], x2_all[sl]])).detach()
        torch.testing.assert_close(res["local_only"], nt_xent(zr[:N_LOCAL], zr[N_LOCAL:], TEMPERATURE))

    # Each rank averages over its own anchors; the mean over ranks is the global loss and accuracy.
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), ref.loss.detach())
    torch.testing.assert_close(torch.stack([r["top1"] for r in results]).mean(), ref.top1)
    torch.testing.assert_close(torch.stack([r["top5"] for r in results]).mean(), ref.top5)
    assert not torch.allclose(results[0]["loss"], results[1]["loss"])  # ranks really had different data
    assert x1.grad.abs().max() > 1e-3
