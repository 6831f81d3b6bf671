"""Linear probe on frozen embeddings: the standard test of a pretrained encoder.

1. :func:`extract_embeddings` runs ``module.embed(audio)`` once over a dataset with deterministic (centre)
   crops, no augmentation, the module in eval mode and ``torch.inference_mode`` (so nothing in the encoder,
   BatchNorm statistics included, can change), on the GPU when there is one. :func:`cached_embeddings` keeps
   the result in an ``.npz`` keyed by a hash of the module's weights and of the clips.
2. :class:`LinearProbe` standardises the embeddings with training statistics and fits multinomial logistic
   regression, by default with full-batch L-BFGS in torch (float64), minimising
   ``mean cross-entropy + ||W||^2 / (2 C N)``, which is scikit-learn's ``LogisticRegression(C)`` objective
   divided by ``C N``: the same ``C`` means the same model with either ``solver``.
   With a list of ``C`` values, :func:`select_C` picks one by leave-one-fold-out over the *training* folds
   (the test fold is never looked at), then the probe is refitted on all training folds.

Standalone: ``audio-ssl probe --checkpoint CKPT [--test-fold K] [--data-dir DIR]`` (``--config PRETRAIN_YAML`` only
for checkpoints that do not describe their model and data).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from audio_ssl.evaluation.fold import FoldOutput, ResultDescription, classification_metrics, predictions_frame
from audio_ssl.utils.distributed import broadcast_from_rank_zero, rank, world_size
from audio_ssl.utils.io import atomic_write

log = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Linear-probe settings (the ``probe:`` section of a pipeline config, see experiments/linear_probe.yaml).

    ``C``: inverse L2 strength (scikit-learn convention), one value or a list to choose from by
    leave-one-training-fold-out. ``solver``: ``lbfgs`` (torch, full batch, on ``device``) or ``sklearn``.
    ``device``: ``auto`` = CUDA when available, for both the embedding pass and the L-BFGS fit.
    ``cpu_threads``: torch threads for a CPU fit (these small problems run fastest on one thread, and many
    times slower with several threads on a busy machine); ``None`` keeps torch's setting.
    """

    C: float | list[float] = 1.0
    solver: str = "lbfgs"
    standardize: bool = True
    max_iter: int = 1000
    tol: float = 1e-6
    embed_batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    cpu_threads: int | None = 1
    cache_embeddings: bool = True

    def __post_init__(self) -> None:
        cs = self.C if isinstance(self.C, list) else [self.C]
        if not cs or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 for c in cs):
            raise ValueError(f"probe C must be a positive number or a non-empty list of them, got {self.C!r}")
        if self.solver not in ("lbfgs", "sklearn"):
            raise ValueError(f"probe solver must be 'lbfgs' or 'sklearn', got {self.solver!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"probe cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.max_iter < 1 or self.embed_batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"probe max_iter and embed_batch_size must be >= 1 and num_workers >= 0, got "
                             f"{self.max_iter}, {self.embed_batch_size}, {self.num_workers}")

    @property
    def Cs(self) -> list[float]:  # noqa: N802 (C is the textbook name)
        return [float(c) for c in (self.C if isinstance(self.C, list) else [self.C])]

    @classmethod
    def from_dict(cls, values: dict | None, source: str = "probe") -> ProbeConfig:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown probe setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def load_probe_config(spec: dict | str | None, base_dir: Path | None = None) -> ProbeConfig:
    """Probe settings from an inline dict, or a YAML path (relative to ``base_dir``) whose ``probe:`` section
    (or, without one, whose top level) holds them; ``None`` gives the defaults."""
    if spec is None or isinstance(spec, dict):
        return ProbeConfig.from_dict(spec, "probe")
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"probe settings file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of probe settings")
    return ProbeConfig.from_dict(values.get("probe", values), str(path))


