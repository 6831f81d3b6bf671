"""Batch augmentations: train/eval behaviour, per-example randomness, bounds and reference maths."""

import pytest
import torch
import torch.nn.functional as F

from audio_ssl.features.augment import Mixup, RandomGain, RandomTimeShift, SpecAugment, mix_batch


def _masked_runs(mask_1d: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    runs, current = [], 0
    for value in mask_1d.tolist():
        if value:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    if current:
        runs.append(current)
    return runs


# ----------------------------------------------------------------------------------------- SpecAugment


def test_specaugment_eval_is_identity():
    aug = SpecAugment().eval()
    x = torch.randn(4, 1, 64, 100)
    assert aug(x) is x


def test_specaugment_frequency_masks_per_example_and_bounded():
    torch.manual_seed(0)
    aug = SpecAugment(freq_mask=10, time_mask=0, mask_value=0.0).train()
    x = torch.rand(64, 1, 40, 50) + 1.0  # strictly positive, so 0 marks a masked cell
    out = aug(x)
    masked = out == 0
    # Frequency masks cover whole rows: constant along time.
    assert torch.equal(masked, masked[..., :1].expand_as(masked))
    rows = masked[:, 0, :, 0]  # [B, F]
    widths = []
    for row in rows:
        runs = _masked_runs(row)
        assert len(runs) <= 1  # one contiguous mask
        widths.append(runs[0] if runs else 0)
    assert max(widths) <= 10
    assert len(set(widths)) > 3  # widths vary per example
    assert len({tuple(r.tolist()) for r in rows}) > 10  # positions vary per example
    assert torch.equal(out[~masked], x[~masked])


def test_specaugment_time_masks_per_example_and_bounded():
    torch.manual_seed(1)
    aug = SpecAugment(freq_mask=0, time_mask=20, num_time_masks=2, mask_value=0.0).train()
    x = torch.rand(64, 1, 16, 100) + 1.0
    masked = aug(x) == 0
    assert torch.equal(masked, masked[..., :1, :].expand_as(masked))  # whole columns
    cols = masked[:, 0, 0, :]
    assert int(cols.sum(dim=1).max()) <= 2 * 20
    for col in cols:
        assert all(run <= 2 * 20 for run in _masked_runs(col))
    assert len({tuple(c.tolist()) for c in cols}) > 10


def test_specaugment_max_time_proportion():
    torch.manual_seed(2)
    aug = SpecAugment(freq_mask=0, time_mask=80, mask_value=0.0, max_time_proportion=0.1).train()
    masked = aug(torch.rand(64, 1, 8, 50) + 1.0) == 0
    assert int(masked[:, 0, 0, :].sum(dim=1).max()) <= 5


def test_specaugment_mean_fill():
    torch.manual_seed(3)
    aug = SpecAugment(freq_mask=20, time_mask=30).train()
    x = torch.randn(8, 1, 32, 60) * 3 + torch.arange(8.0).view(8, 1, 1, 1)
    # Re-seed so the mask drawn inside forward can be reproduced with keep_mask.
    torch.manual_seed(4)
    out = aug(x)
    torch.manual_seed(4)
    keep = aug.keep_mask(x).bool()
    assert (~keep).any()
    mean = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    torch.testing.assert_close(out[~keep], mean[~keep])
    torch.testing.assert_close(out[keep], x[keep])


def test_specaugment_bad_input():
    with pytest.raises(ValueError, match=r"\[B, C, F, T\]"):
        SpecAugment()(torch.randn(2, 64, 100))
    with pytest.raises(ValueError, match="mask_value"):
        SpecAugment(mask_value="median")


# ----------------------------------------------------------------------------------------------- Mixup


def test_mix_batch_values():
    x = torch.randn(5, 1, 4, 6)
    y = torch.tensor([0, 1, 2, 2, 3])
    perm = torch.tensor([4, 3, 2, 1, 0])
    mixed, soft = mix_batch(x, y, 4, 0.7, perm)
    torch.testing.assert_close(mixed, 0.7 * x + 0.3 * x[perm])
    expected = torch.zeros(5, 4)
    for i in range(5):
        expected[i, y[i]] += 0.7
        expected[i, y[perm[i]]] += 0.3
    torch.testing.assert_close(soft, expected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mixup_soft_targets_and_loss(label_smoothing):
    torch.manual_seed(0)
    mixup = Mixup(alpha=0.4, prob=1.0).train()
    num_classes = 6
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, num_classes, (16,))
    mixed, soft = mixup(x, y, num_classes)
    lam, perm = mixup.last_lam, mixup.last_perm
    assert perm is not None and 0.0 < lam < 1.0
    assert soft.shape == (16, num_classes) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(16))
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[perm])

    logits = torch.randn(16, num_classes)
    loss = F.cross_entropy(logits, soft, label_smoothing=label_smoothing)

    # By hand: smoothed one-hot targets, -sum(t * log_softmax) averaged over the batch.
    logp = logits.log_softmax(dim=1)

    def ce(targets: torch.Tensor) -> torch.Tensor:
        t = F.one_hot(targets, num_classes).float() * (1 - label_smoothing) + label_smoothing / num_classes
        return -(t * logp).sum(dim=1).mean()

    expected = lam * ce(y) + (1 - lam) * ce(y[perm])
    torch.testing.assert_close(loss, expected)


