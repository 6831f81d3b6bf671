"""Augmented views of audio clips for contrastive learning (SimCLR and friends), built on the accelerator.

A view of a clip is made in two stages, both vectorised over the batch with independent randomness per
example (no Python loop over examples):

waveform ``[B, T]`` (the full cached clip)
    1. **random crop**: a contiguous window of ``crop_seconds`` at a random offset. Two views of one
       clip draw their offsets independently, so their windows may overlap (partly or, rarely, fully)
       or be disjoint. Optionally, near-silent windows are redrawn (``crop_tries``/``crop_min_energy``),
       as ESC-50 clips are often padded with digital silence.
    2. **random gain** in ``[-gain_db, gain_db]`` dB.
    3. **background mix**: another clip of the batch (a random derangement, never the clip itself) is
       added at ``mix_db`` dB relative to the view's RMS, with probability ``mix_prob``.
    4. **time shift**: circular shift by up to ``time_shift`` of the crop length.

log-mel spectrogram ``[B, 1, F, T']`` (computed by the method's front end in between)
    5. **random resized crop**: a random time-frequency region (area fraction ``rrc_scale``, aspect
       ``rrc_ratio`` relative to the full spectrogram) is resized back to ``F x T'`` with bilinear
       sampling via ``F.affine_grid``/``F.grid_sample``; stretching along frequency acts as a pitch
       shift, along time as a tempo change.
    6. **SpecAugment**: frequency and time masks up to ``freq_mask``/``time_mask`` of the axis, filled
       with each example's mean.

One knob, ``strength``, scales every range at once (crop length excepted): gain ``+-strength * gain_db``;
mix amplitude times ``strength`` (the dB range moves by ``20 log10(strength)``); shift and mask widths
times ``strength``; resized-crop area bounds ``1 - strength * (1 - bound)`` (floored at 0.01) and log-aspect
range times ``strength``. ``strength = 0`` turns every augmentation off: the two views of a clip then
differ only by their crops. Each individual knob sets its own base range (0 disables it).

Augmentations here do not look at ``module.training``: a method calls them when it wants views
(including on validation clips, under a fixed seed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor, nn

from audio_ssl.features.augment import RandomTimeShift

__all__ = [
    "BYOLAViews",
    "ViewAugmentation",
    "batch_standardize",
    "log_mixup_exp",
    "random_crop",
    "sample_virtual_crop_params",
    "crop_windows",
    "derangement",
    "mix_in",
    "resized_crop",
    "sample_crop_starts",
    "sample_resized_crop_params",
    "spec_mask",
    "window_energy",
]


# ----------------------------------------------------------------------------- waveform stage


def crop_windows(wave: Tensor, starts: Tensor, length: int) -> Tensor:
    """Row ``b`` of the result is ``wave[b, starts[b] : starts[b] + length]`` (``[B, T]`` -> ``[B, length]``)."""
    if wave.dim() != 2:
        raise ValueError(f"crop_windows expects a [B, T] waveform batch, got shape {tuple(wave.shape)}")
    if not 0 < length <= wave.shape[1]:
        raise ValueError(f"crop_windows: length must be in (0, {wave.shape[1]}], got {length}")
    index = starts.to(wave.device).long().unsqueeze(1) + torch.arange(length, device=wave.device)
    return torch.gather(wave, 1, index)


def window_energy(wave: Tensor, starts: Tensor, length: int) -> Tensor:
    """Mean power of the windows ``wave[b, starts[b, k] : starts[b, k] + length]`` for ``starts [B, K]``,
    from prefix sums of ``wave ** 2`` in float64 (``[B, K]``)."""
    power = wave.double().square()
    prefix = F.pad(power.cumsum(1), (1, 0))  # prefix[:, t] = sum of power[:, :t]
    starts = starts.long()
    return (prefix.gather(1, starts + length) - prefix.gather(1, starts)) / length


def sample_crop_starts(wave: Tensor, length: int, tries: int = 1, min_energy: float = 0.0) -> Tensor:
    """Random window starts ``[B]`` (uniform over ``0 .. T - length``), one per example.

    With ``tries > 1`` and ``min_energy > 0``, ``tries`` candidates are drawn per example and the first
    whose mean power is at least ``min_energy`` times the whole clip's mean power is kept (the most
    energetic candidate if none qualifies), which avoids views made of padding silence.
    """
    batch, total = wave.shape
    if tries < 1:
        raise ValueError(f"sample_crop_starts: tries must be >= 1, got {tries}")
    candidates = torch.randint(0, total - length + 1, (batch, tries), device=wave.device)
    if tries == 1 or min_energy <= 0:
        return candidates[:, 0]
    energy = window_energy(wave, candidates, length)
    clip_energy = wave.double().square().mean(1, keepdim=True)
    ok = energy >= min_energy * clip_energy
    first_ok = ok.int().argmax(1)  # first True (0 when none)
    choice = torch.where(ok.any(1), first_ok, energy.argmax(1))
    return candidates.gather(1, choice.unsqueeze(1)).squeeze(1)


def random_crop(wave: Tensor, length: int | None, tries: int = 1, min_energy: float = 0.0,
                owner: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """Random contiguous windows of ``length`` samples of ``wave [B, T]`` (:func:`sample_crop_starts`):
    ``(crops [B, length], starts [B])``; ``length`` None or ``T``: the clips themselves. Raises ValueError for a
    batch that is not ``[B, T]`` or a window longer than the clips (the message names ``owner``'s settings)."""
    who = type(owner).__name__ if owner is not None else "random_crop"
    if wave.dim() != 2:
        raise ValueError(f"{who} expects a [B, T] waveform batch, got shape {tuple(wave.shape)}")
    total = wave.shape[1]
    if length is None or length == total:
        return wave, torch.zeros(wave.shape[0], dtype=torch.long, device=wave.device)
    if length > total:
        rate = getattr(owner, "sample_rate", None)
        seconds = f" = {total / rate:g} s" if rate else ""
        raise ValueError(f"{who}: crop_seconds={getattr(owner, 'crop_seconds', None)} ({length} samples) is longer "
                         f"than the clips ({total} samples{seconds}); lower crop_seconds or raise clip_seconds")
    starts = sample_crop_starts(wave, length, tries, min_energy)
    return crop_windows(wave, starts, length), starts


def derangement(n: int, device: torch.device | str | None = None) -> Tensor:
    """A random permutation of ``0 .. n-1`` without fixed points (a single random n-cycle), for ``n >= 2``."""
    if n < 2:
        raise ValueError(f"derangement needs n >= 2, got {n}")
    order = torch.randperm(n, device=device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return partner


def mix_in(wave: Tensor, partner: Tensor, level_db: Tensor) -> Tensor:
    """``wave + g * partner`` with ``g`` per example such that the added signal sits ``level_db[b]`` dB
    relative to the RMS of ``wave[b]`` (a silent ``wave[b]`` receives nothing)."""
    rms = wave.float().square().mean(-1, keepdim=True).sqrt()
    rms_partner = partner.float().square().mean(-1, keepdim=True).sqrt().clamp_min(1e-8)
    gain = torch.pow(10.0, level_db.float().unsqueeze(-1) / 20.0) * rms / rms_partner
    return wave + (gain * partner.float()).to(wave.dtype)


# ----------------------------------------------------------------------------- spectrogram stage


def sample_resized_crop_params(
    batch: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    p: float = 1.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Affine parameters ``[B, 4]`` = (time fraction, freq fraction, time centre, freq centre) of random
    crops, in the normalised coordinates of ``F.affine_grid`` (the full axis spans ``[-1, 1]``).

    The area fraction is uniform in ``scale``, the log aspect ``log((time fraction) / (freq fraction))``
    uniform in ``log(ratio)``; each side is clipped to the full axis (which can make the area larger
    than drawn). Centres are uniform over the positions that keep the crop inside. With probability
    ``1 - p`` an example gets the identity (1, 1, 0, 0).
    """
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"resized crop: scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"resized crop: ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
    area = torch.empty(batch, device=device).uniform_(scale[0], scale[1])
    log_r = torch.empty(batch, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    time_frac = (area * log_r.exp()).sqrt().clamp(max=1.0)
    freq_frac = (area / log_r.exp()).sqrt().clamp(max=1.0)
    time_c = (torch.rand(batch, device=device) * 2 - 1) * (1 - time_frac)
    freq_c = (torch.rand(batch, device=device) * 2 - 1) * (1 - freq_frac)
    params = torch.stack([time_frac, freq_frac, time_c, freq_c], dim=1)
    if p < 1.0:
        identity = torch.tensor([1.0, 1.0, 0.0, 0.0], device=params.device)
        apply = torch.rand(batch, 1, device=params.device) < p
        params = torch.where(apply, params, identity)
    return params


def resized_crop(spec: Tensor, params: Tensor, padding_mode: str = "border") -> Tensor:
    """Crop the region described by ``params [B, 4]`` (see :func:`sample_resized_crop_params`) out of
    ``spec [B, C, F, T]`` and resize it back to ``F x T`` (bilinear; outside the spectrogram, e.g. for the
    regions of :func:`sample_virtual_crop_params`, ``padding_mode`` ``"border"`` repeats the edges and
    ``"zeros"`` reads zeros).

    Equals ``F.interpolate(region, (F, T), mode="bilinear", align_corners=False)`` of the pixel-aligned
    region, except that the outermost output rows/columns interpolate with the true neighbours outside
    the region instead of repeating its border.
    """
    if spec.dim() != 4:
        raise ValueError(f"resized_crop expects a [B, C, F, T] batch, got shape {tuple(spec.shape)}")
    time_frac, freq_frac, time_c, freq_c = params.to(device=spec.device, dtype=torch.float32).unbind(1)
    zeros = torch.zeros_like(time_frac)
    theta = torch.stack(
        [torch.stack([time_frac, zeros, time_c], 1), torch.stack([zeros, freq_frac, freq_c], 1)], dim=1
    )  # [B, 2, 3]: x (last axis) is time, y is frequency
    grid = F.affine_grid(theta, list(spec.shape), align_corners=False)
    return F.grid_sample(spec.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False).to(
        spec.dtype
    )


def sample_virtual_crop_params(
    batch: int,
    freq_scale: tuple[float, float] = (0.6, 1.5),
    time_scale: tuple[float, float] = (0.6, 1.5),
    virtual_scale: tuple[float, float] = (1.0, 1.5),
    device: torch.device | str | None = None,
) -> Tensor:
    """BYOL-A's random resize crop (Niizumi et al., 2021, Sec. 3.3) as :func:`resized_crop` parameters ``[B, 4]``.

    The spectrogram sits in the middle of a zero "virtual" canvas ``virtual_scale`` = (frequency, time) times
    its size; a region whose sides are uniform fractions ``freq_scale`` / ``time_scale`` of the spectrogram's
    (clipped to the canvas) is taken at a uniform position inside the canvas. Fractions above 1 zoom out; use
    ``resized_crop(spec, params, padding_mode="zeros")``.
    """
    for name, (low, high) in (("freq_scale", freq_scale), ("time_scale", time_scale)):
        if not 0 < low <= high:
            raise ValueError(f"virtual crop: {name} must satisfy 0 < min <= max, got {(low, high)}")
    if min(virtual_scale) < 1:
        raise ValueError(f"virtual crop: virtual_scale must be >= 1 on both axes, got {tuple(virtual_scale)}")
    v_f, v_t = (float(v) for v in virtual_scale)
    freq_frac = torch.empty(batch, device=device).uniform_(*freq_scale).clamp(max=v_f)
    time_frac = torch.empty(batch, device=device).uniform_(*time_scale).clamp(max=v_t)
    freq_c = (torch.rand(batch, device=device) * 2 - 1) * (v_f - freq_frac)
    time_c = (torch.rand(batch, device=device) * 2 - 1) * (v_t - time_frac)
    return torch.stack([time_frac, freq_frac, time_c, freq_c], dim=1)


def log_mixup_exp(spec: Tensor, background: Tensor, ratio: Tensor) -> Tensor:
    """BYOL-A's mixup of log-mel spectrograms in the linear domain: ``log((1 - r) e^x + r e^y)`` per example,
    for ``spec``, ``background`` ``[B, C, F, T]`` and ``ratio [B]`` in ``[0, 1)`` (computed as a stable
    ``logaddexp``)."""
    r = ratio.to(spec.dtype).view(-1, *([1] * (spec.dim() - 1)))
    return torch.logaddexp(torch.log1p(-r) + spec, torch.log(r) + background)


def batch_standardize(spec: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean and unit variance over a whole batch ``[B, C, F, T]`` per channel (BYOL-A's post-normalisation)."""
    dims = [0, *range(2, spec.dim())]
    mean = spec.mean(dims, keepdim=True)
    std = spec.std(dims, keepdim=True)
    return (spec - mean) / (std + eps)


def spec_mask(
    spec: Tensor, freq_width: int, time_width: int, num_freq_masks: int = 1, num_time_masks: int = 1
) -> Tensor:
    """SpecAugment on ``[B, C, F, T]``: masks of width uniform in ``[0, width)`` at uniform positions,
    independent per example (torchaudio's ``mask_along_axis_iid``), filled with each example's mean."""
    keep = torch.ones(spec.shape, device=spec.device, dtype=torch.float32)
    for _ in range(num_freq_masks if freq_width > 0 else 0):
        keep = AF.mask_along_axis_iid(keep, freq_width, 0.0, axis=2)
    for _ in range(num_time_masks if time_width > 0 else 0):
        keep = AF.mask_along_axis_iid(keep, time_width, 0.0, axis=3)
    fill = spec.mean(dim=(-2, -1), keepdim=True)
    return torch.where(keep.bool(), spec, fill)


# ----------------------------------------------------------------------------- the whole pipeline


def bind_sample_rate(views: nn.Module, sample_rate: int) -> nn.Module:
    """Give ``views`` (a module with a ``sample_rate`` attribute, ``None`` = not set yet) the method's rate."""
    if views.sample_rate is not None and views.sample_rate != sample_rate:
        raise ValueError(f"{type(views).__name__} was built for {views.sample_rate} Hz but the method runs at "
                         f"sample_rate={sample_rate}: leave the views' sample_rate unset (the method sets it)")
    views.sample_rate = int(sample_rate)
    return views


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"ViewAugmentation: {name} must be (low, high) with low <= high, got {tuple(value)}")
    return low, high


class ViewAugmentation(nn.Module):
    """One random view per call: crop, gain, background mix and shift on the waveform; then (after the
    caller's front end) random resized crop and SpecAugment on the log-mel. See the module docstring.

    A method takes one as its ``views`` argument and calls :meth:`pair`; :meth:`bind` gives it the method's
    sample rate, so a recipe states the rate once (on the data module).

    Args:
        sample_rate: Rate of the input waveforms (for ``crop_seconds``); ``None``: set by :meth:`bind`.
        crop_seconds: Length of each view; ``None`` keeps the whole clip. Must not exceed the clip.
        strength: Scales every augmentation range (0 disables them all, the crop excepted).
        gain_db: Random gain in ``[-gain_db, gain_db]`` dB (times ``strength``).
        mix_db: Level range (dB relative to the view's RMS) of the mixed-in clip, at ``strength = 1``.
        mix_prob: Probability that a view gets a background clip.
        time_shift: Largest circular shift as a fraction of the crop (times ``strength``, at most 1).
        freq_mask: Largest frequency-mask width as a fraction of the mel bins (times ``strength``).
        time_mask: Largest time-mask width as a fraction of the frames (times ``strength``).
        num_freq_masks: Frequency masks per view.
        num_time_masks: Time masks per view.
        rrc_scale: Area-fraction range of the resized crop at ``strength = 1`` (``max <= 1``).
        rrc_ratio: Aspect range (time fraction / frequency fraction) of the resized crop at ``strength = 1``.
        rrc_prob: Probability that a view gets a resized crop.
        crop_tries: Candidate windows per view for the silence check (1: plain uniform crops).
        crop_min_energy: A candidate must have at least this fraction of the clip's mean power.
    """

    def __init__(
        self,
        sample_rate: int | None = None,
        crop_seconds: float | None = 3.0,
        strength: float = 1.0,
        gain_db: float = 6.0,
        mix_db: tuple[float, float] = (-20.0, -10.0),
        mix_prob: float = 1.0,
        time_shift: float = 0.1,
        freq_mask: float = 0.2,
        time_mask: float = 0.2,
        num_freq_masks: int = 1,
        num_time_masks: int = 1,
        rrc_scale: tuple[float, float] = (0.5, 1.0),
        rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        rrc_prob: float = 1.0,
        crop_tries: int = 1,
        crop_min_energy: float = 0.0,
    ) -> None:
        super().__init__()
        if sample_rate is not None and sample_rate <= 0:
            raise ValueError(f"ViewAugmentation: sample_rate must be positive, got {sample_rate}")
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"ViewAugmentation: crop_seconds must be positive or None, got {crop_seconds}")
        if not (math.isfinite(strength) and strength >= 0):
            raise ValueError(f"ViewAugmentation: strength must be a finite number >= 0, got {strength}")
        for name, value in [("gain_db", gain_db), ("time_shift", time_shift), ("freq_mask", freq_mask),
                            ("time_mask", time_mask), ("crop_min_energy", crop_min_energy)]:
            if value < 0:
                raise ValueError(f"ViewAugmentation: {name} must be >= 0, got {value}")
        for name, value in [("mix_prob", mix_prob), ("rrc_prob", rrc_prob)]:
            if not 0 <= value <= 1:
                raise ValueError(f"ViewAugmentation: {name} must be in [0, 1], got {value}")
        if num_freq_masks < 0 or num_time_masks < 0:
            raise ValueError(
                f"ViewAugmentation: num_freq_masks and num_time_masks must be >= 0, got {num_freq_masks}, "
                f"{num_time_masks}"
            )
        if crop_tries < 1:
            raise ValueError(f"ViewAugmentation: crop_tries must be >= 1, got {crop_tries}")
        scale, ratio = _check_range("rrc_scale", rrc_scale), _check_range("rrc_ratio", rrc_ratio)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"ViewAugmentation: rrc_scale must satisfy 0 < min <= max <= 1, got {tuple(rrc_scale)}")
        if not 0 < ratio[0] <= 1 <= ratio[1]:
            raise ValueError(f"ViewAugmentation: rrc_ratio must satisfy 0 < min <= 1 <= max, got {tuple(rrc_ratio)}")
        self.sample_rate = sample_rate
        self.crop_seconds = crop_seconds
        self.strength = float(strength)
        self.gain_db = float(gain_db)
        self.mix_db = _check_range("mix_db", mix_db)
        self.mix_prob = float(mix_prob)
        self.time_shift = float(time_shift)
        self.freq_mask, self.time_mask = float(freq_mask), float(time_mask)
        self.num_freq_masks, self.num_time_masks = num_freq_masks, num_time_masks
        self.rrc_scale, self.rrc_ratio, self.rrc_prob = scale, ratio, float(rrc_prob)
        self.crop_tries, self.crop_min_energy = crop_tries, float(crop_min_energy)

    def bind(self, sample_rate: int) -> ViewAugmentation:
        """Set the waveforms' rate (the method's ``sample_rate``); returns ``self``. Raises ValueError when
        the views were built for another rate."""
        return bind_sample_rate(self, sample_rate)

    def pair(self, wave: Tensor, frontend: nn.Module) -> tuple[Tensor, Tensor]:
        """Two independent views ``[B, 1, F, T']`` of each clip of ``wave [B, T]`` (SimCLR: separate crops)."""
        return self(wave, frontend), self(wave, frontend)

    # ------------------------------------------------------------------ effective ranges at this strength
    @property
    def crop_samples(self) -> int | None:
        if self.crop_seconds is None:
            return None
        if self.sample_rate is None:
            raise ValueError("ViewAugmentation: crop_seconds needs the sample rate: pass the views to a method "
                             "(which calls bind) or set sample_rate")
        return round(self.crop_seconds * self.sample_rate)

    def effective_rrc(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """``(scale, ratio)`` ranges after scaling by ``strength``; None when the crop is the identity."""
        s = self.strength
        scale = (max(0.01, 1 - s * (1 - self.rrc_scale[0])), max(0.01, 1 - s * (1 - self.rrc_scale[1])))
        ratio = (math.exp(s * math.log(self.rrc_ratio[0])), math.exp(s * math.log(self.rrc_ratio[1])))
        if self.rrc_prob == 0 or (scale == (1.0, 1.0) and ratio == (1.0, 1.0)):
            return None
        return scale, ratio

    # ------------------------------------------------------------------ stages
    def crop(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """Random contiguous windows of ``crop_seconds``: ``(crops [B, L], starts [B])``."""
        return random_crop(wave, self.crop_samples, self.crop_tries, self.crop_min_energy, self)

    def augment_waveform(self, wave: Tensor) -> Tensor:
        """Gain, background mix (partners from this batch) and circular time shift of ``[B, L]`` crops."""
        batch, device, s = wave.shape[0], wave.device, self.strength
        if s * self.gain_db > 0:
            gain_db = torch.empty(batch, device=device).uniform_(-s * self.gain_db, s * self.gain_db)
            wave = wave * torch.pow(10.0, gain_db / 20.0).to(wave.dtype).unsqueeze(1)
        if s > 0 and self.mix_prob > 0 and batch >= 2:
            level = torch.empty(batch, device=device).uniform_(*self.mix_db) + 20 * math.log10(s)
            level = torch.where(torch.rand(batch, device=device) < self.mix_prob, level, float("-inf"))
            wave = mix_in(wave, wave[derangement(batch, device)], level)
        limit = int(min(1.0, s * self.time_shift) * wave.shape[1])
        if limit > 0:
            shifts = torch.randint(-limit, limit + 1, (batch,), device=device)
            wave = RandomTimeShift.shift(wave, shifts, mode="roll")
        return wave

    def augment_spectrogram(self, spec: Tensor) -> Tensor:
        """Random resized crop, then SpecAugment, of a ``[B, 1, F, T]`` log-mel batch."""
        if spec.dim() != 4:
            raise ValueError(f"ViewAugmentation expects a [B, C, F, T] spectrogram, got shape {tuple(spec.shape)}")
        rrc = self.effective_rrc()
        if rrc is not None:
            params = sample_resized_crop_params(spec.shape[0], *rrc, p=self.rrc_prob, device=spec.device)
            spec = resized_crop(spec, params)
        s = self.strength
        freq_width = round(min(1.0, s * self.freq_mask) * spec.shape[2])
        time_width = round(min(1.0, s * self.time_mask) * spec.shape[3])
        if freq_width > 0 or time_width > 0:
            spec = spec_mask(spec, freq_width, time_width, self.num_freq_masks, self.num_time_masks)
        return spec

    def forward(self, wave: Tensor, frontend: nn.Module) -> Tensor:
        """One augmented log-mel view ``[B, 1, F, T']`` of each clip of ``wave [B, T]``."""
        crops, _ = self.crop(wave)
        return self.augment_spectrogram(frontend(self.augment_waveform(crops)))

    def extra_repr(self) -> str:
        return (
            f"crop_seconds={self.crop_seconds}, strength={self.strength}, gain_db={self.gain_db}, "
            f"mix_db={self.mix_db}, mix_prob={self.mix_prob}, time_shift={self.time_shift}, "
            f"freq_mask={self.freq_mask}, time_mask={self.time_mask}, rrc_scale={self.rrc_scale}, "
            f"rrc_ratio={self.rrc_ratio}, rrc_prob={self.rrc_prob}, crop_tries={self.crop_tries}, "
            f"crop_min_energy={self.crop_min_energy}"
        )


class BYOLAViews(nn.Module):
    """BYOL-A's pair of views (Niizumi et al., 2021, "BYOL for Audio", Fig. 2 and Sec. 3): one random crop of each
    clip, its log-mel (the method's front end, whose per-clip normalisation stands for BYOL-A's pre-normalisation),
    then twice, independently: mixup with a background sound, random resize crop and post-normalisation.

    1. **crop** (:func:`random_crop`): one window of ``crop_seconds`` per clip, shared by both views.
    2. **mixup** (:func:`log_mixup_exp`): a spectrogram drawn from a FIFO memory of the last ``memory_size``
       clips (earlier batches, not augmented) is mixed in the linear domain with ratio uniform in
       ``[0, mixup_ratio)``; nothing is mixed while the memory is empty. The memory is not in checkpoints.
    3. **random resize crop** (:func:`sample_virtual_crop_params`, bilinear, zero canvas).
    4. **post-normalisation** (:func:`batch_standardize`) over the batch, when ``post_norm``.

    Args:
        sample_rate: Rate of the waveforms; ``None``: set by the method (:meth:`bind`).
        crop_seconds, crop_tries, crop_min_energy: the crop, as in :class:`ViewAugmentation`.
        mixup_ratio: Largest background ratio (BYOL-A: 0.4).
        memory_size: Clips kept as backgrounds (BYOL-A: 2048).
        freq_scale, time_scale, virtual_scale: the random resize crop (BYOL-A: (0.6, 1.5), (0.6, 1.5), (1.0, 1.5)).
        post_norm: Standardise each view batch.
    """

    def __init__(
        self,
        sample_rate: int | None = None,
        crop_seconds: float | None = None,
        crop_tries: int = 1,
        crop_min_energy: float = 0.0,
        mixup_ratio: float = 0.4,
        memory_size: int = 2048,
        freq_scale: tuple[float, float] = (0.6, 1.5),
        time_scale: tuple[float, float] = (0.6, 1.5),
        virtual_scale: tuple[float, float] = (1.0, 1.5),
        post_norm: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= mixup_ratio < 1.0:
            raise ValueError(f"BYOLAViews: mixup_ratio must be in [0, 1), got {mixup_ratio}")
        if memory_size < 1 or crop_tries < 1:
            raise ValueError(f"BYOLAViews: memory_size and crop_tries must be >= 1, got {memory_size}, {crop_tries}")
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"BYOLAViews: crop_seconds must be positive or None, got {crop_seconds}")
        sample_virtual_crop_params(1, freq_scale, time_scale, virtual_scale)  # validates the ranges
        self.sample_rate = sample_rate
        self.crop_seconds, self.crop_tries, self.crop_min_energy = crop_seconds, crop_tries, float(crop_min_energy)
        self.mixup_ratio, self.memory_size = float(mixup_ratio), int(memory_size)
        self.freq_scale, self.time_scale = tuple(freq_scale), tuple(time_scale)
        self.virtual_scale = tuple(virtual_scale)
        self.post_norm = post_norm
        self.memory: Tensor | None = None
        """The background memory ``[M, C, F, T]`` (``M <= memory_size``), newest last."""

    def bind(self, sample_rate: int) -> BYOLAViews:
        """Set the waveforms' rate (the method's ``sample_rate``); returns ``self``."""
        return bind_sample_rate(self, sample_rate)

    @property
    def crop_samples(self) -> int | None:
        if self.crop_seconds is None:
            return None
        if self.sample_rate is None:
            raise ValueError("BYOLAViews: crop_seconds needs the sample rate: pass the views to a method")
        return round(self.crop_seconds * self.sample_rate)

    def remember(self, spec: Tensor) -> None:
        """Append ``spec [B, C, F, T]`` (detached) to the background memory, keeping the newest ``memory_size``."""
        spec = spec.detach()
        keep = spec if self.memory is None or self.memory.shape[1:] != spec.shape[1:] else torch.cat([self.memory, spec])
        self.memory = keep[-self.memory_size:]

    def mixup(self, spec: Tensor) -> Tensor:
        """Mix a random remembered clip into each example (unchanged while the memory is empty)."""
        memory = self.memory
        if self.mixup_ratio == 0 or memory is None or memory.shape[1:] != spec.shape[1:]:
            return spec
        pick = torch.randint(0, len(memory), (len(spec),), device=spec.device)
        ratio = torch.rand(len(spec), device=spec.device) * self.mixup_ratio
        return log_mixup_exp(spec, memory.to(spec.device)[pick], ratio)

    def augment(self, spec: Tensor) -> Tensor:
        """One view of a log-mel batch ``[B, C, F, T]``: mixup, random resize crop, post-normalisation."""
        if spec.dim() != 4:
            raise ValueError(f"BYOLAViews expects a [B, C, F, T] spectrogram, got shape {tuple(spec.shape)}")
        spec = self.mixup(spec)
        params = sample_virtual_crop_params(len(spec), self.freq_scale, self.time_scale, self.virtual_scale,
                                            device=spec.device)
        spec = resized_crop(spec, params, padding_mode="zeros")
        return batch_standardize(spec) if self.post_norm else spec

    def pair(self, wave: Tensor, frontend: nn.Module) -> tuple[Tensor, Tensor]:
        """Two views ``[B, 1, F, T']`` of one crop of each clip of ``wave [B, T]``; in training mode the clean
        crops' log-mels then join the background memory."""
        crops, _ = random_crop(wave, self.crop_samples, self.crop_tries, self.crop_min_energy, self)
        spec = frontend(crops)
        views = self.augment(spec), self.augment(spec)
        if self.training:  # validation views (under a fixed seed) leave the memory alone
            self.remember(spec)
        return views

    def extra_repr(self) -> str:
        return (f"crop_seconds={self.crop_seconds}, mixup_ratio={self.mixup_ratio}, memory_size={self.memory_size}, "
                f"freq_scale={self.freq_scale}, time_scale={self.time_scale}, virtual_scale={self.virtual_scale}, "
                f"post_norm={self.post_norm}")