@contextlib.contextmanager
def torch_threads(num_threads: int | None):
    """Temporarily set torch's intra-op threads (``None``: leave them)."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------- embeddings
def state_hash(module: torch.nn.Module) -> str:
    """Hash of every tensor in the module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def extract_embeddings(module: torch.nn.Module, dataset, batch_size: int = 64, device: str | torch.device = "auto",
                       num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [N, D] float32, labels [N])`` from ``module.embed`` over ``dataset`` in order.

    The module is put in eval mode on ``device`` for the pass and returned to its previous mode and device.
    """
    if getattr(dataset, "random_crop", False):
        raise ValueError("extract_embeddings needs deterministic crops: build the dataset with random_crop=False")
    device = resolve_device(device) if isinstance(device, str) else device
    params = list(module.parameters())
    home = params[0].device if params else torch.device("cpu")
    was_training = module.training
    module.eval().to(device)
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        chunks, labels = [], []
        for batch in loader:
            chunks.append(module.embed(batch["audio"].to(device).float()).float().cpu())
            labels.append(batch["label"])
    finally:
        module.train(was_training).to(home)
    embeddings = torch.cat(chunks).numpy()
    if embeddings.ndim != 2:
        raise ValueError(f"{type(module).__name__}.embed returned shape {tuple(embeddings.shape)}, expected [B, D]")
    return embeddings, torch.cat(labels).numpy()


def _clips_key(dataset) -> str:
    digest = hashlib.sha256(f"{dataset.clip_samples}|".encode())
    for f in dataset.files:
        digest.update(f"{f}\n".encode())
    return digest.hexdigest()[:16]


def cached_embeddings(module: torch.nn.Module, datasets: dict, cache_dir: Path | None, tag: str,
                      config: ProbeConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Embeddings of each named dataset, read from / written to ``cache_dir/{tag}-{key}.npz`` where ``key``
    hashes the module's weights and every dataset's clips and crop length."""
    key = hashlib.sha256((state_hash(module) + "".join(f"{n}:{_clips_key(d)}" for n, d in sorted(datasets.items()))
                          ).encode()).hexdigest()[:16]
    path = cache_dir / f"{tag}-{key}.npz" if cache_dir is not None and config.cache_embeddings else None
    if path is not None and path.exists():
        with np.load(path) as data:
            log.info("embeddings read from %s", path)
            return {n: (data[f"{n}_x"], data[f"{n}_y"]) for n in datasets}
    result = {n: extract_embeddings(module, d, config.embed_batch_size, config.device, config.num_workers)
              for n, d in datasets.items()}
    if path is not None:
        arrays = {f"{n}_{part}": arr for n, (x, y) in result.items() for part, arr in (("x", x), ("y", y))}
        with atomic_write(path) as fh:
            np.savez(fh, **arrays)
    return result


