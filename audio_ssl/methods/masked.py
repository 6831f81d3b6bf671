"""BEATs-style masked token prediction on log-mel patches, with a CNN or a Transformer encoder.

Recipe (one *iteration*), following BEATs (Chen et al., 2022, "BEATs: Audio Pre-Training with Acoustic
Tokenizers", arXiv 2212.09058) where it is clear, with each deviation stated:

1. **Tokenizer.** At the start of fitting (:meth:`MaskedTokenPrediction.on_fit_start`) a
   :class:`~audio_ssl.tokenizers.KMeansPatchTokenizer` with ``num_tokens`` clusters is fitted once, by
   k-means on the accelerator with a fixed seed, on ``tokenizer_batches`` batches of the training folds
   (eval transform: the plain front end, no augmentation). Iteration 1 clusters the log-mel patches,
   normalised with one global mean/std (``tokenizer_normalize: global``, as BEATs normalises its fbank
   globally; no per-patch standardisation). *Deviation*: BEATs' iteration-1 tokenizer is a random
   projection, ours is k-means. Iteration ``n >= 2`` clusters the per-patch features of the previous
   iteration's encoder (``teacher_checkpoint``). *Deviation*: BEATs instead trains a new tokenizer by
   self-distillation (a Transformer tokenizer and a quantiser whose tokens must reconstruct the teacher's
   features); we keep k-means on the teacher's features (HuBERT's iterative recipe, Hsu et al., 2021)
   because it needs no second training stage per iteration and no extra model, is deterministic for a
   seed, and on the 1,600 training clips of an ESC-50 split a distilled tokenizer would be trained on the
   same small data; we have not measured it against distillation.
   The codebook is a buffer (saved in every checkpoint, so resuming skips the fit) and is also written
   to ``tokenizer_iter{n}.pt`` next to the checkpoints. Under DDP every rank gets the same codebook.
2. **Silence.** BEATs does nothing special about silence: its global normalisation makes digital silence a
   constant input, which lands on one token like any other patch. We do the same: silent patches stay
   ordinary targets (in the loss and in ``masked_acc``). For that to hold, the recipes' front end has no
   per-clip ``top_db`` floor and a fixed (global, training-set) normalisation, so digital silence is the
   same value (-100 dB) in every clip; with a per-clip floor or instance normalisation its level varies
   from clip to clip and it spreads over several tokens. Under the old per-patch standardisation every
   flat patch became the zero vector (one free token) while quiet, non-flat patches had their noise blown
   up to unit variance and scattered over many ids. Silent targets are easy: on 160 ESC-50 clips (fold 4,
   CPU size, 200 steps) 8.0% of the targets were digital silence, all one token, predicted at 99%, against
   17% for the others, so ``masked_acc`` carries about 8 points of silence.
3. **Masking.** ``mask_ratio`` (BEATs' 0.75) of the ``n_f x n_t`` patches (exactly ``round(ratio * N)``
   per clip; ``mask_type`` ``"random"`` or ``"block"``) are hidden from the encoder.
4. **Prediction.** The encoder returns one feature vector per patch; a head (optionally a few
   Transformer blocks, then a linear layer) predicts ``K`` logits per patch; cross-entropy on the masked
   patches only.

Encoders (chosen by the ``encoder`` class_path):

* :class:`~audio_ssl.models.SpectrogramTransformer`: masked patch embeddings are replaced by its learned
  mask token; its output tokens are the per-patch features.
* A CNN with ``forward_features`` (e.g. :class:`~audio_ssl.models.AudioResNet`): the masked patches of
  the spectrogram are filled (``mask_fill``: ``"zero"`` - the training-set mean under the recipes' fixed
  normalisation, the clip mean under instance normalisation -, ``"mean"`` - each clip's own mean -, or
  ``"learned"`` - a learned ``p_f x p_t`` patch), the spectrogram is cropped to the patch grid and the
  feature map is mapped to the grid. Give the CNN a ``downsample_factor`` equal to the patch size
  (AudioResNet with ``stem_pool: false`` and 4 stages: ``2 * 8 = 16``) and the map has one cell per patch.
  An AudioResNet cell ``j`` is centred on input bin/frame ``16 j``, the first of patch ``j``, half a patch
  before the patch centre ``16 j + 7.5``; :meth:`MaskedTokenPrediction.feature_map` therefore shifts the
  spectrogram by 8 bins and 8 frames (:meth:`~MaskedTokenPrediction.cell_shift`), which centres cell ``j``
  half a bin/frame after the centre of patch ``j`` (``16 j + 8``). Other maps are adaptive-average-pooled
  to the grid (coarser maps then repeat values, which weakens the task). At ``mask_ratio`` 0.75 a CNN sees
  a quarter of its input (e.g. 19 of the 76 patches of a CPU-size 5 s clip); the receptive field of a cell
  (99 bins/frames for the ResNet-10 layout) still reaches visible patches around a masked one.

Clip embeddings for probes and kNN (:meth:`embed`): the encoder's pooled output on the unmasked
spectrogram (mean over the feature map / tokens).

Two iterations (BEATs): run ``audio-ssl fit`` once with ``iteration: 1``, then again with
``--model.init_args.iteration 2 --model.init_args.teacher_checkpoint <iter-1 dir>/last.ckpt`` (and a new
``--checkpoint.dirpath``). The student starts from scratch, as in BEATs; add
``--model.init_args.init_encoder_from <same checkpoint>`` to warm-start it instead.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from audio_ssl.features.augment import RandomGain, RandomTimeShift
from audio_ssl.features.masking import apply_patch_mask, block_patch_mask, random_patch_mask
from audio_ssl.losses.masked_prediction import masked_accuracy, masked_prediction_loss
from audio_ssl.methods.base import BaseMethod, check_encoder_matches, load_prefixed_weights
from audio_ssl.models.resnet import AudioResNet
from audio_ssl.models.vit import SpectrogramTransformer, TransformerBlock
from audio_ssl.tokenizers.kmeans import KMeansPatchTokenizer, TokenizerNorm
from audio_ssl.tokenizers.patches import as_patch_size, crop_to_patch_grid, grid_shape

log = logging.getLogger(__name__)

__all__ = ["MaskedTokenPrediction", "MaskedStepOutput", "codebook_usage"]


@dataclass
class MaskedStepOutput:
    """What one masked-prediction forward produced: ``loss`` and ``accuracy`` over the masked patches,
    ``logits [B, N, K]``, ``targets [B, N]`` (token ids of every patch) and ``mask [B, N]``."""

    loss: Tensor
    accuracy: Tensor
    logits: Tensor
    targets: Tensor
    mask: Tensor


def codebook_usage(counts: Tensor) -> tuple[float, int]:
    """``(perplexity, dead clusters)`` of a token histogram ``[K]``: ``exp(entropy)`` and the number of ids
    never seen (perplexity is ``K`` when every id is equally frequent)."""
    counts = counts.double()
    p = counts[counts > 0] / counts.sum().clamp_min(1)
    return float((-(p * p.log()).sum()).exp()), int((counts == 0).sum())


class MaskedTokenPrediction(BaseMethod):
    """Masked prediction of k-means token ids of spectrogram patches (see the module docstring).

    Args:
        encoder: a :class:`SpectrogramTransformer` or a CNN with ``forward_features -> [B, C, F', T']`` and
            ``out_dim`` (default: AudioResNet-18 without stem max-pool, downsample factor 16).
        patch_size: patch size (frequency bins, frames) of tokens and masks.
        num_tokens: codebook size ``K``.
        mask_ratio: fraction of patches masked per clip, in (0, 1); BEATs' 0.75 by default (exactly
            ``round(mask_ratio * N)`` per clip).
        mask_type: ``"random"`` patches or ``"block"`` (rectangles of ``min_block..max_block`` patches a side).
        mask_fill: CNN only: how masked spectrogram patches are filled (``"zero"``, ``"mean"``, ``"learned"``).
        predictor_depth: Transformer blocks between the encoder features and the linear head (0: linear
            head only, i.e. a 1x1 convolution on a CNN feature map). ``predictor_heads``: their heads.
        tokenizer_batches: training batches used to fit the tokenizer; ``max_fit_patches``, ``kmeans_iters``,
            ``tokenizer_seed``: see :class:`KMeansPatchTokenizer`; ``tokenizer_normalize``: its ``normalize``
            (``"global"``, as BEATs; ``"patch"`` only to reuse codebooks fitted per-patch standardised).
        iteration: 1 = tokens of log-mel patches; ``n >= 2`` = tokens of the features of
            ``teacher_checkpoint`` (a checkpoint of this method at iteration ``n - 1``, same encoder).
        gain_db, time_shift: waveform augmentations in training (random gain in +-``gain_db``, circular time
            shift of up to ``time_shift`` of the clip); targets are computed on the augmented clip.
        **kwargs: :class:`BaseMethod` arguments (front end, optimiser, monitors, ...).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        num_classes: int = 50,
        patch_size: int | tuple[int, int] = 16,
        num_tokens: int = 1024,
        mask_ratio: float = 0.75,
        mask_type: Literal["random", "block"] = "random",
        min_block: int = 2,
        max_block: int = 4,
        mask_fill: Literal["zero", "mean", "learned"] = "zero",
        predictor_depth: int = 0,
        predictor_heads: int = 4,
        tokenizer_batches: int = 50,
        max_fit_patches: int = 100_000,
        kmeans_iters: int = 50,
        tokenizer_seed: int = 0,
        tokenizer_normalize: TokenizerNorm = "global",
        iteration: int = 1,
        teacher_checkpoint: str | None = None,
        gain_db: float = 0.0,
        time_shift: float = 0.0,
        **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        self.save_hyperparameters(ignore=["encoder", "frontend"])
        self.encoder = encoder if encoder is not None else AudioResNet(arch="resnet18", stem_pool=False)
        self.patch_size = as_patch_size(patch_size)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if mask_type not in ("random", "block"):
            raise ValueError(f"mask_type must be 'random' or 'block', got {mask_type!r}")
        if mask_fill not in ("zero", "mean", "learned"):
            raise ValueError(f"mask_fill must be 'zero', 'mean' or 'learned', got {mask_fill!r}")
        if iteration < 1:
            raise ValueError(f"iteration must be >= 1, got {iteration}")
        if iteration >= 2 and not teacher_checkpoint:
            raise ValueError(f"iteration={iteration} needs teacher_checkpoint: the iteration-{iteration - 1} checkpoint")
        if tokenizer_batches < 1:
            raise ValueError(f"tokenizer_batches must be >= 1, got {tokenizer_batches}")
        self.is_transformer = isinstance(self.encoder, SpectrogramTransformer)
        if self.is_transformer and self.encoder.patch_size != self.patch_size:
            raise ValueError(f"encoder patch_size {self.encoder.patch_size} differs from the method's patch_size "
                             f"{self.patch_size}; set both to the same value")
        if not self.is_transformer and not hasattr(self.encoder, "forward_features"):
            raise ValueError(f"encoder {type(self.encoder).__name__} has no forward_features(spec) -> [B, C, F', T']")
        dim = int(self.encoder.out_dim)
        self.mask_ratio, self.mask_type = float(mask_ratio), mask_type
        self.min_block, self.max_block = min_block, max_block
        self.mask_fill = mask_fill
        self.tokenizer_batches, self.tokenizer_seed = tokenizer_batches, tokenizer_seed
        self.iteration, self.teacher_checkpoint = iteration, teacher_checkpoint

        # Only the CNN path fills spectrogram patches; the Transformer has its own mask token.
        self.mask_patch = (nn.Parameter(torch.zeros(*self.patch_size))
                           if mask_fill == "learned" and not self.is_transformer else None)
        self.tokenizer = KMeansPatchTokenizer(
            num_tokens, self.patch_size, normalize=tokenizer_normalize, max_fit_patches=max_fit_patches,
            iters=kmeans_iters, seed=tokenizer_seed, feature_dim=dim if iteration >= 2 else None,
        )
        # The teacher is a frozen copy of the architecture; its weights are loaded from teacher_checkpoint when
        # the tokenizer is fitted, and then travel in this run's checkpoints (so a resume needs no teacher file).
        self.teacher_encoder: nn.Module | None = None
        if iteration >= 2:
            self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False).eval()
        self.predictor = nn.Sequential(*[TransformerBlock(dim, predictor_heads) for _ in range(predictor_depth)])
        if predictor_depth:
            self.predictor.append(nn.LayerNorm(dim))
        self.head = nn.Linear(dim, num_tokens)
        self.gain = RandomGain(min_db=-gain_db, max_db=gain_db) if gain_db > 0 else nn.Identity()
        self.shift = RandomTimeShift(max_fraction=time_shift) if time_shift > 0 else nn.Identity()
        self.setup_online_probe(dim)
        self._token_counts: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> MaskedTokenPrediction:
        """Like ``nn.Module.train``, but the teacher always stays in eval mode (no dropout, frozen BN)."""
        super().train(mode)
        if self.teacher_encoder is not None:
            self.teacher_encoder.eval()
        return self

    def train_transform(self, batch: dict) -> dict:
        batch["spec"] = self.frontend(self.shift(self.gain(batch["audio"])))
        return batch

    # ------------------------------------------------------------------ per-patch features
    def grid(self, spec: Tensor) -> tuple[int, int]:
        """Patch grid ``(n_f, n_t)`` of ``spec [B, C, F, T]``."""
        return grid_shape(spec.shape[-2], spec.shape[-1], self.patch_size)

    def fill_value(self, spec: Tensor) -> Tensor | float:
        """What masked patches of the (grid-cropped) spectrogram are replaced with on the CNN path."""
        if self.mask_fill == "mean":
            return spec.mean(dim=(1, 2, 3), keepdim=True)
        if self.mask_fill == "learned" and self.mask_patch is not None:
            n_f, n_t = self.grid(spec)
            return self.mask_patch.repeat(n_f, n_t).to(spec.dtype)
        return 0.0

    def cell_shift(self, encoder: nn.Module | None = None) -> tuple[int, int]:
        """Bins and frames ``(s_f, s_t)`` by which :meth:`feature_map` moves the spectrogram towards its start so
        that feature cell ``i`` is centred on patch ``i``.

        A cell ``j`` of an :class:`AudioResNet` is centred on input index ``d * j`` (every layer has an odd kernel
        ``k`` with padding ``k // 2``, so a stride-``s`` layer centres output ``j`` on input ``s * j``), i.e. on
        the *first* bin/frame of patch ``j`` when ``d`` equals the patch size ``p``, half a patch before the
        patch centre ``p * j + (p - 1) / 2``. Dropping the first ``p // 2`` bins/frames (and zero-padding as
        many at the end) centres the cell on ``p * j + p // 2``: exactly half a bin/frame after the patch centre
        for even ``p`` (the closest an integer shift gets), exactly on it for odd ``p``. ``0`` on an axis where
        ``d != p`` (the map is pooled to the grid) and for other CNNs, whose geometry is not known here."""
        encoder = self.encoder if encoder is None else encoder
        if not isinstance(encoder, AudioResNet):
            return 0, 0
        d = encoder.downsample_factor
        return tuple(p // 2 if d == p else 0 for p in self.patch_size)  # type: ignore[return-value]

    def feature_map(self, spec: Tensor, encoder: nn.Module | None = None) -> Tensor:
        """CNN feature map of a spectrogram, aligned to its patch grid: ``[B, C, n_f, n_t]``.

        ``spec`` is cropped to the grid and shifted by :meth:`cell_shift` first, so an AudioResNet whose
        downsample factor equals the patch size yields the grid exactly, cell ``i`` centred on patch ``i``
        (to half a bin/frame, see :meth:`cell_shift`); any other map is adaptive-average-pooled to the grid.
        """
        encoder = self.encoder if encoder is None else encoder
        spec = crop_to_patch_grid(spec, self.patch_size)
        s_f, s_t = self.cell_shift(encoder)
        if s_f or s_t:
            spec = F.pad(spec, (-s_t, s_t, -s_f, s_f))  # negative padding crops the start
        fmap = encoder.forward_features(spec)
        if fmap.dim() != 4:
            raise ValueError(f"{type(encoder).__name__}.forward_features must return [B, C, F', T'], "
                             f"got {tuple(fmap.shape)}")
        grid = self.grid(spec)
        return fmap if tuple(fmap.shape[-2:]) == grid else F.adaptive_avg_pool2d(fmap, grid)

    def patch_features(self, spec: Tensor, mask: Tensor | None = None, encoder: nn.Module | None = None) -> Tensor:
        """Per-patch features ``[B, N, D]`` (frequency-major) with the patches in ``mask [B, N]`` hidden."""
        encoder = self.encoder if encoder is None else encoder
        spec = crop_to_patch_grid(spec, self.patch_size)
        if isinstance(encoder, SpectrogramTransformer):
            return encoder.forward_features(spec, mask)
        if mask is not None:
            spec = apply_patch_mask(spec, mask, self.patch_size, self.fill_value(spec))
        return rearrange(self.feature_map(spec, encoder), "b c f t -> b (f t) c")

    # ------------------------------------------------------------------ targets and masks
    @torch.no_grad()
    def targets(self, spec: Tensor) -> Tensor:
        """Token ids ``[B, N]`` of every patch: k-means ids of the log-mel patches (iteration 1) or of the
        teacher's patch features (iteration >= 2)."""
        if self.teacher_encoder is None:
            return self.tokenizer.encode(spec)
        return self.tokenizer.encode_features(self.patch_features(spec, None, self.teacher_encoder))

    def sample_mask(self, batch: int, grid: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
        """Bool mask ``[B, N]`` with exactly ``round(mask_ratio * N)`` True per row, on this module's device."""
        if self.mask_type == "block":
            return block_patch_mask(batch, grid, self.mask_ratio, self.min_block, self.max_block,
                                    generator=generator, device=self.device)
        return random_patch_mask(batch, grid[0] * grid[1], self.mask_ratio, generator=generator, device=self.device)

    # ------------------------------------------------------------------ the objective
    def predict_tokens(self, features: Tensor) -> Tensor:
        """Logits ``[B, N, K]`` from per-patch features ``[B, N, D]``."""
        return self.head(self.predictor(features))

    def masked_step(self, spec: Tensor, mask: Tensor | None = None, targets: Tensor | None = None,
                    generator: torch.Generator | None = None) -> MaskedStepOutput:
        """Masked prediction on a spectrogram batch; ``mask``/``targets`` default to a fresh mask / the tokenizer."""
        spec = crop_to_patch_grid(spec, self.patch_size)
        if targets is None:
            targets = self.targets(spec)
        if mask is None:
            mask = self.sample_mask(spec.shape[0], self.grid(spec), generator)
        logits = self.predict_tokens(self.patch_features(spec, mask))
        loss = masked_prediction_loss(logits.float(), targets, mask)
        return MaskedStepOutput(loss, masked_accuracy(logits, targets, mask), logits, targets, mask)

    def _count_tokens(self, ids: Tensor, stage: str) -> None:
        counts = self._token_counts.get(stage)
        if counts is None or counts.device != ids.device:
            counts = self._token_counts[stage] = torch.zeros(self.tokenizer.num_clusters, device=ids.device)
        counts += torch.bincount(ids.reshape(-1), minlength=self.tokenizer.num_clusters).to(counts.dtype)

    def _log_codebook_usage(self, stage: str) -> None:
        counts = self._token_counts.pop(stage, None)
        if counts is None:
            return
        if self._trainer is not None:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        perplexity, dead = codebook_usage(counts)
        # already summed over ranks, so the (mean) sync is a no-op that keeps Lightning's epoch-level check quiet
        self.log_dict({f"{stage}/codebook_perplexity": perplexity, f"{stage}/dead_clusters": float(dead)},
                      sync_dist=True)

    def _monitor(self, spec: Tensor, labels: Tensor, stage: str) -> Tensor:
        """Online probe and kNN bank on clip embeddings of the unmasked spectrogram (no gradient)."""
        if self.online_probe is None and self.knn is None:
            return spec.new_zeros(())
        with torch.no_grad():
            emb = self.encoder(spec)
        return self.monitor_step(emb, labels, stage)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.masked_step(batch["spec"])
        self._count_tokens(out.targets, "train")
        self.log_metrics("train", {"loss": out.loss, "masked_acc": out.accuracy}, batch_size=len(out.targets),
                         prog_bar=True)
        return out.loss + self._monitor(batch["spec"], batch["label"], "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(self.tokenizer_seed + batch_idx)  # same masks every epoch
        out = self.masked_step(batch["spec"], generator=generator)
        self._count_tokens(out.targets, "val")
        self.log_metrics("val", {"loss": out.loss, "masked_acc": out.accuracy}, batch_size=len(out.targets),
                         prog_bar=True)
        self._monitor(batch["spec"], batch["label"], "val")

    def on_train_epoch_end(self) -> None:
        self._log_codebook_usage("train")

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_codebook_usage("val")

    # ------------------------------------------------------------------ tokenizer fitting
    def on_fit_start(self) -> None:
        """Fit the tokenizer once (skipped when a checkpoint already holds a fitted one) and save it."""
        if bool(self.tokenizer.fitted):
            log.info("tokenizer (iteration %d) restored from the checkpoint: k-means skipped", self.iteration)
        else:
            if self.teacher_encoder is not None:
                self.load_teacher(self.teacher_checkpoint)
            self.fit_tokenizer(self._tokenizer_loader())
        if self.trainer.is_global_zero:
            path = self.tokenizer_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(path)

    def tokenizer_path(self) -> Path:
        """``tokenizer_iter{n}.pt`` in the checkpoint directory (or the trainer's root dir)."""
        callback = self.trainer.checkpoint_callback
        folder = callback.dirpath if callback is not None and callback.dirpath else self.trainer.default_root_dir
        return Path(folder) / f"tokenizer_iter{self.iteration}.pt"

    def _tokenizer_loader(self):
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            return datamodule.train_dataloader()
        return self.trainer.fit_loop._data_source.dataloader()

    @torch.no_grad()
    def fit_tokenizer(self, loader) -> KMeansPatchTokenizer:
        """Fit k-means on the first ``tokenizer_batches`` batches of ``loader`` (front end only, no augmentation;
        teacher features from iteration 2 on). The loader order is seeded by ``tokenizer_seed``."""
        was_training = self.training
        self.eval()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # teacher features in the training precision (e.g. bf16 autocast), as when targets are computed later
        precision = self.trainer.precision_plugin.forward_context() if self._trainer is not None else None
        data = []
        with torch.random.fork_rng(devices=devices), precision or contextlib.nullcontext():
            torch.manual_seed(self.tokenizer_seed)
            for i, batch in enumerate(loader):
                if i >= self.tokenizer_batches:
                    break
                batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                spec = crop_to_patch_grid(self.on_after_batch_transfer(batch, 0)["spec"], self.patch_size)  # eval mode
                if self.teacher_encoder is None:
                    data.append(spec)
                else:
                    data.append(self.patch_features(spec, None, self.teacher_encoder).float())
        self.train(was_training)
        self.tokenizer.fit(data)
        ids = self.targets(data[0]) if self.teacher_encoder is None else self.tokenizer.encode_features(data[0])
        stats = self.tokenizer.usage_stats(ids)
        log.info("fitted %d-token tokenizer (iteration %d) on %d batches: perplexity %.1f on the first batch",
                 self.tokenizer.num_clusters, self.iteration, len(data), stats["perplexity"])
        return self.tokenizer

    def load_teacher(self, checkpoint: str | Path) -> None:
        """Load the previous iteration's encoder weights (``encoder.*`` of a checkpoint of this method); its
        recorded encoder structure and front end must be this model's (ValueError naming both values)."""
        if self.teacher_encoder is None:
            raise RuntimeError("load_teacher() needs iteration >= 2")
        from audio_ssl.utils.provenance import checkpoint_metadata
        from audio_ssl.utils.torch_files import load_weights_file

        blob = load_weights_file(checkpoint, map_location="cpu")
        hparams = blob.get("hyper_parameters", {}) if isinstance(blob, dict) else {}
        teacher_iteration = hparams.get("iteration")
        if teacher_iteration is not None and teacher_iteration != self.iteration - 1:
            raise ValueError(f"{checkpoint}: teacher is iteration {teacher_iteration}, but iteration {self.iteration} "
                             f"needs the iteration-{self.iteration - 1} checkpoint")
        teacher_patch = hparams.get("patch_size")
        if teacher_patch is not None and as_patch_size(teacher_patch) != self.patch_size:
            raise ValueError(f"{checkpoint}: teacher patch_size {teacher_patch} differs from {self.patch_size}")
        check_encoder_matches(checkpoint_metadata(blob), self.teacher_encoder, self.frontend, str(checkpoint))
        load_prefixed_weights(self.teacher_encoder, blob.get("state_dict", blob), checkpoint)
        self.teacher_encoder.eval()
