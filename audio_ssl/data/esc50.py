"""ESC-50: 2000 five-second clips, 50 classes, 5 official folds (Piczak, 2015)."""

from __future__ import annotations

import pandas as pd

from audio_ssl.data.base import FoldAudioDataModule


class ESC50DataModule(FoldAudioDataModule):
    """ESC-50 in its official layout: ``meta/esc50.csv`` and ``audio/<filename>``.

    Works on the original 44.1 kHz WAV release and on re-encoded copies (e.g. 16 kHz FLAC) as long as
    the CSV's ``filename`` column names the files. Folds are never reshuffled: clips cut from the same
    source recording share a fold.
    """

    dataset_name = "esc50"
    num_folds = 5
    official_num_classes = 50
    download_url = "https://github.com/karoldvl/ESC-50/archive/master.zip"
    metadata_relpath = "meta/esc50.csv"
    default_clip_seconds = 5.0

    def read_metadata(self) -> pd.DataFrame:
        frame = pd.read_csv(self.metadata_path)
        self._require_columns(frame, ["filename", "fold", "target", "category"], self.metadata_path)
        audio_dir = self.data_dir / "audio"
        return pd.DataFrame(
            {
                "path": [str((audio_dir / name).resolve()) for name in frame["filename"]],
                "fold": frame["fold"].astype(int),
                "label": frame["target"].astype(int),
                "category": frame["category"].astype(str),
            }
        )