# ---------------------------------------------------------------------------------------------- the classifier
def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float, max_iter: int = 1000,
                            tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: minimises mean CE + ||W||^2 / (2 C N) (the bias
    is not penalised). Returns ``(W [D, K], b [K])`` in ``x``'s dtype and device."""
    n, d = x.shape
    weight = torch.zeros(d, num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tol,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight.pow(2).sum() / (2 * C * n)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


class LinearProbe:
    """Standardise (training mean/std) then multinomial logistic regression; see the module docstring."""

    def __init__(self, C: float = 1.0, solver: str = "lbfgs", standardize: bool = True, max_iter: int = 1000,
                 tol: float = 1e-6, device: str = "auto", cpu_threads: int | None = 1):
        self.C, self.solver, self.standardize = float(C), solver, standardize
        self.max_iter, self.tol, self.device = max_iter, tol, resolve_device(device)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.mean = self.std = None
        self.weight = self.bias = None
        self._sklearn = None
        self.num_classes = 0

    def _scale(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x - self.mean) / self.std if self.standardize else x

    @classmethod
    def from_config(cls, config: ProbeConfig, C: float) -> LinearProbe:
        return cls(C, config.solver, config.standardize, config.max_iter, config.tol, config.device,
                   config.cpu_threads)

    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> LinearProbe:
        with torch_threads(self.cpu_threads):
            return self._fit(x, y, num_classes)

    def _fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> LinearProbe:
        y = np.asarray(y, dtype=np.int64)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"probe fit: {len(x)} embeddings and {len(y)} labels")
        self.num_classes = int(num_classes)
        x = np.asarray(x, dtype=np.float64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-8
        xs = self._scale(x)
        if self.solver == "sklearn":
            from sklearn.linear_model import LogisticRegression

            self._sklearn = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol).fit(xs, y)
        else:
            tx = torch.as_tensor(xs, device=self.device)
            ty = torch.as_tensor(y, device=self.device)
            self.weight, self.bias = fit_logistic_regression(tx, ty, self.num_classes, self.C, self.max_iter, self.tol)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N, num_classes] (classes absent from training get probability 0 with sklearn)."""
        xs = self._scale(x)
        if self._sklearn is not None:
            probs = np.zeros((len(xs), self.num_classes))
            probs[:, self._sklearn.classes_] = self._sklearn.predict_proba(xs)
            return probs
        if self.weight is None:
            raise RuntimeError("LinearProbe.predict_proba before fit")
        logits = torch.as_tensor(xs, device=self.device) @ self.weight + self.bias
        return torch.softmax(logits, dim=1).cpu().numpy()


def select_C(x: np.ndarray, y: np.ndarray, groups: np.ndarray, Cs: Sequence[float], num_classes: int,  # noqa: N802
             config: ProbeConfig) -> tuple[float, dict[str, float]]:
    """Choose ``C`` by leave-one-group-out accuracy (groups = the training folds); ties go to the smaller C
    (stronger regularisation). Returns ``(best C, {C: mean accuracy})``."""
    Cs = sorted(float(c) for c in Cs)
    unique = np.unique(groups)
    if len(Cs) == 1 or len(unique) < 2:
        if len(Cs) > 1:
            log.warning("probe: fewer than two training folds, cannot select C; using C=%g", Cs[0])
        return Cs[0], {}
    scores = {}
    for c in Cs:
        accs = []
        for g in unique:
            held = groups == g
            probe = LinearProbe.from_config(config, c)
            probe.fit(x[~held], y[~held], num_classes)
            accs.append(float((probe.predict_proba(x[held]).argmax(1) == y[held]).mean()))
        scores[f"{c:g}"] = float(np.mean(accs))
    best = max(Cs, key=lambda c: (scores[f"{c:g}"], -c))
    return best, scores


def probe_fold(module: torch.nn.Module, train_set, test_set, num_classes: int, class_names: Sequence[str],
               config: ProbeConfig, train_groups: np.ndarray | None = None, cache_dir: Path | None = None,
               tag: str = "embeddings") -> FoldOutput:
    """Linear probe of ``module.embed`` trained on ``train_set`` and tested on ``test_set`` (both with
    ``random_crop=False``). The module is only run forward in inference mode; it is never updated.

    Under DDP (a CV pipeline after distributed pretraining, where every rank calls this) rank 0 runs the
    probe alone, on the whole fold, reading and writing the embedding cache, and every rank returns its
    result: the same numbers as one process, and no two processes writing one file."""
    if world_size() > 1:
        output = None
        if rank() == 0:
            output = _probe_fold(module, train_set, test_set, num_classes, class_names, config, train_groups,
                                 cache_dir, tag)
        return broadcast_from_rank_zero(output)
    return _probe_fold(module, train_set, test_set, num_classes, class_names, config, train_groups, cache_dir, tag)


def _probe_fold(module: torch.nn.Module, train_set, test_set, num_classes: int, class_names: Sequence[str],
                config: ProbeConfig, train_groups: np.ndarray | None, cache_dir: Path | None,
                tag: str) -> FoldOutput:
    start = time.perf_counter()
    embedded = cached_embeddings(module, {"train": train_set, "test": test_set}, cache_dir, tag, config)
    (x_train, y_train), (x_test, y_test) = embedded["train"], embedded["test"]
    embed_time = time.perf_counter() - start
    groups = train_groups if train_groups is not None else np.zeros(len(y_train))
    best_c, scores = select_C(x_train, y_train, np.asarray(groups), config.Cs, num_classes, config)
    probe = LinearProbe.from_config(config, best_c)
    probs = probe.fit(x_train, y_train, num_classes).predict_proba(x_test)
    frame = predictions_frame(test_set.files, y_test, probs, class_names)
    probe_time = time.perf_counter() - start - embed_time
    details = {"probe_C": best_c, "probe_C_scores": scores, "embedding_dim": int(x_train.shape[1]),
               "probe_train_clips": len(y_train), "embed_time_s": embed_time, "probe_time_s": probe_time,
               "probe_settings": dataclasses.asdict(config)}
    description = ResultDescription(protocol="linear probe (frozen encoder)", epochs=0,
                                    wall_time_s=embed_time + probe_time, details=details)
    return FoldOutput(classification_metrics(y_test, probs), frame, description)


def fold_groups(datamodule, dataset) -> np.ndarray:
    """The fold number of every clip of a dataset built by ``datamodule.split``."""
    folds = datamodule._metadata().set_index("path")["fold"]
    return folds.loc[list(dataset.files)].to_numpy()


# ---------------------------------------------------------------------------------------------- standalone command
def saw_test_fold(data_meta: dict, test_fold: int) -> str | None:
    """Why a checkpoint's training data included ``test_fold`` (transductive, or the fold in its train folds),
    ``None`` if it did not, from the checkpoint's ``audio_ssl.data`` description."""
    if data_meta.get("transductive"):
        return "it was trained transductively (every fold's audio)"
    if test_fold in (data_meta.get("train_folds") or []):
        return f"its train folds {data_meta['train_folds']} include fold {test_fold}"
    return None


