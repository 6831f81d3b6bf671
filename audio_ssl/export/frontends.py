"""Export-friendly front ends: the STFT as a strided convolution with a fixed DFT basis.

``torch.stft`` (complex output) and the per-clip loop of :func:`torchaudio.compliance.kaldi.fbank` do not
export to ONNX with a dynamic batch. The modules here compute the same features with one ``conv1d`` whose
kernels are the real and imaginary parts of the windowed DFT (Smith, *Spectral Audio Signal Processing*, the
DFT as a filter bank), followed by the same power, mel projection and log as the original front end:

* :class:`ConvLogMelSpectrogram` equals :class:`audio_ssl.features.logmel.LogMelSpectrogram` (centred frames,
  zero padding, Hann window of ``win_length`` centred in ``n_fft``).
* :class:`ConvKaldiFbank` equals :class:`audio_ssl.features.fbank.BEATsFbank`'s features (Kaldi fbank with
  ``snip_edges``, DC removal, pre-emphasis 0.97 and the Povey window, all linear per frame, so they are folded
  into the DFT kernels; 25 ms / 10 ms frames, FFT size rounded up to a power of two, Kaldi mel banks).
* :class:`ConvASTFeatures` equals ``transformers.ASTFeatureExtractor`` (the front end of an AST
  :class:`~audio_ssl.models.hf_audio.HFAudioEncoder`): the same Kaldi fbank with a Hann window on the unscaled
  waveform, zero-padded or cut to ``max_length`` frames, then ``(x - mean) / (2 * std)``.
* :class:`WaveformNormalize` equals ``transformers.Wav2Vec2FeatureExtractor`` (wav2vec 2.0, HuBERT, WavLM): each
  clip to zero mean and unit variance, ``(x - mean) / sqrt(var + 1e-7)``, when ``do_normalize``.

The kernels are computed in float64 and stored in float32; the features agree with the FFT path to float32
rounding (the tests in ``tests/export/test_frontends.py`` bound the difference). :func:`export_frontend` maps a
method's front end to its equivalent here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

from audio_ssl.features.fbank import BEATsFbank
from audio_ssl.features.logmel import LogMelSpectrogram

__all__ = ["ConvASTFeatures", "ConvKaldiFbank", "ConvLogMelSpectrogram", "WaveformNormalize", "dft_kernels",
           "export_frontend"]


def dft_kernels(frame_map: Tensor, n_fft: int) -> Tensor:
    """Conv1d weights ``[2 * (n_fft // 2 + 1), 1, L]`` of the one-sided DFT of ``frame_map @ frame``.

    ``frame_map [n, L]`` (float64) is the linear map from a frame of ``L`` input samples to the ``n <= n_fft``
    samples that are zero-padded on the right to ``n_fft`` and transformed (window, DC removal, ...). The
    first half of the output channels are the real parts, the second half the imaginary parts.
    """
    n = frame_map.shape[0]
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    t = torch.arange(n, dtype=torch.float64)[None, :]
    angle = 2 * math.pi * k * t / n_fft
    basis = torch.cat([torch.cos(angle), -torch.sin(angle)])  # [2F, n]
    return (basis @ frame_map).float().unsqueeze(1)


def _power(frames: Tensor) -> Tensor:
    """``[B, 2F, frames]`` (real parts, then imaginary parts) -> power ``[B, F, frames]``."""
    re, im = frames.chunk(2, dim=1)
    return re.square() + im.square()


class ConvLogMelSpectrogram(LogMelSpectrogram):
    """:class:`LogMelSpectrogram` (same arguments, same output ``[B, 1, n_mels, frames]``) with the STFT computed
    as ``conv1d`` over the zero-padded waveform with stride ``hop_length``; exports to ONNX with dynamic batch
    and length."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float64)
        left = (self.n_fft - self.win_length) // 2
        frame_map = torch.zeros(self.n_fft, self.n_fft, dtype=torch.float64)
        frame_map[left : left + self.win_length, left : left + self.win_length] = torch.diag(window)
        self.register_buffer("dft", dft_kernels(frame_map, self.n_fft), persistent=False)

    @classmethod
    def like(cls, frontend: LogMelSpectrogram) -> ConvLogMelSpectrogram:
        """The convolutional twin of ``frontend`` (every setting copied)."""
        return cls(sample_rate=frontend.sample_rate, n_fft=frontend.n_fft, hop_length=frontend.hop_length,
                   win_length=frontend.win_length, n_mels=frontend.n_mels, f_min=frontend.f_min,
                   f_max=frontend.f_max, log=frontend.log, top_db=frontend.top_db, amin=frontend.amin,
                   eps=frontend.eps, normalize=frontend.normalize, mean=frontend.mean, std=frontend.std)

    def power_mel(self, wave: Tensor) -> Tensor:
        """Mel power spectrogram ``[B, n_mels, frames]`` in float32, as :meth:`LogMelSpectrogram.power_mel`."""
        if wave.dim() != 2:
            raise ValueError(
                f"ConvLogMelSpectrogram expects a waveform batch of shape [B, T], got shape {tuple(wave.shape)}"
            )
        pad = self.n_fft // 2
        x = F.pad(wave.float().unsqueeze(1), (pad, pad))
        power = _power(F.conv1d(x, self.dft.float(), stride=self.hop_length))
        return torch.matmul(self.mel_fbanks.float(), power)


class ConvKaldiFbank(nn.Module):
    """BEATs' normalised Kaldi fbank, batched: waveforms ``[B, T]`` in [-1, 1] -> ``[B, frames, mels]``.

    The defaults are BEATs'; ``window_type="hanning"``, ``scale=1.0`` and ``mean=None`` give
    ``torchaudio.compliance.kaldi.fbank(waveform, window_type="hanning")`` of each clip (AST's fbank), unnormalised.

    Equal to :func:`audio_ssl.features.fbank.beats_fbank` with the same arguments (``frames = 1 + (T - W) //
    S`` for a window of ``W`` and a shift of ``S`` samples; ``T >= W`` is required). Steps per frame, as in
    Kaldi's ``compute-fbank-feats`` defaults used by BEATs: remove the frame's mean, pre-emphasis
    ``y[i] = x[i] - 0.97 x[i - 1]`` (``y[0] = x[0] - 0.97 x[0]``), Povey window (``hann ** 0.85``, symmetric),
    zero-pad to the next power of two, power spectrum, Kaldi mel banks (20 Hz to Nyquist), ``log(max(., eps))``;
    then ``(fbank - mean) / (2 * std)`` (skipped when ``mean`` is None). The waveform is multiplied by ``scale``
    first (BEATs: ``2 ** 15``, 16-bit integer units); ``window_type`` is Kaldi's ``"povey"`` or ``"hanning"``
    (symmetric Hann).
    """

    PREEMPHASIS = 0.97
    LOW_FREQ = 20.0

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, mean: float | None = 15.41663, std: float | None = 6.55582, *,
                 window_type: str = "povey", scale: float = 2.0**15) -> None:
        super().__init__()
        if window_type not in ("povey", "hanning"):
            raise ValueError(f"ConvKaldiFbank: window_type must be 'povey' or 'hanning', got {window_type!r}")
        self.window_type, self.scale = window_type, float(scale)
        self.sample_rate, self.num_mel_bins = sample_rate, num_mel_bins
        self.frame_length_ms, self.frame_shift_ms = frame_length_ms, frame_shift_ms
        self.mean, self.std = mean, std
        self.window = int(sample_rate * frame_length_ms / 1000)
        self.shift = int(sample_rate * frame_shift_ms / 1000)
        if self.window < 2 or self.shift < 1:
            raise ValueError(f"ConvKaldiFbank: frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} "
                             f"give a window of {self.window} and a shift of {self.shift} samples at {sample_rate} Hz")
        self.n_fft = 1 << (self.window - 1).bit_length()
        n = self.window
        dc = torch.eye(n, dtype=torch.float64) - 1.0 / n
        pre = torch.eye(n, dtype=torch.float64)
        pre[1:, :-1] -= self.PREEMPHASIS * torch.eye(n - 1, dtype=torch.float64)
        pre[0, 0] -= self.PREEMPHASIS
        window = torch.hann_window(n, periodic=False, dtype=torch.float64)
        if window_type == "povey":
            window = window.pow(0.85)
        self.register_buffer("dft", dft_kernels(window[:, None] * (pre @ dc), self.n_fft), persistent=False)
        banks, _ = kaldi.get_mel_banks(num_mel_bins, self.n_fft, float(sample_rate), self.LOW_FREQ, 0.0,
                                       100.0, -500.0, 1.0)
        self.register_buffer("mel_banks", F.pad(banks.float(), (0, 1)), persistent=False)  # [mels, n_fft // 2 + 1]

    @classmethod
    def like(cls, frontend: BEATsFbank) -> ConvKaldiFbank:
        """The convolutional twin of a :class:`BEATsFbank` (every setting copied)."""
        return cls(frontend.sample_rate, frontend.num_mel_bins, frontend.frame_length_ms, frontend.frame_shift_ms,
                   frontend.mean, frontend.std)

    def num_frames(self, num_samples: int) -> int:
        return 0 if num_samples < self.window else 1 + (num_samples - self.window) // self.shift

    def forward(self, waveforms: Tensor) -> Tensor:
        """``[B, T]`` -> (normalised) log fbank ``[B, frames, num_mel_bins]`` (float32)."""
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must have shape [batch, samples], got {tuple(waveforms.shape)}")
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling() and waveforms.size(1) < self.window:
            raise ValueError(f"clips of {waveforms.size(1)} samples are shorter than one {self.frame_length_ms} ms "
                             f"fbank window ({self.window} samples at {self.sample_rate} Hz)")
        x = (waveforms.float() * self.scale).unsqueeze(1)
        power = _power(F.conv1d(x, self.dft.float(), stride=self.shift))  # [B, n_fft // 2 + 1, frames]
        mel = torch.matmul(self.mel_banks, power).transpose(1, 2)  # [B, frames, mels]
        eps = torch.finfo(torch.float32).eps
        log_mel = mel.clamp_min(eps).log()
        return log_mel if self.mean is None else (log_mel - self.mean) / (2 * self.std)


class ConvASTFeatures(nn.Module):
    """``transformers.ASTFeatureExtractor`` batched and exportable: waveforms ``[B, T]`` -> ``[B, max_length,
    num_mel_bins]``.

    As the extractor (with torchaudio): ``torchaudio.compliance.kaldi.fbank(clip, sample_frequency=sample_rate,
    window_type="hanning", num_mel_bins=num_mel_bins)`` (25 ms / 10 ms frames, ``snip_edges``, dither 0, DC removal,
    pre-emphasis 0.97, power spectrum, Kaldi mel banks from 20 Hz, ``log(max(., float32 eps))``, no energy, no HTK
    compatibility; the waveform is not rescaled) as a :class:`ConvKaldiFbank`; zero-padded at the end or cut to
    ``max_length`` frames; then ``(x - mean) / (2 * std)`` (padded frames included) when ``do_normalize``.
    Needs ``T >= `` one window (400 samples at 16 kHz).
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 128, max_length: int = 1024,
                 do_normalize: bool = True, mean: float = -4.2677393, std: float = 4.5689974) -> None:
        super().__init__()
        self.fbank = ConvKaldiFbank(sample_rate, num_mel_bins, mean=None, std=None, window_type="hanning", scale=1.0)
        self.max_length, self.do_normalize = int(max_length), bool(do_normalize)
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def like(cls, feature_extractor) -> ConvASTFeatures:
        """The twin of a ``transformers.ASTFeatureExtractor`` (every setting copied)."""
        fe = feature_extractor
        return cls(int(fe.sampling_rate), int(fe.num_mel_bins), int(fe.max_length), bool(fe.do_normalize),
                   float(fe.mean), float(fe.std))

    @property
    def window(self) -> int:
        return self.fbank.window

    def num_frames(self, num_samples: int) -> int:
        return self.max_length if num_samples >= self.fbank.window else 0

    def forward(self, waveforms: Tensor) -> Tensor:
        fbank = self.fbank(waveforms)  # [B, frames, mels]
        fbank = F.pad(fbank, (0, 0, 0, self.max_length))[:, : self.max_length]
        return (fbank - self.mean) / (2 * self.std) if self.do_normalize else fbank


class WaveformNormalize(nn.Module):
    """``transformers.Wav2Vec2FeatureExtractor`` (wav2vec 2.0, HuBERT, WavLM) batched and exportable: waveforms
    ``[B, T]`` -> ``[B, T]`` float32, each clip ``(x - mean) / sqrt(var + 1e-7)`` (population variance) when
    ``do_normalize``, unchanged otherwise.

    That is the extractor's formula without an attention mask, which is how :class:`HFFeatureFrontend` calls it
    (no padding); for a batch of equal-length clips the mask would be all ones, so the result is the same.
    """

    EPS = 1e-7

    def __init__(self, do_normalize: bool = True) -> None:
        super().__init__()
        self.do_normalize = bool(do_normalize)

    @classmethod
    def like(cls, feature_extractor) -> WaveformNormalize:
        return cls(bool(feature_extractor.do_normalize))

    def forward(self, waveforms: Tensor) -> Tensor:
        if waveforms.dim() != 2:
            raise ValueError(f"waveforms must have shape [batch, samples], got {tuple(waveforms.shape)}")
        x = waveforms.float()
        if not self.do_normalize:
            return x
        centred = x - x.mean(dim=1, keepdim=True)
        return centred / torch.sqrt(centred.square().mean(dim=1, keepdim=True) + self.EPS)


def _hf_frontend(frontend: nn.Module) -> nn.Module | None:
    """The twin of an :class:`~audio_ssl.models.hf_audio.HFFeatureFrontend`'s extractor (None: not one we know)."""
    from audio_ssl.models.hf_audio import HFFeatureFrontend

    if not isinstance(frontend, HFFeatureFrontend):
        return None
    import transformers

    extractor = frontend.feature_extractor
    if isinstance(extractor, transformers.ASTFeatureExtractor):
        return ConvASTFeatures.like(extractor)
    if isinstance(extractor, transformers.Wav2Vec2FeatureExtractor) and int(extractor.feature_size) == 1:
        return WaveformNormalize.like(extractor)
    raise ValueError(f"no export-friendly equivalent of the Hugging Face feature extractor "
                     f"{type(extractor).__name__} of {frontend.source}: supported are ASTFeatureExtractor and "
                     "Wav2Vec2FeatureExtractor")


def export_frontend(frontend: nn.Module) -> nn.Module:
    """The export-friendly equivalent of a method's front end: :class:`ConvLogMelSpectrogram` for a
    :class:`LogMelSpectrogram`, :class:`ConvKaldiFbank` for a :class:`BEATsFbank` (BEATs' fbank, returning only the
    features), :class:`ConvASTFeatures` / :class:`WaveformNormalize` for an
    :class:`~audio_ssl.models.hf_audio.HFFeatureFrontend` with an ``ASTFeatureExtractor`` /
    ``Wav2Vec2FeatureExtractor``. Raises ValueError naming any other front end type."""
    if isinstance(frontend, ConvLogMelSpectrogram | ConvKaldiFbank | ConvASTFeatures | WaveformNormalize):
        return frontend
    if (twin := _hf_frontend(frontend)) is not None:
        return twin
    if isinstance(frontend, LogMelSpectrogram):
        return ConvLogMelSpectrogram.like(frontend)
    if isinstance(frontend, BEATsFbank):
        return ConvKaldiFbank.like(frontend)
    raise ValueError(f"no export-friendly equivalent of the front end {type(frontend).__module__}."
                     f"{type(frontend).__qualname__}: supported are LogMelSpectrogram, BEATsFbank "
                     "and HFFeatureFrontend (AST, wav2vec 2.0, HuBERT, WavLM)")
