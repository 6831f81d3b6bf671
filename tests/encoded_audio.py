"""Compressed test recordings generated in the test, with FFmpeg's encoders through PyAV (the decoder classify
uses for these formats), so no binary fixture is stored. ``pytest.importorskip("av")`` before use."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# suffix -> PyAV encoder; the container comes from the suffix
ENCODERS = {"m4a": "aac", "aac": "aac", "webm": "libopus", "mp3": "libmp3lame", "wma": "wmav2"}


def encode(path: Path, audio: np.ndarray, rate: int) -> Path:
    """Write float32 audio [frames, channels] (1 or 2 channels) to ``path`` with the encoder of its suffix."""
    import av

    channels = audio.shape[1]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(ENCODERS[path.suffix.lstrip(".")], rate=rate,
                                layout="mono" if channels == 1 else "stereo")
        stream.bit_rate = 128_000
        planar = stream.codec_context.codec.audio_formats[0].is_planar
        for i in range(0, len(audio), 1024):  # PyAV refits the frames to the encoder's frame size
            chunk = np.ascontiguousarray(audio[i : i + 1024])
            data = chunk.T.copy() if planar else chunk.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format="fltp" if planar else "flt", layout=stream.layout.name)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
