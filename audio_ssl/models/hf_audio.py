"""Hugging Face ``transformers`` audio encoders: AST, wav2vec 2.0, HuBERT and WavLM, pooled for clip embeddings.

* AST, the Audio Spectrogram Transformer (Gong et al., 2021): a ViT on 128-bin Kaldi fbanks (10 ms hop, patches of
  16x16 with stride 10), e.g. ``MIT/ast-finetuned-audioset-10-10-0.4593``.
* wav2vec 2.0 (Baevski et al., 2020), HuBERT (Hsu et al., 2021), WavLM (Chen et al., 2022): a convolutional
  feature encoder on the normalised 16 kHz waveform (20 ms frames) and a Transformer, e.g.
  ``facebook/wav2vec2-base``, ``facebook/hubert-base-ls960``, ``microsoft/wavlm-base-plus``.

:class:`HFAudioEncoder` loads the model with ``AutoModel.from_pretrained`` (a hub id or a local folder written by
``save_pretrained`` / ``huggingface-cli download``: one code path), or builds the same architecture from its config
with random weights (``pretrained=False``, the probe's control). Its front end (:meth:`HFAudioEncoder.build_frontend`,
an :class:`HFFeatureFrontend`) is the model's own ``AutoFeatureExtractor`` (AST's fbank and normalisation,
wav2vec 2.0's zero-mean unit-variance normalisation), so a method feeds it exactly what the model was trained on.
The embedding is the mean over time of the last hidden state (or of a chosen hidden state).

Downloads happen only where ``transformers`` does them, into its usual cache (``HF_HOME``, default
``~/.cache/huggingface``); offline (``HF_HUB_OFFLINE=1`` or no network) a model not in the cache is an error that
says what to fetch and where to put it. ``transformers`` is imported only when an encoder is built.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["HF_AUDIO_MODEL_TYPES", "HFAudioEncoder", "HFFeatureFrontend", "HFModelNotFoundError"]

#: ``config.model_type`` of the supported families -> the family (what decides the parameter layout).
HF_AUDIO_MODEL_TYPES = {
    "audio-spectrogram-transformer": "ast",
    "wav2vec2": "wav2vec2",
    "hubert": "wav2vec2",
    "wavlm": "wav2vec2",
}

#: Parameter names (relative to the transformers model) of the stem, layer id 0, by family.
_FRONT = {
    "ast": ("embeddings.",),
    "wav2vec2": ("masked_spec_embed", "feature_extractor.", "feature_projection.", "encoder.pos_conv_embed."),
}
_BLOCK = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


class HFModelNotFoundError(OSError):
    """A hub id or folder that ``transformers`` could not load (offline and not cached, or no such model)."""


def _not_found(model: str, what: str, err: Exception) -> HFModelNotFoundError:
    return HFModelNotFoundError(
        f"cannot load the {what} of Hugging Face model {model!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
        f"If {model!r} is a hub id, fetch it once with network access: `hf download {model} --local-dir DIR` "
        f"(older huggingface_hub: `huggingface-cli download {model} --local-dir DIR`; or `from_pretrained(...)` then "
        f"`save_pretrained(DIR)` for the model and its feature extractor) and pass DIR as the model "
        f"(--model.init_args.encoder.init_args.model DIR), or let it fill the "
        "Hugging Face cache (HF_HOME, default ~/.cache/huggingface) and leave HF_HUB_OFFLINE unset for that run. "
        "If it is a folder, it must hold config.json, the weights (model.safetensors or pytorch_model.bin) and "
        "preprocessor_config.json"
    )


def _transformers():
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is a dependency of the 'zoo' extra
        raise ImportError("the Hugging Face encoders need transformers: pip install 'audio-ssl[zoo]'") from err
    return transformers


class HFFeatureFrontend(nn.Module):
    """The model's ``AutoFeatureExtractor`` as a front end: waveforms ``[B, T]`` -> the model's ``input_values``.

    AST: ``[B, max_length frames, num_mel_bins]`` normalised Kaldi fbank (padded or cut to ``max_length``);
    wav2vec 2.0 / HuBERT / WavLM: ``[B, T]``, each clip normalised to zero mean and unit variance when the
    extractor's ``do_normalize``. The extractor runs on the CPU in float32 (numpy); the result is moved back to
    the waveforms' device. It has no parameters (the state dict is unchanged).

    Args:
        feature_extractor: a ``transformers`` feature extractor (``sampling_rate`` in Hz).
        sample_rate: the data's sample rate in Hz; must equal the extractor's ``sampling_rate``.
        source: the hub id or folder it came from (recorded in checkpoints, named in errors).

    Raises:
        ValueError: the rates differ (the message names both).
    """

    def __init__(self, feature_extractor: Any, sample_rate: int, source: str = "<feature extractor>") -> None:
        super().__init__()
        expected = int(feature_extractor.sampling_rate)
        if int(sample_rate) != expected:
            raise ValueError(
                f"the feature extractor of {source} ({type(feature_extractor).__name__}) expects {expected} Hz audio "
                f"(its sampling_rate) but the data is at sample_rate={sample_rate} Hz: set "
                f"--data.init_args.sample_rate {expected} (the data module resamples)"
            )
        self.feature_extractor = feature_extractor
        self.sample_rate = int(sample_rate)
        self.source = source
        #: True when ``forward`` gives waveforms ``[B, T]`` (wav2vec 2.0 family), False for a spectrogram (AST's
        #: fbank, whose extractor states ``num_mel_bins``): SpecAugment masks only the latter.
        self.outputs_waveform = getattr(feature_extractor, "num_mel_bins", None) is None

    def forward(self, waveforms: Tensor) -> Tensor:
        """``[B, T]`` float waveforms at ``sample_rate`` -> ``input_values`` (float32, on the waveforms' device)."""
        if waveforms.ndim != 2:
            raise ValueError(f"{type(self).__name__}: expected waveforms [B, T], got shape {tuple(waveforms.shape)}")
        clips = list(waveforms.detach().to("cpu", torch.float32).numpy())
        out = self.feature_extractor(clips, sampling_rate=self.sample_rate, return_tensors="pt")
        return out["input_values"].to(device=waveforms.device, dtype=torch.float32)


class HFAudioEncoder(nn.Module):
    """A ``transformers`` audio model (AST, wav2vec 2.0, HuBERT, WavLM) pooled to clip embeddings ``[B, out_dim]``.

    Args:
        model: hub id (e.g. ``facebook/wav2vec2-base``) or local folder (``save_pretrained`` output).
        pretrained: load the weights (strictly: every weight of the architecture must be in the file, with its
            shape); False builds the same architecture from the config with random weights (the control).
        layer: hidden state to pool (0 = the input to the first Transformer layer, ``i`` = output of layer ``i``,
            negative counts from the top); None: the model's last hidden state (after AST's final LayerNorm).
        revision: hub revision (branch, tag or commit) for a hub id.
        cache_dir: Hugging Face cache folder (None: transformers' default, ``HF_HOME``).
        freeze_feature_encoder: wav2vec 2.0 family only: keep the convolutional feature encoder frozen, as in
            the wav2vec 2.0 fine-tuning recipe.
        gradient_checkpointing: recompute each Transformer layer in the backward pass (less memory).

    Attributes:
        out_dim: ``config.hidden_size``; num_layers: ``config.num_hidden_layers`` (for :meth:`layer_id`);
        family: ``"ast"`` or ``"wav2vec2"``; config, feature_extractor: the transformers objects.
        weights_source: the hub id or folder the weights came from (``@revision`` appended), or
        ``"random init (the architecture of ...)"``; :meth:`describe` names the model for results tables.

    ``forward(input_values) -> [B, out_dim]``: the time (token) mean of the chosen hidden state of the front
    end's output (for AST, the mean over every token, the class and distillation tokens included).

    Raises:
        HFModelNotFoundError: the model, its config or feature extractor cannot be loaded (message: what to fetch
            and where to put it).
        ValueError: an unsupported ``model_type``, a ``layer`` out of range, or weights that do not match the
            architecture (missing or differently shaped; the keys are named).
    """

    no_weight_decay_keys = ("cls_token", "distillation_token", "position_embeddings", "masked_spec_embed",
                            "original0", "weight_g", "rel_attn_embed")
    """Substrings of parameter names trained without weight decay (token and position tables, weight-norm
    magnitudes), besides biases and 1-D parameters (:func:`audio_ssl.utils.optim.layer_decay_groups`)."""

    def __init__(
        self,
        model: str,
        pretrained: bool = True,
        layer: int | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        freeze_feature_encoder: bool = False,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        transformers = _transformers()
        self._init_args = dict(model=model, pretrained=pretrained, layer=layer, revision=revision, cache_dir=cache_dir,
                               freeze_feature_encoder=freeze_feature_encoder,
                               gradient_checkpointing=gradient_checkpointing)
        self.model_id, self.pretrained = str(model), bool(pretrained)
        if self.model_id.startswith(("/", "./", "../", "~")) and not Path(self.model_id).expanduser().is_dir():
            raise HFModelNotFoundError(
                f"Hugging Face model folder {self.model_id!r} does not exist: write it with `hf download HUB_ID "
                f"--local-dir {self.model_id}` (older huggingface_hub: `huggingface-cli download ...`) or with "
                "save_pretrained() of the model and its feature extractor, or pass a hub id")
        if Path(self.model_id).expanduser().is_dir():
            self.model_id = str(Path(self.model_id).expanduser())
        hub = dict(revision=revision, cache_dir=cache_dir)
        try:
            config = transformers.AutoConfig.from_pretrained(self.model_id, **hub)
        except OSError as err:
            raise _not_found(self.model_id, "config", err) from err
        if config.model_type not in HF_AUDIO_MODEL_TYPES:
            raise ValueError(f"{self.model_id}: model_type {config.model_type!r} is not one of the supported audio "
                             f"encoders {sorted(HF_AUDIO_MODEL_TYPES)}")
        self.family = HF_AUDIO_MODEL_TYPES[config.model_type]
        try:
            self.feature_extractor = transformers.AutoFeatureExtractor.from_pretrained(self.model_id, **hub)
        except OSError as err:
            raise _not_found(self.model_id, "feature extractor (preprocessor_config.json)", err) from err
        if pretrained:
            self.model = self._load_pretrained(transformers, **hub)
        else:
            self.model = transformers.AutoModel.from_config(config)
        self.model.float()
        self.config = self.model.config
        #: the hub id or folder, with ``@revision`` when one is given
        self.source = f"{self.model_id}@{revision}" if revision else self.model_id
        #: where the weights came from (named in results): :attr:`source`, or random init
        self.weights_source = self.source if pretrained else f"random init (the architecture of {self.source})"
        self.out_dim = int(config.hidden_size)
        self.num_layers = int(config.num_hidden_layers)
        self.layer = self._check_layer(layer)
        if freeze_feature_encoder:
            if self.family != "wav2vec2":
                raise ValueError(f"{self.model_id}: freeze_feature_encoder applies to the wav2vec 2.0 family only")
            feature_encoder = self.model.feature_extractor  # what the task models' freeze_feature_encoder() does
            freeze = getattr(feature_encoder, "_freeze_parameters", None)
            freeze() if callable(freeze) else feature_encoder.requires_grad_(False)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()

    def describe(self) -> str:
        """The model for results tables: ``HFAudioEncoder facebook/hubert-base-ls960 (hubert)``."""
        return f"{type(self).__name__} {self.model_id} ({self.config.model_type})"

    def _load_pretrained(self, transformers, **hub) -> nn.Module:
        try:
            model, info = transformers.AutoModel.from_pretrained(self.model_id, output_loading_info=True,
                                                                 dtype=torch.float32, **hub)
        except OSError as err:
            raise _not_found(self.model_id, "weights", err) from err
        except RuntimeError as err:  # transformers raises on differently shaped weights
            raise ValueError(f"{self.model_id}: the weights do not match the architecture in its config.json "
                             f"({str(err).splitlines()[0]})") from err
        missing, mismatched = sorted(info.get("missing_keys") or []), sorted(info.get("mismatched_keys") or [])
        errors = list(info.get("error_msgs") or [])
        if missing or mismatched or errors:
            raise ValueError(f"{self.model_id}: the weights do not match the architecture in its config.json: "
                             f"missing {missing}, differently shaped {mismatched}, errors {errors}")
        unexpected = sorted(info.get("unexpected_keys") or [])
        if unexpected:  # e.g. the classifier or quantizer of the checkpoint's task model: not part of the encoder
            log.warning("%s: %d weights of the file are not part of the encoder and are not used: %s%s", self.model_id,
                        len(unexpected), ", ".join(unexpected[:5]), ", ..." if len(unexpected) > 5 else "")
        return model

    def _check_layer(self, layer: int | None) -> int | None:
        if layer is None:
            return None
        states = self.num_layers + 1
        if not -states <= layer < states:
            raise ValueError(f"{self.model_id}: layer={layer} out of range: {self.num_layers} layers, so hidden states "
                             f"0..{self.num_layers} (0 = input to the first layer, i = output of layer i)")
        return layer % states

    def __reduce__(self):
        """Pickle as (constructor arguments, weights, modes): the weight-normed position convolution of the wav2vec
        2.0 family is a torch parametrization, which pickles only through ``state_dict`` (e.g. for ``ddp_spawn``)."""
        modes = {name: module.training for name, module in self.named_modules()}
        frozen = [name for name, param in self.named_parameters() if not param.requires_grad]
        return _rebuild, (dict(self._init_args), self.state_dict(), modes, frozen)

    # ------------------------------------------------------------------ the front end
    @property
    def sampling_rate(self) -> int:
        """The sample rate in Hz the feature extractor (and the model) expect."""
        return int(self.feature_extractor.sampling_rate)

    def build_frontend(self, sample_rate: int) -> HFFeatureFrontend:
        """The front end for data at ``sample_rate`` Hz (ValueError naming both rates when it is not the model's)."""
        return HFFeatureFrontend(self.feature_extractor, sample_rate, source=self.model_id)

    # ------------------------------------------------------------------ features
    def hidden_states(self, input_values: Tensor) -> tuple[Tensor, ...]:
        """Every hidden state ``(L + 1) x [B, N, out_dim]``: the input to layer 0, then each layer's output."""
        return tuple(self.model(input_values=input_values, output_hidden_states=True).hidden_states)

    def forward(self, input_values: Tensor) -> Tensor:
        """The front end's output -> pooled embeddings ``[B, out_dim]`` (mean over time of the chosen state)."""
        if self.layer is None:
            states = self.model(input_values=input_values).last_hidden_state
        else:
            states = self.model(input_values=input_values, output_hidden_states=True).hidden_states[self.layer]
        return states.mean(dim=1)

    # ------------------------------------------------------------------ layer-wise lr decay
    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` (of ``named_parameters()``) for layer-wise lr decay.

        0: the stem (AST: patch, position, class and distillation embeddings; wav2vec 2.0 family: the
        convolutional feature encoder, the feature projection, the convolutional position embedding, the mask
        embedding and, in post-norm models (``do_stable_layer_norm=False``), ``encoder.layer_norm``, which is
        applied before the first layer); ``i + 1``: Transformer layer ``i`` (WavLM's relative position table sits
        in layer 0); ``num_layers``: the final norm (AST's ``layernorm``; ``encoder.layer_norm`` of pre-norm
        models) and anything else on top. Raises ValueError for a name outside this model.
        """
        key = name.removeprefix("model.")
        if key.startswith(_FRONT[self.family]):
            return 0
        if match := _BLOCK.search(key):
            if int(match.group(1)) < self.num_layers:
                return int(match.group(1)) + 1
        if self.family == "ast" and key.startswith("layernorm."):
            return self.num_layers
        if self.family == "wav2vec2" and key.startswith("encoder.layer_norm."):
            return self.num_layers if getattr(self.config, "do_stable_layer_norm", False) else 0
        if self.family == "wav2vec2" and key.startswith("adapter."):
            return self.num_layers
        raise ValueError(f"HFAudioEncoder.layer_id: {name!r} is not a parameter of {self.model_id}")


def _rebuild(init_args: dict, state: dict, modes: dict[str, bool], frozen: list[str]) -> HFAudioEncoder:
    """Unpickle an :class:`HFAudioEncoder` (see its ``__reduce__``): the architecture from its config, then the
    weights, the train/eval mode of every module and the frozen parameters."""
    encoder = HFAudioEncoder(**{**init_args, "pretrained": False})
    encoder.load_state_dict(state)
    if init_args.get("pretrained"):  # the weights just loaded are those of the source
        encoder.weights_source = encoder.source
    for name, module in encoder.named_modules():
        module.training = modes.get(name, module.training)
    params = dict(encoder.named_parameters())
    for name in frozen:
        params[name].requires_grad_(False)
    return encoder