def _model_and_data_from_checkpoint(path: Path, meta: dict, test_fold: int, data_dir: str | None,
                                    cache_dir: str | None):
    """The model and data module described by a checkpoint (no YAML): the resolved model config, the dataset
    class, sample rate and clip length it was trained with; the data from ``data_dir``, else the recorded folder,
    else the default location (``$AUDIO_SSL_DATA/<dataset>``)."""
    from jsonargparse import ArgumentParser

    from audio_ssl.data.base import FoldAudioDataModule
    from audio_ssl.methods.base import BaseMethod

    data_meta = meta.get("data") or {}
    if not meta.get("model_config") or not data_meta.get("class_path"):
        raise ValueError(f"{path}: this checkpoint does not describe its model and data (saved before audio-ssl "
                         "stored them, or outside the audio-ssl CLI): pass --config PRETRAIN.yaml")
    recorded = data_meta.get("data_dir")
    if data_dir is None and recorded and Path(recorded).is_dir():
        data_dir = recorded
    init = {"data_dir": data_dir, "test_fold": test_fold, "sample_rate": data_meta["sample_rate"],
            "clip_seconds": data_meta["clip_seconds"], "cache_dir": cache_dir}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(FoldAudioDataModule, "data")
    try:
        dm = parser.instantiate_classes(parser.parse_object(
            {"data": {"class_path": data_meta["class_path"], "init_args": init}})).data
    except Exception as err:
        raise ValueError(f"{path}: cannot rebuild the model and data it describes ({err})") from err
    return BaseMethod.from_metadata(meta, str(path)), dm


