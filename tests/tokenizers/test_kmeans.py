"""Tests for torch k-means and the k-means patch tokenizer (incl. a 2-rank gloo fit)."""

import pytest
import torch

from audio_ssl.tokenizers import KMeansPatchTokenizer, kmeans, nearest_centroid, patchify
from tests.ddp_utils import run_distributed


def _blobs(num_blobs=8, per_blob=60, dim=16, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_blobs, dim, generator=g) * 10.0
    labels = torch.arange(num_blobs).repeat_interleave(per_blob)
    x = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm], centers


def _specs(batch=6, seed=0, num_freq=32, num_time=64):
    g = torch.Generator().manual_seed(seed)
    # random walks along time: smooth, structured patches
    return torch.randn(batch, 1, num_freq, num_time, generator=g).cumsum(-1)


# ---------------------------------------------------------------------------------------------- kmeans


def test_kmeans_recovers_blobs():
    from sklearn.metrics import adjusted_rand_score  # imported here: keeps spawned DDP workers light

    x, labels, centers = _blobs()
    centroids, assign = kmeans(x, 8, iters=100, seed=0)
    assert centroids.shape == (8, 16) and assign.shape == (x.shape[0],)
    assert adjusted_rand_score(labels.numpy(), assign.numpy()) == pytest.approx(1.0)
    # each centroid is the mean of its blob (up to relabelling)
    for c in range(8):
        members = x[assign == c]
        torch.testing.assert_close(centroids[c], members.mean(0), rtol=1e-4, atol=1e-4)
        assert torch.cdist(centroids[c : c + 1], centers).min() < 0.5  # blob centres are ~10 apart


def test_kmeans_assignments_are_nearest_centroids():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    centroids, assign = kmeans(x, 10, iters=5, seed=0)
    brute = torch.cdist(x, centroids).argmin(1)
    assert torch.equal(assign, brute)
    ids, d2 = nearest_centroid(x, centroids, chunk_size=37)  # chunking must not change the result
    assert torch.equal(ids, brute)
    torch.testing.assert_close(d2, ((x - centroids[brute]) ** 2).sum(1), rtol=1e-4, atol=1e-4)


def test_kmeans_deterministic_for_a_seed():
    x = torch.rand(400, 6, generator=torch.Generator().manual_seed(0))  # no cluster structure
    a = kmeans(x, 12, iters=20, seed=7)
    b = kmeans(x, 12, iters=20, seed=7)
    c = kmeans(x, 12, iters=20, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_kmeans_reseeds_empty_clusters():
    # two tight blobs and one outlier; the third initial centroid is far from every point, so its
    # cluster is empty after the first assignment and must be re-seeded with the farthest point (the outlier)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 2, generator=g) * 0.1
    b = torch.randn(50, 2, generator=g) * 0.1 + torch.tensor([10.0, 0.0])
    outlier = torch.tensor([[5.0, 20.0]])
    x = torch.cat([a, b, outlier])
    init = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1000.0, 1000.0]])
    centroids, assign = kmeans(x, 3, iters=10, init=init)
    torch.testing.assert_close(centroids[2], outlier[0])
    assert assign[-1] == 2 and (assign[:-1] != 2).all()
    assert torch.bincount(assign, minlength=3).min() > 0
    # without iterations the far centroid stays where it was (so the re-seeding above is real)
    assert torch.equal(kmeans(x, 3, iters=0, init=init)[0][2], init[2])


def test_kmeans_duplicate_points_and_errors():
    x = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10)  # only 2 distinct points, k = 4
    centroids, assign = kmeans(x, 4, iters=5)
    assert torch.isfinite(centroids).all()
    assert torch.equal(centroids[assign], x)
    with pytest.raises(ValueError, match="k=5 with M=3"):
        kmeans(torch.randn(3, 2), 5)
    with pytest.raises(ValueError, match=r"\[M, D\]"):
        kmeans(torch.randn(3, 2, 2), 2)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0], [float("nan")]]), 1)


# ---------------------------------------------------------------------------------------------- tokenizer


def _fitted_tokenizer(**kwargs):
    cfg = dict(num_clusters=16, patch_size=8, max_fit_patches=10_000, iters=10, seed=0)
    cfg.update(kwargs)
    return KMeansPatchTokenizer(**cfg).fit(_specs())


