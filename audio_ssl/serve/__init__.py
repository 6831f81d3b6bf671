"""Serving a trained classifier over HTTP (``audio-ssl serve``): an inference API and a web page.

* :mod:`audio_ssl.serve.model`: the model rebuilt from its checkpoint alone (``classify``'s loader), decoding of
  uploads, windows, and what the page draws (log-mel, waveform, each encoder stage's feature map).
* :mod:`audio_ssl.serve.batcher`: one worker thread scoring the windows of concurrent requests in batches.
* :mod:`audio_ssl.serve.app`: the FastAPI application (routes, token, upload limits, bounded queue, JSON errors).
* :mod:`audio_ssl.serve.server`: the command line; uvicorn serves the app.
* ``static/``: the web page (plain HTML, CSS and JavaScript, inlined into ``GET /``: nothing from elsewhere).
"""
