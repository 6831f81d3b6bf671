"""Discrete tokenizers for masked token prediction (BEATs-style) and spectrogram patch utilities."""

from audio_ssl.tokenizers.kmeans import KMeansPatchTokenizer, kmeans, nearest_centroid
from audio_ssl.tokenizers.patches import as_patch_size, crop_to_patch_grid, grid_shape, patchify, unpatchify

__all__ = [
    "KMeansPatchTokenizer",
    "kmeans",
    "nearest_centroid",
    "as_patch_size",
    "crop_to_patch_grid",
    "grid_shape",
    "patchify",
    "unpatchify",
]