def test_tokenizer_global_statistics_are_those_of_the_fitted_values():
    specs = _specs()
    tok = _fitted_tokenizer()  # normalize="global" by default; 6 x 32 patches < max_fit_patches: all kept
    values = patchify(specs, 8).double()
    assert tok.normalize == "global"
    assert float(tok.mean) == pytest.approx(float(values.mean()), rel=1e-6)
    assert float(tok.std) == pytest.approx(float((values.var(unbiased=False) + tok.eps).sqrt()), rel=1e-6)
    # the codebook lives in the normalised units: its values average out near 0 with unit scale
    assert abs(float(tok.centroids.mean())) < 0.5 and 0.3 < float(tok.centroids.std()) < 1.5


def test_tokenizer_encode_is_nearest_normalised_centroid():
    spec = _specs(batch=3, seed=1, num_time=70)  # T not a multiple of 8: last 6 frames are cropped
    p = patchify(spec, 8)
    for normalize in ("global", "patch", "none"):
        tok = _fitted_tokenizer(normalize=normalize)
        assert bool(tok.fitted) and tok.centroids.shape == (16, 64)
        ids = tok.encode(spec)
        assert ids.shape == (3, 4 * 8) and ids.dtype == torch.long
        if normalize == "global":
            ref = (p - tok.mean) / tok.std
        elif normalize == "patch":
            ref = (p - p.mean(-1, keepdim=True)) / torch.sqrt(p.var(-1, keepdim=True, unbiased=False) + tok.eps)
        else:
            ref = p
        assert torch.equal(ids, torch.cdist(ref, tok.centroids[None].expand(3, -1, -1)).argmin(-1)), normalize
        assert torch.equal(tok(spec), ids)


def test_tokenizer_patch_normalisation_gives_gain_and_offset_invariance_global_keeps_the_level():
    spec = _specs(batch=2, seed=2)
    per_patch = _fitted_tokenizer(normalize="patch")
    assert torch.equal(per_patch.encode(3.0 * spec + 7.0), per_patch.encode(spec))
    for normalize in ("global", "none"):
        tok = _fitted_tokenizer(normalize=normalize)
        assert not torch.equal(tok.encode(3.0 * spec + 7.0), tok.encode(spec)), normalize


def _silence_and_sounds(seed=0):
    """Spectrograms [12, 1, 16, 64] of 8x8 patches: 6 loud templates (+- noise 0.3), quiet patches (floor -4 plus
    noise 0.02) and flat digital-silence patches (exactly -4), in equal thirds; returns (spec, kind [12, 16])."""
    g = torch.Generator().manual_seed(seed)
    templates = 2.0 * torch.randn(6, 64, generator=g)
    kind = torch.arange(12 * 16).remainder(3).view(12, 16)  # 0 loud, 1 quiet, 2 flat
    which = torch.randint(0, 6, (12, 16), generator=g)
    patches = templates[which] + 0.3 * torch.randn(12, 16, 64, generator=g)
    patches[kind == 1] = -4.0 + 0.02 * torch.randn(int((kind == 1).sum()), 64, generator=g)
    patches[kind == 2] = -4.0
    grid = patches.view(12, 2, 8, 1, 8, 8).permute(0, 3, 1, 4, 2, 5)  # b nf nt c pf pt -> b c nf pf nt pt
    return grid.reshape(12, 1, 16, 64), kind


def test_global_normalisation_keeps_silence_and_quiet_patches_on_one_token():
    """The issue's failure: per-patch standardisation blows the noise of quiet patches up to unit variance, so they
    scatter over many ids, and sends flat patches to the zero vector; global statistics keep both near the floor."""
    spec, kind = _silence_and_sounds()
    quiet_or_flat = kind > 0
    ids = {n: KMeansPatchTokenizer(num_clusters=16, patch_size=8, normalize=n, iters=20).fit(spec).encode(spec)
           for n in ("global", "patch")}
    assert torch.unique(ids["global"][quiet_or_flat]).numel() == 1  # silence and near-silence: one token
    assert torch.unique(ids["patch"][kind == 2]).numel() == 1  # flat: the zero vector
    assert torch.unique(ids["patch"][kind == 1]).numel() >= 6  # quiet noise scattered
    # loud patches never share the silence token under global normalisation
    assert not bool(torch.isin(ids["global"][kind == 0], ids["global"][quiet_or_flat]).any())


