"""MaskedTokenPrediction: what reaches the loss, grid alignment, the tokenizer's life cycle (fit once, checkpoint,
resume), iteration 2 on teacher features, and overfitting one batch with both encoders."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import audio_ssl.methods.masked as masked_module
from audio_ssl.features import LogMelSpectrogram
from audio_ssl.features.masking import num_masked_patches
from audio_ssl.methods import MaskedTokenPrediction
from audio_ssl.methods.masked import codebook_usage
from audio_ssl.models import AudioResNet, SpectrogramTransformer
from audio_ssl.tokenizers import KMeansPatchTokenizer
from audio_ssl.utils.checkpoints import LastCheckpoint

SAMPLES = 8000  # 0.5 s at 16 kHz: 32 mels x 32 frames (hop 256) -> a 2 x 2 grid of 16x16 patches, 4 x 4 of 8x8


def frontend() -> LogMelSpectrogram:
    return LogMelSpectrogram(n_fft=512, hop_length=256, n_mels=32, normalize="instance")


def cnn(**kwargs) -> AudioResNet:
    defaults = dict(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_pool=False)  # downsample 16
    defaults.update(kwargs)
    return AudioResNet(**defaults)


def vit(**kwargs) -> SpectrogramTransformer:
    defaults = dict(n_mels=32, max_frames=64, patch_size=8, embed_dim=32, depth=2, num_heads=4, drop_path=0.0)
    defaults.update(kwargs)
    return SpectrogramTransformer(**defaults)


def make_model(encoder=None, patch_size=16, **kwargs) -> MaskedTokenPrediction:
    torch.manual_seed(0)
    defaults = dict(encoder=encoder if encoder is not None else cnn(), frontend=frontend(), num_classes=4,
                    patch_size=patch_size, num_tokens=8, max_fit_patches=64, kmeans_iters=20, tokenizer_batches=2,
                    scheduler="none", lr=3e-3)
    defaults.update(kwargs)
    return MaskedTokenPrediction(**defaults)


def waveforms(batch=8, samples=SAMPLES, seed=0, gated=True) -> dict:
    """Chirps plus noise; ``gated``: each chirp stops at a random time < 1 s (the rest is the noise floor)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    labels = torch.arange(batch) % 4
    freqs = 300.0 * (1 + labels.float())[:, None] * (1 + torch.rand(batch, 1, generator=g))
    chirp = torch.sin(2 * torch.pi * freqs * t * (1 + 2 * t))
    gate = t < torch.rand(batch, 1, generator=g) if gated else 1.0
    audio = 0.5 * chirp * gate + 0.05 * torch.randn(batch, samples, generator=g)
    return {"audio": audio, "label": labels, "index": torch.arange(batch)}


