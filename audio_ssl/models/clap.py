"""CLAP zero-shot audio classification through Hugging Face ``transformers`` (``ClapModel`` + ``ClapProcessor``).

CLAP (Contrastive Language-Audio Pretraining) embeds audio and text into one space; a clip is classified
without training by comparing its embedding with the embeddings of one text prompt per label, e.g.
``"This is a sound of dog barking."``. References: Elizalde et al., "CLAP: Learning Audio Concepts from
Natural Language Supervision", ICASSP 2023 (https://arxiv.org/abs/2206.04769), and Wu et al., "Large-scale
Contrastive Language-Audio Pretraining with Feature Fusion and Keyword-to-Caption Augmentation", ICASSP 2023
(LAION-CLAP, https://arxiv.org/abs/2211.06687), whose checkpoints ``laion/clap-htsat-unfused`` and
``laion/clap-htsat-fused`` are the transformers ports this module loads.

Zero-shot probabilities of audio ``a`` over labels ``l = 1..L`` (LAION-CLAP's ``logits_per_audio``)::

    p(l | a) = softmax_l( exp(logit_scale_a) * cos(e_audio(a), e_text(prompt_l)) )

``transformers`` is imported lazily (only when a model is loaded), so the rest of the package works without it
(``pip install 'audio-ssl[zoo]'``).

Audio. The processor's feature extractor expects mono audio at its ``sampling_rate`` (48 kHz for the LAION
checkpoints) and at most ``max_length_s`` seconds (10 s): shorter clips are repeated and zero-padded to that
length (``padding="repeatpad"``). Waveforms at any other rate are resampled with the project's soxr resampler
(:func:`audio_ssl.data.audio.resample`, the one the data pipeline uses). Clips longer than ``max_length_s`` are
refused rather than passed on, because the extractor would crop them at a random offset (``rand_trunc``) or
fuse random chunks (``fusion``); cut long recordings into windows first (``audio-ssl zeroshot`` does, see
:mod:`audio_ssl.evaluation.windows`). ``is_longer`` is set from the clips' true lengths (all ``False``), where
the extractor, for fused models, marks one clip of every batch at random; results therefore do not depend on
the batch a clip is in.

Loading. ``source`` is a Hub id (``laion/clap-htsat-unfused``, read from the Hugging Face cache and
downloaded into it on first use unless ``HF_HUB_OFFLINE=1``) or a local folder written by ``save_pretrained``
or ``hf download ID --local-dir DIR``; both go through ``from_pretrained``. A model that cannot be found
raises :class:`ClapLoadError` saying what to fetch and how to pass the folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audio_ssl.data.audio import resample

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TEMPLATE",
    "ClapLoadError",
    "ClapZeroShot",
    "check_labels",
    "class_name_to_label",
    "load_clap",
    "prompts_for",
]

DEFAULT_MODEL = "laion/clap-htsat-unfused"
"""The LAION-CLAP checkpoint (HTSAT audio encoder, RoBERTa text encoder) used when none is named."""

DEFAULT_TEMPLATE = "This is a sound of {label}."
"""The prompt of the LAION-CLAP zero-shot evaluation; ``{label}`` is replaced by each label."""

LABEL_FIELD = "{label}"


class ClapLoadError(OSError):
    """A CLAP model or processor that cannot be loaded; the message names the source and the fix."""


# ---------------------------------------------------------------------------------------------- labels and prompts
def class_name_to_label(name: str) -> str:
    """A dataset class name as words for a prompt: ``"chirping_birds" -> "chirping birds"``, ``"dog" -> "dog"``."""
    return " ".join(str(name).replace("_", " ").split())


def check_labels(labels: Sequence[str], source: str = "labels") -> list[str]:
    """The labels stripped of surrounding spaces; raises ``ValueError`` naming ``source`` for an empty list,
    an empty label (with its position) or a label given twice (case-insensitively, with both positions)."""
    labels = [str(label).strip() for label in labels]
    if not labels:
        raise ValueError(f"{source}: the label list is empty")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels, 1):
        if not label:
            raise ValueError(f"{source}: label {i} of {len(labels)} is empty")
        key = label.casefold()
        if key in seen:
            raise ValueError(f"{source}: label {label!r} is given twice (labels {seen[key]} and {i}); every label "
                             "needs its own prompt")
        seen[key] = i
    return labels


def prompts_for(labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per label: ``template`` with ``{label}`` replaced (other braces are kept as written).

    Raises ``ValueError`` when the template has no ``{label}`` (every prompt would be the same text)."""
    if not isinstance(template, str) or LABEL_FIELD not in template:
        raise ValueError(f"template {template!r} has no {LABEL_FIELD} field: write e.g. {DEFAULT_TEMPLATE!r}")
    return [template.replace(LABEL_FIELD, label) for label in labels]


