"""The HEAR 2021 API (audio_ssl.export.hear) against the API's rules, on supervised, SimCLR and BEATs-classifier
checkpoints fitted for two steps: shapes, dtypes, timestamps in ms at the window centres, short and long sounds, batched equals single,
and the embeddings equal to the method's own ``embed`` on hand-cut windows."""

from __future__ import annotations

import pytest
import torch

from audio_ssl.export import hear

SR = 16000
CLIP = SR  # the fixtures' checkpoints are trained on 1 s clips


@pytest.fixture(scope="module", params=["supervised", "simclr", "beats"])
def model(request) -> hear.HEARModel:
    return hear.load_model(str(request.getfixturevalue(f"{request.param}_ckpt")), device="cpu")


def _audio(n_sounds: int, n_samples: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(n_sounds, n_samples, generator=gen)


def test_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == SR and isinstance(model.sample_rate, int)
    assert model.scene_embedding_size == model.timestamp_embedding_size == model.method.embedding_dim
    assert model.scene_embedding_size == (64 if type(model.method).__name__ == "BEATsClassifier" else 8)
    assert model.clip_samples == CLIP and not model.method.training


@pytest.mark.parametrize("n_samples", [1, 300, CLIP - 1, CLIP, 2 * CLIP + 123])
def test_scene_embeddings_shapes_and_values(model, n_samples):
    audio = _audio(3, n_samples)
    emb = hear.get_scene_embeddings(audio, model)
    assert emb.shape == (3, model.scene_embedding_size) and emb.dtype == torch.float32
    assert emb.device == model.device and torch.isfinite(emb).all()
    # reference: zero-pad short sounds to one clip; long ones: clip windows every half clip plus one at the end
    padded = torch.nn.functional.pad(audio, (0, max(0, CLIP - n_samples)))
    length = padded.shape[1]
    starts = list(range(0, length - CLIP + 1, CLIP // 2))
    if starts[-1] + CLIP < length:
        starts.append(length - CLIP)
    with torch.no_grad():
        expected = torch.stack([model.method.embed(padded[:, s : s + CLIP]) for s in starts]).mean(0)
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_samples", [1, 799, 800, 12345, 3 * CLIP])
def test_timestamp_embeddings_rules(model, n_samples):
    audio = _audio(2, n_samples, seed=1)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    n_ts = n_samples // 800 + 1  # 50 ms hop at 16 kHz, from 0 to the end
    assert emb.shape == (2, n_ts, model.timestamp_embedding_size) and emb.dtype == torch.float32
    assert ts.shape == (2, n_ts) and ts.dtype == torch.float32
    assert torch.equal(ts[0], ts[1])
    torch.testing.assert_close(ts[0], torch.arange(n_ts, dtype=torch.float32) * 50.0)  # milliseconds
    assert (ts.diff(dim=1) > 0).all() and ts[0, -1] <= n_samples / SR * 1000
    # window i is centred on sample 800 * i: the sound zero-padded by half a window (0.5 s) on each side
    half = model.window_samples // 2
    padded = torch.nn.functional.pad(audio, (half, half))
    for i in {0, n_ts // 2, n_ts - 1}:
        window = padded[:, 800 * i : 800 * i + model.window_samples]
        with torch.no_grad():
            torch.testing.assert_close(emb[:, i], model.method.embed(window), rtol=1e-5, atol=1e-5)


def test_batched_equals_single(model):
    audio = _audio(4, CLIP + 4000, seed=2)
    scene = hear.get_scene_embeddings(audio, model)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    for i in range(4):
        torch.testing.assert_close(hear.get_scene_embeddings(audio[i : i + 1], model)[0], scene[i], rtol=1e-5, atol=1e-6)
        one, one_ts = hear.get_timestamp_embeddings(audio[i : i + 1], model)
        torch.testing.assert_close(one[0], emb[i], rtol=1e-5, atol=1e-6)
        assert torch.equal(one_ts[0], ts[i])


def test_batches_of_different_lengths_in_turn(model):
    """The kit calls the functions with batches of different lengths; nothing is kept from one call to the next."""
    lengths = [SR // 4, 3 * SR, SR // 10]
    for n in lengths:
        emb, ts = hear.get_timestamp_embeddings(_audio(2, n), model)
        assert emb.shape[:2] == ts.shape == (2, n // 800 + 1)
        assert hear.get_scene_embeddings(_audio(2, n), model).shape == (2, model.scene_embedding_size)


def test_options_and_bad_inputs(model, supervised_ckpt):
    fine = hear.load_model(str(supervised_ckpt), timestamp_hop_ms=25, timestamp_window_seconds=0.5, device="cpu")
    emb, ts = hear.get_timestamp_embeddings(_audio(1, SR), fine)
    assert emb.shape[1] == SR // 400 + 1 and ts[0, 1] == 25.0 and fine.window_samples == SR // 2
    with pytest.raises(ValueError, match="timestamp_hop_ms must be in"):
        hear.load_model(str(supervised_ckpt), timestamp_hop_ms=60)
    with pytest.raises(ValueError, match="timestamp_window_seconds must be in"):
        hear.load_model(str(supervised_ckpt), timestamp_window_seconds=2.0)  # longer than the 1 s clips
    with pytest.raises(ValueError, match="needs model_file_path"):
        hear.load_model()
    with pytest.raises(ValueError, match="no such checkpoint file"):
        hear.load_model("/nonexistent/model.ckpt")
    with pytest.raises(ValueError, match=r"shape \[n_sounds, n_samples\]"):
        hear.get_scene_embeddings(torch.zeros(SR), model)
    with pytest.raises(ValueError, match="no samples"):
        hear.get_timestamp_embeddings(torch.zeros(2, 0), model)
    with pytest.raises(ValueError, match="floating point"):
        hear.get_scene_embeddings(torch.zeros(1, SR, dtype=torch.int16), model)
    bad = torch.zeros(3, SR)
    bad[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf samples in sound\(s\) \[1\]"):
        hear.get_scene_embeddings(bad, model)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="does not describe its model"):
        hear.load_model(str(path))


@pytest.mark.parametrize("kind", ["byola", "masked"])
def test_other_methods(kind, request):
    """BYOL-A and the masked-token Transformer: the same rules, in one pass each."""
    model = hear.load_model(str(request.getfixturevalue(f"{kind}_ckpt")), device="cpu")
    dim = 16 if kind == "masked" else 8
    assert model.scene_embedding_size == model.timestamp_embedding_size == model.method.embedding_dim == dim
    audio = _audio(3, 2 * CLIP + 500, seed=4)
    scene = hear.get_scene_embeddings(audio, model)
    emb, ts = hear.get_timestamp_embeddings(audio, model)
    assert scene.shape == (3, dim) and emb.shape == (3, (2 * CLIP + 500) // 800 + 1, dim) and ts.shape == emb.shape[:2]
    with torch.no_grad():
        windows = [audio[:, s : s + CLIP] for s in (0, CLIP // 2, CLIP, CLIP + 500)]  # the last aligned to the end
        torch.testing.assert_close(scene, torch.stack([model.method.embed(w) for w in windows]).mean(0),
                                   rtol=1e-5, atol=1e-5)
        padded = torch.nn.functional.pad(audio, (CLIP // 2, CLIP // 2))
        torch.testing.assert_close(emb[:, 7], model.method.embed(padded[:, 5600 : 5600 + CLIP]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hear.get_scene_embeddings(audio[1:2], model)[0], scene[1], rtol=1e-5, atol=1e-6)
    short = hear.get_scene_embeddings(_audio(2, 100), model)
    assert short.shape == (2, dim) and torch.isfinite(short).all()
