"""UrbanSound8K: 8732 urban sound excerpts of up to 4 s, 10 classes, 10 official folds (Salamon et al., 2014)."""

from __future__ import annotations

import pandas as pd

from audio_ssl.data.base import FoldAudioDataModule


class UrbanSound8KDataModule(FoldAudioDataModule):
    """UrbanSound8K in its official layout: ``metadata/UrbanSound8K.csv`` and ``audio/fold<k>/<slice_file_name>``.

    The real set mixes 16-bit PCM, 24-bit WAVE_FORMAT_EXTENSIBLE and 32-bit float WAVs, mono and
    stereo, at 8 to 96 kHz: every file is decoded, mixed to mono and resampled once into the cache.
    Clips are padded or cropped to ``clip_seconds`` (4 s): a random crop/offset in training, a
    deterministic one in evaluation. The literature's protocol is 10-fold cross-validation.
    """

    dataset_name = "urbansound8k"
    num_folds = 10
    official_num_classes = 10
    download_url = "https://zenodo.org/record/1203745/files/UrbanSound8K.tar.gz"
    metadata_relpath = "metadata/UrbanSound8K.csv"
    default_clip_seconds = 4.0

    def __init__(self, data_dir: str | None = None, test_fold: int = 10, **kwargs):
        super().__init__(data_dir, test_fold=test_fold, **kwargs)

    def read_metadata(self) -> pd.DataFrame:
        frame = pd.read_csv(self.metadata_path)
        self._require_columns(frame, ["slice_file_name", "fold", "classID", "class"], self.metadata_path)
        audio_dir = self.data_dir / "audio"
        paths = [str((audio_dir / f"fold{int(fold)}" / name).resolve())
                 for name, fold in zip(frame["slice_file_name"], frame["fold"])]
        return pd.DataFrame(
            {
                "path": paths,
                "fold": frame["fold"].astype(int),
                "label": frame["classID"].astype(int),
                "category": frame["class"].astype(str),
            }
        )