# ---------------------------------------------------------------------------------------------- loading
def _fetch_hint(source: str) -> str:
    return (f"fetch it on a machine with network access with `hf download {source} --local-dir DIR` "
            f"(`huggingface-cli download` with huggingface_hub < 1.0), copy DIR here and pass the folder instead of "
            f"the id (audio-ssl zeroshot --model DIR; audio-ssl cv --set model=DIR)")


def _looks_like_path(source: str) -> bool:
    """A source written as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) rather than a Hub id (``org/name``)."""
    return (source.startswith((".", "/", "~")) or os.sep in source.replace("/", "", 1)
            or (os.altsep is not None and os.altsep in source))


def load_clap(source: str | os.PathLike = DEFAULT_MODEL, revision: str | None = None,
              device: str | torch.device = "cpu") -> ClapZeroShot:
    """Load a ``ClapModel`` and its ``ClapProcessor`` from a Hub id or a local folder (see the module docstring).

    Args:
        source: Hub id (``laion/clap-htsat-unfused``) or a folder holding ``config.json``, the weights and the
            processor files (``save_pretrained`` of both, or ``hf download ID --local-dir DIR``).
        revision: Hub branch, tag or commit (``None``: ``main``); ignored for a folder.
        device: where the model runs.

    Raises:
        ClapLoadError: a folder that does not exist or lacks a file; a Hub id that is not in the cache and cannot
            be downloaded (offline, ``HF_HUB_OFFLINE=1``, unknown id), with the command that fetches it; a model
            that is not a CLAP model.
        ImportError: ``transformers`` is not installed (``pip install 'audio-ssl[zoo]'``).
    """
    try:
        from transformers import AutoConfig, ClapModel, ClapProcessor
    except ImportError as err:
        raise ImportError(f"CLAP needs the transformers package ({err}): pip install 'audio-ssl[zoo]'") from err

    source = str(source)
    folder = Path(source).expanduser()
    local = folder.is_dir()
    if not local and (folder.exists() or _looks_like_path(source)):
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ClapLoadError(f"CLAP model folder {folder} {what}: pass a folder written by save_pretrained or "
                            "`hf download ID --local-dir DIR`, or a Hugging Face Hub id such as "
                            f"{DEFAULT_MODEL}")
    where = str(folder) if local else source
    kwargs = {} if local else {"revision": revision}
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as err:  # ValueError: a config.json without a model type
        if local:
            raise ClapLoadError(f"{folder}: not a model folder ({_first_line(err)}); it needs config.json, the "
                                "weights and the processor files") from err
        raise ClapLoadError(f"cannot load the CLAP model {source!r}"
                            f"{f' (revision {revision})' if revision else ''} from the Hugging Face Hub or its "
                            f"local cache ({_first_line(err)}; no folder of that name exists here either): "
                            f"{_fetch_hint(source)}") from err
    if getattr(config, "model_type", None) != "clap":
        raise ClapLoadError(f"{where} holds a {getattr(config, 'model_type', '?')!r} model, not a CLAP model "
                            f"(model_type 'clap'), e.g. {DEFAULT_MODEL}")
    try:
        model = ClapModel.from_pretrained(where, config=config, **kwargs)
        processor = ClapProcessor.from_pretrained(where, **kwargs)
    except OSError as err:
        hint = "it needs the weights and the processor files" if local else _fetch_hint(source)
        raise ClapLoadError(f"{where}: the CLAP weights or processor cannot be loaded ({_first_line(err)}): "
                            f"{hint}") from err
    return ClapZeroShot(model, processor, source=source, revision=None if local else revision, device=device)