class Clips(Dataset):
    def __init__(self, n=16, seed=0):
        self.data = waveforms(n, seed=seed)

    def __len__(self):
        return len(self.data["label"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.items()}


def loader(n=16, batch_size=4, shuffle=False):
    return DataLoader(Clips(n), batch_size=batch_size, shuffle=shuffle)


def fitted(model: MaskedTokenPrediction, batch_size=8) -> MaskedTokenPrediction:
    model.fit_tokenizer(loader(16, batch_size))
    return model


# ---------------------------------------------------------------------------------------------------- the objective
def test_codebook_usage_analytic():
    assert codebook_usage(torch.tensor([5.0, 5, 5, 5])) == (pytest.approx(4.0), 0)
    assert codebook_usage(torch.tensor([0.0, 7, 0, 0])) == (pytest.approx(1.0), 3)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert codebook_usage(p * 8)[0] == pytest.approx(math.exp(-(p * p.log()).sum().item()))


@pytest.mark.parametrize("encoder", ["cnn", "vit"])
@pytest.mark.parametrize("mask_type", ["random", "block"])
def test_exact_number_of_masked_patches_reaches_the_loss(monkeypatch, mask_type, encoder):
    """BEATs' mask ratio 0.75 is the default: round(0.75 N) masked patches per clip reach the loss, with both
    encoders (the CNN then sees a quarter of its input, the rest filled)."""
    if encoder == "cnn":  # 2 s: a 2 x 7 grid of 16x16 patches
        model, samples, n = fitted(make_model(encoder=cnn(), mask_type=mask_type)), 32000, 14
    else:  # 0.5 s: a 4 x 4 grid of 8x8 patches
        model, samples, n = fitted(make_model(encoder=vit(), patch_size=8, mask_type=mask_type)), SAMPLES, 16
    assert model.mask_ratio == 0.75
    seen = []
    real_loss = masked_module.masked_prediction_loss

    def recording_loss(logits, targets, mask):
        seen.append(mask.clone())
        return real_loss(logits, targets, mask)

    monkeypatch.setattr(masked_module, "masked_prediction_loss", recording_loss)
    batch = model.on_after_batch_transfer(waveforms(6, samples=samples), 0)
    out = model.training_step(batch, 0)
    assert len(seen) == 1
    assert seen[0].shape == (6, n)
    expected = {14: 10, 16: 12}[n]  # round(10.5) = 10: Python rounds half to even
    assert seen[0].sum(1).tolist() == [num_masked_patches(n, 0.75)] * 6 == [round(0.75 * n)] * 6 == [expected] * 6
    # the loss is the mean cross-entropy of exactly those positions
    spec = batch["spec"]
    logits = model.predict_tokens(model.patch_features(spec, seen[0]))
    reference = F.cross_entropy(logits[seen[0]], model.targets(spec)[seen[0]])
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize("encoder", ["cnn", "vit"])
def test_loss_ignores_targets_of_unmasked_patches(encoder):
    model = fitted(make_model(encoder=cnn() if encoder == "cnn" else vit(), patch_size=16 if encoder == "cnn" else 8))
    model.eval()
    spec = model.frontend(waveforms(4)["audio"])
    grid = model.grid(spec)
    mask = model.sample_mask(4, grid, torch.Generator().manual_seed(0))
    targets = model.targets(spec)
    changed = torch.where(mask, targets, (targets + 1 + torch.randint(0, 6, targets.shape)) % 8)
    assert (changed != targets).sum() == (~mask).sum()
    with torch.no_grad():
        a = model.masked_step(spec, mask=mask, targets=targets).loss
        b = model.masked_step(spec, mask=mask, targets=changed).loss
        c = model.masked_step(spec, mask=mask, targets=torch.where(mask, (targets + 1) % 8, targets)).loss
    torch.testing.assert_close(a, b)
    assert not torch.isclose(a, c)


def test_cnn_feature_map_is_the_patch_grid():
    model = make_model(encoder=cnn())
    spec = torch.randn(2, 1, 32, 45)  # 45 frames: a 2 x 2 grid, 13 frames cropped
    fmap = model.feature_map(spec)
    assert fmap.shape == (2, 16, 2, 2) == (2, model.encoder.out_dim, *model.grid(spec))
    # downsample factor == patch size: the map is the encoder's own output on the cropped input moved 8 bins and
    # 8 frames towards its start (zeros after the end), no pooling
    assert model.cell_shift() == (8, 8)
    moved = torch.zeros(2, 1, 32, 32)
    moved[..., :24, :24] = spec[..., 8:32, 8:32]
    torch.testing.assert_close(fmap, model.encoder.forward_features(moved))
    feats = model.patch_features(spec)
    torch.testing.assert_close(feats[:, 1], fmap[:, :, 0, 1])  # frequency-major: n = i_f * n_t + i_t
    torch.testing.assert_close(feats[:, 2], fmap[:, :, 1, 0])
    # a coarser encoder (downsample 32) is pooled onto the grid
    coarse = make_model(encoder=cnn(stem_pool=True), patch_size=8)
    assert coarse.feature_map(spec).shape[-2:] == coarse.grid(spec) == (4, 5)


def receptive_field_centre(features, spec: torch.Tensor, cell: tuple[int, int]) -> tuple[float, float]:
    """Centre (bin, frame) of the receptive field of one feature cell: the midpoint of the input positions whose
    gradient is non-zero (summed over 4 random inputs, so that no position is missed by a dead ReLU)."""
    grad = torch.zeros_like(spec[0, 0])
    for seed in range(4):
        x = torch.randn(spec.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                        requires_grad=True)
        features(x)[0, :, cell[0], cell[1]].sum().backward()
        grad += x.grad[0, 0].abs()
    rows, cols = grad.sum(1).nonzero().flatten(), grad.sum(0).nonzero().flatten()
    return (float(rows.min() + rows.max()) / 2, float(cols.min() + cols.max()) / 2)


def test_cnn_feature_cell_is_centred_on_its_patch():
    """Geometry measured by the gradient of one output cell: an AudioResNet cell j is centred on bin/frame 16 j (the
    first of patch j, 7.5 before its centre); the method's feature map centres it on 16 j + 8, half a bin/frame
    after the patch centre 16 j + 7.5, the nearest an integer shift gets for an even patch size."""
    model = make_model(encoder=cnn()).double().eval()
    spec = torch.zeros(1, 1, 240, 224)  # a 15 x 14 grid; the receptive field (99 wide) of cell (7, 6) is inside
    patch_centre = (16 * 7 + 7.5, 16 * 6 + 7.5)
    raw = receptive_field_centre(model.encoder.forward_features, spec, (7, 6))
    assert raw == (16 * 7, 16 * 6) == (patch_centre[0] - 7.5, patch_centre[1] - 7.5)
    centred = receptive_field_centre(model.feature_map, spec, (7, 6))
    assert centred == (patch_centre[0] + 0.5, patch_centre[1] + 0.5)
    # the same through patch_features (what the loss sees): patch n = i_f * n_t + i_t
    def per_patch(x):
        return model.patch_features(x).transpose(1, 2).reshape(1, -1, 15, 14)
    assert receptive_field_centre(per_patch, spec, (7, 6)) == centred
    # an encoder whose map is pooled to the grid is not moved
    assert make_model(encoder=cnn(stem_pool=True), patch_size=8).cell_shift() == (0, 0)
    assert make_model(encoder=vit(), patch_size=8).cell_shift() == (0, 0)


@pytest.mark.parametrize("fill", ["zero", "mean", "learned"])
def test_cnn_mask_fill_hides_masked_patches(fill):
    model = make_model(encoder=cnn(), patch_size=8, mask_fill=fill)
    if fill == "learned":
        with torch.no_grad():
            model.mask_patch.uniform_()
    spec = torch.randn(1, 1, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True  # patch (1, 1): bins 8-15, frames 8-15
    spec2 = spec.clone()
    spec2[..., 8:16, 8:16] = torch.randn(8, 8)
    model.eval()
    if fill == "mean":  # the fill depends on the clip mean: keep it equal
        spec2[..., 8:16, 8:16] += spec[..., 8:16, 8:16].mean() - spec2[..., 8:16, 8:16].mean()
    with torch.no_grad():
        torch.testing.assert_close(model.patch_features(spec, mask), model.patch_features(spec2, mask))


# ---------------------------------------------------------------------------------------------------- tokenizer
def trainer(tmp_path, steps, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                     callbacks=[LastCheckpoint(tmp_path)], **kwargs)


def test_tokenizer_fitted_once_saved_and_restored(tmp_path, monkeypatch):
    calls = []
    real_fit = KMeansPatchTokenizer.fit

    def counting_fit(self, data, distributed=None):
        calls.append(1)
        return real_fit(self, data, distributed)

    monkeypatch.setattr(KMeansPatchTokenizer, "fit", counting_fit)
    model = make_model(online_probe=True, knn_k=3)
    trainer(tmp_path, 3).fit(model, loader(12, shuffle=True), loader())  # one epoch of 3 steps, then val
    assert len(calls) == 1 and bool(model.tokenizer.fitted)
    assert model.trainer.callback_metrics["train/codebook_perplexity"] >= 1.0
    assert "val/knn_acc" in model.trainer.callback_metrics

    spec = model.frontend(waveforms(4, seed=3)["audio"])
    ids = model.tokenizer.encode(spec)
    standalone = KMeansPatchTokenizer.load(tmp_path / "tokenizer_iter1.pt")
    assert torch.equal(standalone.encode(spec), ids)

    # the codebook is in the checkpoint's state_dict: a fresh model gets identical ids
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    fresh = make_model(online_probe=True, knn_k=3)
    fresh.load_state_dict(ckpt["state_dict"])
    assert torch.equal(fresh.tokenizer.encode(spec), ids)
    assert ckpt["hyper_parameters"]["iteration"] == 1

    # resuming restores the fitted codebook: no second k-means, training continues
    resumed = make_model(online_probe=True, knn_k=3)
    trainer(tmp_path, 5).fit(resumed, loader(12, shuffle=True), loader(), ckpt_path=tmp_path / "last.ckpt")
    assert len(calls) == 1 and resumed.trainer.global_step == 5
    assert torch.equal(resumed.tokenizer.encode(spec), ids)


def test_tokenizer_fit_is_seeded_and_uses_unaugmented_audio():
    a = fitted(make_model(time_shift=0.5, gain_db=6.0))
    b = fitted(make_model(time_shift=0.5, gain_db=6.0))
    assert torch.equal(a.tokenizer.centroids, b.tokenizer.centroids)
    # the codebook equals k-means on the plain front end's patches of the same batches
    reference = KMeansPatchTokenizer(8, 16, max_fit_patches=64, iters=20, seed=0)
    reference.fit([a.frontend(batch["audio"]) for batch in loader(16, 8)])
    torch.testing.assert_close(a.tokenizer.centroids, reference.centroids)


def test_iteration_two_refits_on_teacher_features(tmp_path):
    first = fitted(make_model())
    path = tmp_path / "iter1.ckpt"
    torch.save({"state_dict": first.state_dict(), "hyper_parameters": dict(first.hparams)}, path)

    second = make_model(iteration=2, teacher_checkpoint=str(path))
    second.load_teacher(path)
    fitted(second)
    dim = second.encoder.out_dim
    assert second.tokenizer.centroids.shape == (8, dim) != first.tokenizer.centroids.shape
    for name, p in first.encoder.state_dict().items():
        torch.testing.assert_close(second.teacher_encoder.state_dict()[name], p)

    # targets are the teacher features' nearest centroids, not those of the log-mel patches
    second.train()
    assert not second.teacher_encoder.training
    assert all(not p.requires_grad for p in second.teacher_encoder.parameters())
    spec = second.frontend(waveforms(4, seed=5)["audio"])
    with torch.no_grad():
        first.eval()
        teacher_feats = first.patch_features(spec)
    assert torch.equal(second.targets(spec), second.tokenizer.encode_features(teacher_feats))
    reference = KMeansPatchTokenizer(8, 16, max_fit_patches=64, iters=20, seed=0, feature_dim=dim)
    with torch.no_grad():
        reference.fit([first.patch_features(first.frontend(b["audio"])) for b in loader(16, 8)])
    torch.testing.assert_close(second.tokenizer.centroids, reference.centroids)
    assert not torch.equal(second.targets(spec), first.targets(spec))  # another tokenizer, another labelling

    # a teacher from the wrong iteration is refused, and iteration 2 needs a teacher
    third = make_model(iteration=3, teacher_checkpoint=str(path))
    with pytest.raises(ValueError, match="iteration 1"):
        third.load_teacher(path)
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        make_model(iteration=2)


# ---------------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("encoder", ["cnn", "vit"])
def test_overfits_one_batch(encoder):
    model = make_model(encoder=cnn() if encoder == "cnn" else vit(),
                       patch_size=16 if encoder == "cnn" else 8, lr=3e-3)
    fitted(model)
    samples = 32000 if encoder == "cnn" else SAMPLES  # CNN: 2 s = a 2 x 7 grid of 16x16 patches; ViT: 4 x 4 of 8x8
    # chirps over the whole clip (under global normalisation the noise floor is one token, so the gated clips'
    # mostly-noise targets would let the majority token come close to the 0.95 asked of the model below)
    spec = model.frontend(waveforms(8, samples=samples, gated=False)["audio"])
    mask = model.sample_mask(8, model.grid(spec), torch.Generator().manual_seed(0))
    targets = model.targets(spec)
    majority = torch.bincount(targets[mask]).max() / mask.sum()
    assert majority < 0.8  # predicting the most frequent token cannot pass the test
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(60):
        out = model.masked_step(spec, mask=mask, targets=targets)
        first = out.loss.item() if first is None else first
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert out.accuracy > 0.95 and out.loss.item() < 0.2 * first


def test_checkpoint_of_the_per_patch_tokenizer_is_refused_by_name():
    """A checkpoint written before ``tokenizer_normalize`` (its config has ``normalize_patches``) is not rebuilt with a
    different meaning: the error names the checkpoint and the option."""
    from audio_ssl.methods.base import BaseMethod

    meta = {"model_config": {"class_path": "audio_ssl.methods.MaskedTokenPrediction",
                             "init_args": {"normalize_patches": True, "num_tokens": 8}},
            "num_classes": 4, "sample_rate": 16000}
    with pytest.raises(ValueError, match=r"(?s)old\.ckpt.*normalize_patches"):
        BaseMethod.from_metadata(meta, "old.ckpt")