def run_probe_command(args: argparse.Namespace, extra: list[str]) -> dict:
    from audio_ssl.data.paths import DATA_ENV
    from audio_ssl.utils.provenance import checkpoint_metadata, read_checkpoint

    checkpoint = Path(args.checkpoint)
    loaded = read_checkpoint(checkpoint)
    meta = checkpoint_metadata(loaded)
    data_meta = meta.get("data") or {}
    test_fold = args.test_fold if args.test_fold is not None else data_meta.get("test_fold")
    if test_fold is None:
        raise ValueError(f"{checkpoint} does not record a test fold: pass --test-fold K")
    if args.config:
        from audio_ssl.cli import build_cli

        cli_args = ["--config", args.config, "--data.init_args.test_fold", str(test_fold), "--trainer.logger", "false"]
        cli_args += ["--data.init_args.data_dir", args.data_dir] if args.data_dir else []
        cli_args += ["--data.init_args.cache_dir", args.cache_dir] if args.cache_dir else []
        cli = build_cli([*cli_args, *extra], run=False)
        model, dm, source = cli.model, cli.datamodule, args.config
    else:
        if extra:
            raise ValueError(f"unrecognised argument(s) {extra} (Lightning overrides need --config)")
        model, dm = _model_and_data_from_checkpoint(checkpoint, meta, test_fold, args.data_dir, args.cache_dir)
        source = str(checkpoint)
    if not dm.metadata_path.exists():
        raise ValueError(f"the probe needs the {dm.dataset_name} audio: {dm.metadata_path} does not exist; pass "
                         f"--data-dir DIR (or set ${DATA_ENV} to the folder holding '{dm.dataset_name}/')")
    reason = saw_test_fold(data_meta, test_fold)
    if reason:
        print(f"audio-ssl probe: warning: the checkpoint's training saw test fold {test_fold} ({reason}): "
              "the probe's accuracy on it is not a held-out estimate", file=sys.stderr)
    untrained = {k: v.clone() for k, v in model.state_dict().items()} if args.random_init else None
    state = loaded.get("state_dict", loaded)
    if args.encoder_only:
        from audio_ssl.methods.base import load_prefixed_weights

        load_prefixed_weights(model.encoder, state, str(checkpoint))
    else:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            method = meta.get("method")
            this = f"{type(model).__module__}.{type(model).__qualname__}"
            hint = (f"; it is a {method.rsplit('.', 1)[-1]} checkpoint: pass --encoder-only to probe its encoder "
                    "with this model" if method and method != this else "")
            raise ValueError(f"{checkpoint} does not match the model of {source}{hint}: "
                             f"{str(err).splitlines()[0]}") from err
    config = load_probe_config(args.probe)
    train_set, test_set = dm.split_dataset("train"), dm.split_dataset("test")
    out = Path(args.out) if args.out else None
    results: dict = {}
    variants = [("pretrained", None)] + ([("random_init", untrained)] if untrained is not None else [])
    for variant, weights in variants:
        if weights is not None:
            model.load_state_dict(weights)
        output = probe_fold(model, train_set, test_set, dm.num_classes, dm.class_names, config,
                            fold_groups(dm, train_set), out / "embeddings" if out else None, tag=variant)
        results[variant] = {**output.metrics, "C": output.description.details["probe_C"]}
        if out is not None:
            with atomic_write(out / f"fold{test_fold}_{variant}.csv", "w") as fh:
                output.predictions.to_csv(fh, index=False)
    results["test_fold"] = test_fold
    results["pretraining_saw_test_fold"] = None if not data_meta else reason is not None
    return results


def main(argv: list[str] | None = None) -> None:
    """Probe an existing checkpoint on one held-out fold; prints the metrics as JSON."""
    parser = argparse.ArgumentParser(
        prog="audio-ssl probe", allow_abbrev=False,
        description="Linear probe of a trained encoder on one fold. The checkpoint describes its model, data and "
                    "folds; --config (for checkpoints that do not) also takes Lightning CLI arguments "
                    "(e.g. --data.init_args.cache_dir DIR).")
    parser.add_argument("--checkpoint", required=True, help="a Lightning checkpoint (or final.ckpt)")
    parser.add_argument("--config", default=None, help="the Lightning YAML the checkpoint was trained with "
                                                       "(default: the model and data recorded in the checkpoint)")
    parser.add_argument("--test-fold", type=int, default=None, help="held-out fold (default: the checkpoint's)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: the checkpoint's, else $AUDIO_SSL_DATA/<dataset>)")
    parser.add_argument("--cache-dir", default=None, help="waveform cache folder")
    parser.add_argument("--probe", default=None, help="probe settings YAML (default: built-in defaults)")
    parser.add_argument("--encoder-only", action="store_true",
                        help="load only encoder.* weights (checkpoint from a different method)")
    parser.add_argument("--random-init", action="store_true", help="also probe the untrained encoder")
    parser.add_argument("--out", default=None, help="folder for predictions CSVs and the embedding cache")
    args, extra = parser.parse_known_args(argv)
    try:
        results = run_probe_command(args, extra)
    except (ValueError, FileNotFoundError) as err:
        from audio_ssl.cli import short_error

        print(f"audio-ssl probe: error: {short_error(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