def test_tokenizer_fit_inputs_and_features():
    specs = _specs()
    a = KMeansPatchTokenizer(num_clusters=16, patch_size=8, iters=10).fit(specs)
    b = KMeansPatchTokenizer(num_clusters=16, patch_size=8, iters=10).fit([specs[:2], specs[2:]])
    c = KMeansPatchTokenizer(num_clusters=16, patch_size=8, iters=10).fit(patchify(specs, 8).flatten(0, 1))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.centroids, c.centroids)
    # encoder features for iterative refinement
    feats = torch.randn(4, 20, 32)
    tok = KMeansPatchTokenizer(num_clusters=8, feature_dim=32, iters=5).fit(feats)
    assert tok.encode_features(feats).shape == (4, 20)
    with pytest.raises(ValueError, match="feature_dim=32"):
        tok.encode(specs)  # 16x16 patches have D=256


def test_tokenizer_subsamples_to_max_fit_patches():
    tok = KMeansPatchTokenizer(num_clusters=4, patch_size=8, max_fit_patches=50, iters=3)
    rows = torch.randn(500, 64)
    kept = tok._subsample(rows, 50, seed=0)
    assert kept.shape == (50, 64)
    assert all(any(torch.equal(r, s) for s in rows) for r in kept[:5])
    assert tok._subsample(rows[:40], 50, seed=0).data_ptr() == rows.data_ptr()  # small inputs kept whole


def test_tokenizer_errors():
    tok = KMeansPatchTokenizer(num_clusters=16, patch_size=8)
    with pytest.raises(RuntimeError, match="not fitted"):
        tok.encode(_specs())
    with pytest.raises(ValueError, match="num_clusters=512"):
        KMeansPatchTokenizer(num_clusters=512, patch_size=8).fit(_specs(batch=1))
    with pytest.raises(ValueError, match=r"\[B, C, F, T\]"):
        _fitted_tokenizer().encode(torch.randn(2, 32, 64))
    with pytest.raises(ValueError, match="'per_patch'"):
        KMeansPatchTokenizer(normalize="per_patch")


def test_tokenizer_save_load_round_trip(tmp_path):
    tok = _fitted_tokenizer(num_clusters=12, patch_size=(8, 4), normalize="none", seed=3)
    path = tmp_path / "tok.pt"
    tok.save(path)
    loaded = KMeansPatchTokenizer.load(path)
    assert loaded.config() == tok.config()
    assert torch.equal(loaded.centroids, tok.centroids) and bool(loaded.fitted)
    spec = _specs(batch=3, seed=5)
    assert torch.equal(loaded.encode(spec), tok.encode(spec))
    blob = torch.load(path, weights_only=True)  # a plain dict, readable without audio_ssl classes
    assert set(blob) >= {"config", "centroids", "fitted", "mean", "std"} and blob["version"] == 2
    glob = _fitted_tokenizer()
    glob.save(path)
    loaded = KMeansPatchTokenizer.load(path)
    assert loaded.normalize == "global" and torch.equal(loaded.mean, glob.mean) and torch.equal(loaded.std, glob.std)
    assert torch.equal(loaded.encode(spec), glob.encode(spec))


def _version_1_blob(tok: KMeansPatchTokenizer) -> dict:
    """A file as the code before ``normalize`` wrote it: ``normalize_patches`` in the config, no statistics."""
    config = {k: v for k, v in tok.config().items() if k != "normalize"}
    config["normalize_patches"] = tok.normalize == "patch"
    return {"format": "audio_ssl.KMeansPatchTokenizer", "version": 1, "config": config,
            "centroids": tok.centroids.clone(), "fitted": tok.fitted.clone()}


def test_tokenizer_fitted_by_old_code_keeps_its_mode(tmp_path, caplog):
    old = _fitted_tokenizer(normalize="patch")
    path = tmp_path / "old.pt"
    torch.save(_version_1_blob(old), path)
    with caplog.at_level("WARNING", logger="audio_ssl.tokenizers.kmeans"):
        loaded = KMeansPatchTokenizer.load(path)
    assert loaded.normalize == "patch" and "normalize='patch'" in caplog.text and "old.pt" in caplog.text
    spec = _specs(batch=2, seed=6)
    assert torch.equal(loaded.encode(spec), old.encode(spec))
    # an old state dict (a checkpoint's tokenizer.*) is refused by a global tokenizer, with the way out named
    state = {k: v for k, v in old.state_dict().items() if k in ("centroids", "fitted")}
    with pytest.raises(RuntimeError, match="normalize='patch'"):
        KMeansPatchTokenizer(num_clusters=16, patch_size=8).load_state_dict(state)
    as_fitted = KMeansPatchTokenizer(num_clusters=16, patch_size=8, normalize="patch")
    as_fitted.load_state_dict(state)
    assert torch.equal(as_fitted.encode(spec), old.encode(spec))
    blob = _version_1_blob(old)
    del blob["config"]["normalize_patches"]
    torch.save(blob, path)
    with pytest.raises(ValueError, match="normalize_patches"):
        KMeansPatchTokenizer.load(path)


