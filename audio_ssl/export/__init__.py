"""Exports of trained audio-ssl checkpoints for use outside the project.

* :mod:`audio_ssl.export.hear`: the HEAR 2021 common API (``load_model``, ``get_scene_embeddings``,
  ``get_timestamp_embeddings``) over any method's ``embed``.
* :mod:`audio_ssl.export.onnx`: classifiers as ONNX graphs (waveform in, class probabilities out), with the
  export-friendly front ends of :mod:`audio_ssl.export.frontends`.

``audio-ssl export`` (:mod:`audio_ssl.tools.export`) is the command line of both.
"""
