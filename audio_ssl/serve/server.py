"""``audio-ssl serve``: an HTTP inference API and a web page for a trained classifier.

    audio-ssl serve --checkpoint runs/supervised_cpu/checkpoints/last.ckpt            # http://127.0.0.1:8000
    AUDIO_SSL_SERVE_TOKEN=secret audio-ssl serve --checkpoint last.ckpt --host 0.0.0.0

The checkpoint is enough (class names, sample rate, clip length and front end travel in it, as for
``audio-ssl classify``). A self-supervised checkpoint without a classifier is refused at start-up, as is a
non-loopback ``--host`` without a token (``--token`` or ``$AUDIO_SSL_SERVE_TOKEN``); with a token every request
must carry it. Requests are queued (at most ``--max-queue``; more get 503) and their windows scored in batches
of up to ``--max-batch`` on one model. See :mod:`audio_ssl.serve.app` for the routes and error codes.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys

from audio_ssl.serve.app import ServeSettings

__all__ = ["TOKEN_ENV", "build_parser", "is_loopback", "main"]

TOKEN_ENV = "AUDIO_SSL_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _positive(kind):
    def parse(value: str):
        number = kind(value)
        if not (number > 0 and math.isfinite(number)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return number
    return parse


def build_parser() -> argparse.ArgumentParser:
    defaults = ServeSettings()
    parser = argparse.ArgumentParser(prog="audio-ssl serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint (.ckpt) of a trained classifier")
    parser.add_argument("--config", default=None,
                        help="experiment YAML, only for checkpoints that do not describe their model")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: %(default)s; any other needs a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 = any free port)")
    parser.add_argument("--token", default=None,
                        help=f"token every request must carry (default: ${TOKEN_ENV}); required off loopback")
    parser.add_argument("--name", default=None, help="model name reported to clients (default: the run folder)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=_positive(int), default=None,
                        help="torch threads of the model worker (default: torch's)")
    parser.add_argument("--hop-seconds", type=_positive(float), default=None,
                        help="hop between windows of long recordings (default: half the clip length)")
    parser.add_argument("--top-k", type=_positive(int), default=defaults.top_k,
                        help="classes returned when a request does not say (default: %(default)s)")
    parser.add_argument("--max-batch", type=_positive(int), default=defaults.max_batch,
                        help="most windows per forward pass; 1 scores one window at a time (default: %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="how long a batch that is not full waits for more requests (default: %(default)s)")
    parser.add_argument("--max-queue", type=_positive(int), default=defaults.max_queue,
                        help="requests queued or running at once; more get 503 (default: %(default)s)")
    parser.add_argument("--max-upload-mb", type=_positive(float), default=defaults.max_upload_mb,
                        help="largest request body in MiB, 413 above (default: %(default)s)")
    parser.add_argument("--max-seconds", type=_positive(float), default=defaults.max_seconds,
                        help="longest recording in seconds, 413 above (default: %(default)s)")
    parser.add_argument("--timeout", type=_positive(float), default=defaults.timeout,
                        help="seconds a request may take, 504 after (default: %(default)s)")
    parser.add_argument("--decode-workers", type=_positive(int), default=defaults.decode_workers,
                        help="threads decoding uploads (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: %(default)s)")
    return parser


def _fail(message: str) -> SystemExit:
    print(f"audio-ssl serve: error: {message}", file=sys.stderr)
    return SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        raise _fail(f"--host {args.host} is reachable from other machines: pass --token (or set ${TOKEN_ENV}) "
                    "so that every request must carry it, or bind 127.0.0.1")
    if args.max_wait_ms < 0:
        raise _fail(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    import uvicorn

    from audio_ssl.serve.app import create_app
    from audio_ssl.serve.model import ModelNotServableError, ServedModel

    try:
        served = ServedModel(args.checkpoint, args.config, args.device, args.name, args.hop_seconds)
    except ModelNotServableError as err:
        raise _fail(str(err)) from None
    settings = ServeSettings(max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, timeout=args.timeout,
                             top_k=args.top_k, token=token, threads=args.threads, decode_workers=args.decode_workers)
    app = create_app(served, settings)
    print(f"audio-ssl serve: {served.name}: {len(served.class_names)} classes, {served.sample_rate} Hz, "
          f"{served.clip_seconds:g} s windows; http://{args.host}:{args.port}/ (docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=5,
                limit_concurrency=max(64, 4 * args.max_queue))