def _features_of(output) -> torch.Tensor:
    """The projected embeddings [N, D] of ``get_text_features``/``get_audio_features``: an output object's
    ``pooler_output`` (transformers 5) or the tensor itself (transformers 4)."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------- the model
class ClapZeroShot:
    """A loaded CLAP model and processor: text and audio embeddings, zero-shot probabilities.

    Attributes: ``model`` (``transformers.ClapModel``, eval mode), ``processor`` (``ClapProcessor``),
    ``source``, ``revision``, ``device``, ``sample_rate`` (Hz, the processor's), ``max_samples`` (the longest
    clip at ``sample_rate`` the audio tower sees whole: ``max_length_s * sample_rate``).
    """

    def __init__(self, model, processor, source: str = "<in memory>", revision: str | None = None,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.processor = processor
        self.source, self.revision = source, revision
        extractor = processor.feature_extractor
        self.sample_rate: int = int(extractor.sampling_rate)
        self.max_samples: int = int(extractor.nb_max_samples)

    @property
    def max_seconds(self) -> float:
        """The longest clip (seconds) the audio tower sees whole."""
        return self.max_samples / self.sample_rate

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale_a)``: the temperature of the audio-to-text logits (LAION-CLAP's ``logits_per_audio``)."""
        return float(self.model.logit_scale_a.detach().exp())

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings [L, D] (float32, on ``device``) of ``L`` prompts (their order kept)."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("text_embeddings: no prompts")
        tokens = self.processor.tokenizer(prompts, padding=True, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return F.normalize(_features_of(self.model.get_text_features(**tokens)).float(), dim=-1)

    def _features(self, audio, sample_rate: int, lengths) -> dict[str, torch.Tensor]:
        wave = audio.detach().float().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio, np.float32)
        if wave.ndim != 2 or wave.shape[0] == 0 or wave.shape[1] == 0:
            raise ValueError(f"audio must be a non-empty batch of mono waveforms [B, T], got shape {wave.shape}")
        if not np.isfinite(wave).all():
            raise ValueError(f"audio holds {int((~np.isfinite(wave)).sum())} NaN/Inf sample(s)")
        if lengths is None:
            lengths = [wave.shape[1]] * wave.shape[0]
        lengths = [int(n) for n in (lengths.tolist() if hasattr(lengths, "tolist") else lengths)]
        if len(lengths) != wave.shape[0] or any(not 0 < n <= wave.shape[1] for n in lengths):
            raise ValueError(f"lengths must hold one value in 1..{wave.shape[1]} per waveform ({wave.shape[0]}), "
                             f"got {lengths}")
        clips = [resample(row[:n], int(sample_rate), self.sample_rate) for row, n in zip(wave, lengths)]
        longest = max(len(c) for c in clips)
        if longest > self.max_samples:
            raise ValueError(
                f"a clip of {longest / self.sample_rate:.2f} s is longer than the {self.max_seconds:g} s this CLAP "
                f"model sees at once ({self.source}); its feature extractor would crop it at random: cut it into "
                f"windows of at most {self.max_seconds:g} s (audio_ssl.evaluation.windows)")
        inputs = self.processor.feature_extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        # Every clip fits: none is "longer" (the extractor marks one at random for fused models).
        inputs["is_longer"] = torch.zeros(len(clips), 1, dtype=torch.bool)
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.inference_mode()
    def audio_embeddings(self, audio: torch.Tensor | np.ndarray, sample_rate: int,
                         lengths: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised audio embeddings [B, D] (float32, on ``device``).

        Args:
            audio: mono waveforms [B, T] at ``sample_rate`` Hz (float; resampled to :attr:`sample_rate` with
                :func:`audio_ssl.data.audio.resample` when the rates differ).
            sample_rate: the rate of ``audio`` in Hz.
            lengths: valid samples per row [B] (the rest is padding and is dropped before the processor repeats
                the clip to ``max_length_s``); default: all ``T``.

        Raises:
            ValueError: ``audio`` not [B, T] or with NaN/Inf, bad ``lengths``, a bad rate, or a clip longer than
                :attr:`max_seconds` after resampling.
        """
        inputs = self._features(audio, sample_rate, lengths)
        features = self.model.get_audio_features(input_features=inputs["input_features"], is_longer=inputs["is_longer"])
        return F.normalize(_features_of(features).float(), dim=-1)

    def probabilities(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Zero-shot probabilities [B, L] = softmax over labels of ``logit_scale * cos`` (rows sum to 1), from
        normalised audio [B, D] and text [L, D] embeddings."""
        logits = self.logit_scale * audio_embeds @ text_embeds.to(audio_embeds.device).T
        return torch.softmax(logits, dim=-1)

    def zero_shot(self, audio: torch.Tensor | np.ndarray, sample_rate: int, prompts: Sequence[str],
                  lengths: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Zero-shot probabilities [B, L] of ``audio`` [B, T] at ``sample_rate`` Hz over ``L`` prompts (see
        :meth:`audio_embeddings`; for many batches, embed the prompts once with :meth:`text_embeddings` and call
        :meth:`probabilities`)."""
        return self.probabilities(self.audio_embeddings(audio, sample_rate, lengths), self.text_embeddings(prompts))

    def describe(self) -> str:
        """``"CLAP laion/clap-htsat-unfused (153.5M params)"``."""
        return f"CLAP {self.source} ({self.num_parameters / 1e6:.2f}M params)"