def test_tokenizer_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"centroids": torch.zeros(2, 2)}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        KMeansPatchTokenizer.load(bad)
    tok = _fitted_tokenizer()
    path = tmp_path / "tok.pt"
    tok.save(path)
    blob = torch.load(path, weights_only=True)
    del blob["fitted"]
    torch.save(blob, path)
    with pytest.raises(ValueError, match="'fitted'"):
        KMeansPatchTokenizer.load(path)


def test_tokenizer_state_dict_round_trip():
    tok = _fitted_tokenizer()
    state = tok.state_dict()
    assert set(state) == {"centroids", "fitted", "mean", "std"}
    fresh = KMeansPatchTokenizer(num_clusters=16, patch_size=8)
    assert not bool(fresh.fitted)
    # as a submodule, like inside a LightningModule checkpoint
    parent = torch.nn.Module()
    parent.tokenizer = fresh
    parent.load_state_dict({f"tokenizer.{k}": v for k, v in state.items()})
    spec = _specs(batch=2, seed=4)
    assert bool(fresh.fitted) and torch.equal(fresh.encode(spec), tok.encode(spec))


def test_usage_stats_known_ids():
    tok = KMeansPatchTokenizer(num_clusters=8, patch_size=8)
    uniform4 = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    stats = tok.usage_stats(uniform4)
    assert stats["perplexity"] == pytest.approx(4.0)
    assert stats["dead_clusters"] == 4 and stats["used_fraction"] == pytest.approx(0.5)
    all8 = tok.usage_stats(torch.arange(8).repeat(3))
    assert all8 == {"perplexity": pytest.approx(8.0), "dead_clusters": 0, "used_fraction": 1.0}
    single = tok.usage_stats(torch.full((10,), 5))
    assert single["perplexity"] == pytest.approx(1.0) and single["dead_clusters"] == 7
    # skewed usage: perplexity = exp(entropy) < number of used clusters
    skewed = tok.usage_stats(torch.tensor([0, 0, 0, 1]))
    p = torch.tensor([0.75, 0.25])
    assert skewed["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        tok.usage_stats(torch.tensor([0, 8]))


# ---------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world_size: int) -> dict:
    tok = KMeansPatchTokenizer(num_clusters=16, patch_size=8, max_fit_patches=10_000, iters=10, seed=0)
    tok.fit(_specs(batch=3, seed=100 + rank))  # different data on every rank
    return {"centroids": tok.centroids.clone(), "fitted": tok.fitted.clone(), "mean": tok.mean.clone(),
            "std": tok.std.clone()}


@pytest.mark.ddp
def test_ddp_fit_gives_identical_codebooks_on_all_ranks():
    r0, r1 = run_distributed(_ddp_worker, world_size=2)
    assert bool(r0["fitted"]) and bool(r1["fitted"])
    assert torch.equal(r0["centroids"], r1["centroids"])
    # the codebook is fitted on the union of both ranks' data (rank order), not on one rank's data
    union = KMeansPatchTokenizer(num_clusters=16, patch_size=8, max_fit_patches=10_000, iters=10, seed=0)
    union.fit([_specs(batch=3, seed=100), _specs(batch=3, seed=101)], distributed=False)
    assert torch.equal(r0["centroids"], union.centroids)
    # the global statistics too: the same on both ranks, those of the union
    assert torch.equal(r0["mean"], r1["mean"]) and torch.equal(r0["std"], r1["std"])
    assert torch.equal(r0["mean"], union.mean) and torch.equal(r0["std"], union.std)
    alone = KMeansPatchTokenizer(num_clusters=16, patch_size=8, max_fit_patches=10_000, iters=10, seed=0)
    alone.fit(_specs(batch=3, seed=100), distributed=False)
    assert not torch.equal(r0["centroids"], alone.centroids)


def test_distinct_blob_relabelling_helper_is_meaningful():
    """Guard for test_kmeans_recovers_blobs: a wrong partition has a clearly lower ARI."""
    from sklearn.metrics import adjusted_rand_score

    x, labels, _ = _blobs()
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert adjusted_rand_score(labels.numpy(), shuffled.numpy()) < 0.1
    merged = labels.clone()
    merged[merged == 1] = 0
    assert adjusted_rand_score(labels.numpy(), merged.numpy()) < 0.99