def test_mixup_prob_zero_and_eval_never_mix():
    x = torch.randn(8, 1, 4, 4)
    y = torch.arange(8) % 3
    for mixup in (Mixup(prob=0.0).train(), Mixup(prob=1.0).eval()):
        for _ in range(20):
            out, soft = mixup(x, y, 3)
            assert out is x
            assert torch.equal(soft, F.one_hot(y, 3).float())
            assert mixup.last_perm is None and mixup.last_lam == 1.0


def test_mixup_probability():
    torch.manual_seed(0)
    mixup = Mixup(prob=0.3).train()
    x, y = torch.randn(4, 3), torch.arange(4)
    mixed = sum(mixup(x, y, 4)[0] is not x for _ in range(400))
    assert 80 <= mixed <= 160  # Binomial(400, 0.3): mean 120, sd ~9


def test_mixup_bad_targets():
    with pytest.raises(ValueError, match="dtype long"):
        Mixup()(torch.randn(4, 3), torch.zeros(4, 3), 3)
    with pytest.raises(ValueError, match="batch sizes"):
        Mixup()(torch.randn(4, 3), torch.zeros(5, dtype=torch.long), 3)


# ------------------------------------------------------------------------------------------ RandomGain


def test_random_gain_range_and_per_example():
    torch.manual_seed(0)
    aug = RandomGain(min_db=-6.0, max_db=6.0).train()
    wave = torch.randn(64, 1000)
    out = aug(wave)
    ratio = out / wave
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # one gain per example
    gain_db = 20 * torch.log10(ratio[:, 0])
    assert gain_db.min() >= -6.0 - 1e-4 and gain_db.max() <= 6.0 + 1e-4
    assert gain_db.std() > 2.0  # U(-6, 6) has sd 3.46


def test_random_gain_p_and_eval():
    wave = torch.randn(8, 100)
    assert torch.equal(RandomGain(p=0.0).train()(wave), wave)
    assert RandomGain().eval()(wave) is wave
    torch.manual_seed(0)
    out = RandomGain(min_db=3.0, max_db=3.0, p=0.5).train()(torch.ones(400, 10))
    applied = (out[:, 0] - 1).abs() > 1e-6
    torch.testing.assert_close(out[applied], torch.full_like(out[applied], 10 ** (3 / 20)))
    assert 150 <= int(applied.sum()) <= 250


# ------------------------------------------------------------------------------------- RandomTimeShift


def test_shift_equals_torch_roll_per_item():
    wave = torch.randn(5, 2, 37)
    shifts = torch.tensor([0, 3, -7, 37, -40])
    out = RandomTimeShift.shift(wave, shifts, "roll")
    for b in range(5):
        torch.testing.assert_close(out[b], torch.roll(wave[b], int(shifts[b]), dims=-1))


def test_shift_zero_mode():
    wave = torch.arange(1.0, 11.0).repeat(3, 1)
    out = RandomTimeShift.shift(wave, torch.tensor([2, -3, 0]), "zero")
    torch.testing.assert_close(out[0], torch.tensor([0, 0, 1, 2, 3, 4, 5, 6, 7, 8.0]))
    torch.testing.assert_close(out[1], torch.tensor([4, 5, 6, 7, 8, 9, 10, 0, 0, 0.0]))
    torch.testing.assert_close(out[2], wave[2])


@pytest.mark.parametrize(
    "kwargs,limit", [({"max_fraction": 0.25}, 50), ({"max_seconds": 0.01, "sample_rate": 1000}, 10)]
)
def test_random_time_shift_is_bounded_roll(kwargs, limit):
    torch.manual_seed(0)
    aug = RandomTimeShift(**kwargs).train()
    wave = torch.randn(32, 200)
    out = aug(wave)
    found = []
    for b in range(32):
        matches = [s for s in range(-limit, limit + 1) if torch.equal(out[b], torch.roll(wave[b], s))]
        assert len(matches) == 1, f"example {b} is not a roll within +-{limit}"
        found.append(matches[0])
    assert len(set(found)) > 10  # per-example shifts
    assert RandomTimeShift(**kwargs).eval()(wave) is wave


def test_time_shift_bad_args():
    with pytest.raises(ValueError, match="sample_rate"):
        RandomTimeShift(max_seconds=0.5)
    with pytest.raises(ValueError, match="mode"):
        RandomTimeShift(mode="reflect")
