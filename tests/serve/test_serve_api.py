"""``audio-ssl serve``'s HTTP API against tiny trained models: every endpoint, both upload forms, long-file
timelines equal to ``classify``'s, what the page draws, every error code, the bounded queue, timeouts, the
token, and the start-up refusals (self-supervised checkpoint, non-loopback without a token)."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient
from serve_helpers import SR, tone, wav_bytes

from audio_ssl.serve.app import ServeSettings, create_app
from audio_ssl.serve.model import ModelNotServableError, ServedModel
from audio_ssl.serve.server import is_loopback
from audio_ssl.serve.server import main as serve_main
from audio_ssl.tools.classify import classify_file


@pytest.fixture(scope="module")
def served(resnet_checkpoint) -> ServedModel:
    return ServedModel(resnet_checkpoint)


@pytest.fixture(scope="module")
def client(served):
    settings = ServeSettings(max_upload_mb=1.0, max_seconds=20.0, max_wait_ms=1.0)
    with TestClient(create_app(served, settings)) as test_client:
        yield test_client


def post_file(client, data: bytes, name: str = "clip.wav", **params):
    return client.post("/v1/classify", files={"file": (name, data, "application/octet-stream")}, params=params)


def assert_error(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    for word in words:
        assert word in body["detail"], body


# ---------------------------------------------------------------------------------------------- endpoints
def test_model_endpoint_describes_the_checkpoint(client, resnet_checkpoint):
    info = client.get("/v1/model").json()
    meta = torch.load(resnet_checkpoint, map_location="cpu", weights_only=True)["audio_ssl"]
    assert info["classes"] == meta["data"]["class_names"] and info["num_classes"] == 5
    assert (info["sample_rate"], info["clip_seconds"], info["hop_seconds"]) == (SR, 1.0, 0.5)
    assert info["method"] == "audio_ssl.methods.supervised.SupervisedClassifier"
    assert info["encoder"] == "AudioResNet" and info["feature_maps"] == "cnn_stages"
    assert info["commit"] == meta["git_commit"] and info["frontend"]["init_args"]["n_mels"] == 32
    assert info["name"] == resnet_checkpoint.parent.parent.name
    assert info["limits"]["max_upload_bytes"] == 2**20 and info["limits"]["max_queue"] == 32


def test_health_docs_and_page_are_served_offline(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert {"/v1/model", "/healthz"} <= set(schema["paths"])
    docs = client.get("/docs").text
    assert "cdn" not in docs.lower() and "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/*SCRIPT*/" not in page.text and "function classify" in page.text and ".bar .fill" in page.text
    for external in ("http://", "https://", "//cdn", "<script src", "<link rel=\"stylesheet\""):
        assert external not in page.text.replace("http://www.w3.org/2000/svg", ""), external


# ---------------------------------------------------------------------------------------------- classify
def test_long_stereo_file_matches_classify_with_a_timeline(client, served, tmp_path):
    """3.3 s of 44.1 kHz stereo: the same 6 windows and probabilities as ``audio-ssl classify``."""
    path = tmp_path / "long.wav"
    sf.write(path, tone(3.3, 44100, channels=2), 44100, subtype="PCM_24")
    response = post_file(client, path.read_bytes(), "long.wav", top_k=5)
    assert response.status_code == 200, response.text
    got = response.json()
    want = classify_file(path, served.bundle, served.class_names, 1.0, 0.5, top_k=5)
    assert (got["windows"], got["sample_rate"], got["channels"], got["model_sample_rate"]) == (6, 44100, 2, SR)
    assert got["duration"] == pytest.approx(3.3, abs=1e-4) and got["model"] == served.name
    assert [c["class"] for c in got["top_k"]] == [c["name"] for c in want["top_k"]]
    np.testing.assert_allclose([c["confidence"] for c in got["top_k"]], [c["prob"] for c in want["top_k"]],
                               rtol=1e-5, atol=1e-6)
    assert [w["start"] for w in got["timeline"]] == pytest.approx([w["start"] for w in want["timeline"]])
    assert [w["end"] for w in got["timeline"]] == pytest.approx([0.0 + s + 1.0 for s in (0, .5, 1, 1.5, 2)] + [3.3])
    for mine, theirs in zip(got["timeline"], want["timeline"]):
        np.testing.assert_allclose([c["confidence"] for c in mine["top_k"]], [c["prob"] for c in theirs["top_k"]],
                                   rtol=1e-5, atol=1e-6)
    assert "spectrogram" not in got and "feature_maps" not in got  # only with include=


def test_base64_json_equals_multipart(client):
    data = wav_bytes(1.7, 22050, channels=2, fmt="FLAC")
    multipart = post_file(client, data, "clip.flac").json()
    for encoded in (base64.b64encode(data).decode(), "data:audio/flac;base64," + base64.b64encode(data).decode()):
        response = client.post("/v1/classify", json={"audio_data": encoded})
        assert response.status_code == 200, response.text
        assert response.json()["top_k"] == multipart["top_k"]
        assert response.json()["timeline"] == multipart["timeline"]


def test_short_clip_top_k_and_formats(client):
    for data, name in ((wav_bytes(0.4, 8000), "short.wav"), (wav_bytes(1.0, 48000, 1, "OGG", "VORBIS"), "c.ogg"),
                       (wav_bytes(1.2, 32000, 3, "AIFF"), "c.aiff")):
        body = post_file(client, data, name, top_k=2).json()
        assert len(body["top_k"]) == 2 and body["top_k"][0]["confidence"] >= body["top_k"][1]["confidence"]
    body = post_file(client, wav_bytes(0.4, 8000), top_k=99).json()
    assert len(body["top_k"]) == 5 and sum(c["confidence"] for c in body["top_k"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("suffix", ["m4a", "webm", "mp3"])
def test_compressed_uploads_decode_like_classify(client, tmp_path, suffix):
    """The formats people record in (decoded by FFmpeg through PyAV, as classify does) are served too."""
    pytest.importorskip("av")
    from tests.encoded_audio import encode

    rng = np.random.default_rng(1)
    path = encode(tmp_path / f"clip.{suffix}", (0.1 * rng.standard_normal((int(1.5 * 48000), 1))).astype(np.float32),
                  48000)
    response = post_file(client, path.read_bytes(), path.name, top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["duration"] == pytest.approx(1.5, abs=0.1) and len(body["top_k"]) == 3
    assert post_file(client, b"\x00" * 2000, f"broken.{suffix}").status_code == 415


def test_include_all_returns_what_the_page_draws(client, served):
    data = wav_bytes(2.5, SR, seed=3)
    body = post_file(client, data, include="all").json()
    wave = sf.read(io.BytesIO(data), dtype="float32")[0]
    spec = body["spectrogram"]
    frames = 1 + len(wave) // 256
    assert spec["shape"] == [32, frames] == [len(spec["values"]), len(spec["values"][0])]
    want = served.model.frontend(torch.from_numpy(wave)[None])[0, 0].numpy()
    np.testing.assert_allclose(spec["values"], want, atol=6e-3)
    waveform = body["waveform"]
    assert waveform["points"] == 1200 and len(waveform["min"]) == len(waveform["max"]) == 1200
    assert max(waveform["max"]) == pytest.approx(wave.max(), abs=1e-4)
    assert min(waveform["min"]) == pytest.approx(wave.min(), abs=1e-4)
    maps = body["feature_maps"]
    assert maps["kind"] == "cnn_stages" and maps["encoder"] == "AudioResNet"
    assert [m["name"] for m in maps["maps"]] == ["stem", "stage1", "stage2"]
    focus = maps["window"]
    top = body["top_k"][0]["index"]
    best = max(range(len(body["timeline"])), key=lambda i: next(
        (c["confidence"] for c in body["timeline"][i]["top_k"] if c["index"] == top), -1))
    assert focus["index"] == best
    start = round(focus["start"] * SR)
    window = torch.from_numpy(wave[start : start + SR])
    encoder = served.model.encoder
    with torch.no_grad():
        x = encoder.stem(served.model.frontend(window[None]))
        expected = [x[0].mean(0)]
        for stage in encoder.stages:
            x = stage(x)
            expected.append(x[0].mean(0))
    for got, want in zip(maps["maps"], expected):
        assert got["shape"] == list(want.shape) and got["reduction"] == "mean over channels"
        np.testing.assert_allclose(got["values"], want.numpy(), atol=1e-4)
    assert [m["channels"] for m in maps["maps"]] == [4, 4, 8]
    only = post_file(client, data, include="waveform").json()
    assert "waveform" in only and "spectrogram" not in only and "feature_maps" not in only


def test_transformer_feature_maps_are_token_norms_on_the_patch_grid(vit_checkpoint):
    served = ServedModel(vit_checkpoint)
    with TestClient(create_app(served)) as client:
        info = client.get("/v1/model").json()
        assert info["encoder"] == "SpectrogramTransformer" and info["feature_maps"] == "token_norms"
        body = post_file(client, wav_bytes(1.0, SR), include="feature_maps").json()
    maps = body["feature_maps"]
    assert maps["kind"] == "token_norms"
    assert [m["name"] for m in maps["maps"]] == ["block1", "block2", "output"]
    n_t = (1 + SR // 256) // 8
    assert all(m["shape"] == [4, n_t] and m["channels"] == 16 for m in maps["maps"])
    encoder = served.model.encoder
    with torch.no_grad():
        wave = sf.read(io.BytesIO(wav_bytes(1.0, SR)), dtype="float32")[0]
        tokens = encoder.forward_features(served.model.frontend(torch.from_numpy(wave)[None]))
    np.testing.assert_allclose(maps["maps"][-1]["values"], tokens[0].norm(dim=-1).reshape(4, n_t).numpy(), atol=1e-3)


# ---------------------------------------------------------------------------------------------- errors
def test_every_error_is_json_naming_the_problem_and_serving_goes_on(client):
    wav = wav_bytes(1.0, SR)
    cases = [
        (client.post("/v1/classify", content=b"hello", headers={"content-type": "text/plain"}),
         415, "unsupported_media_type", "text/plain"),
        (post_file(client, b"this is not audio at all" * 10, "notes.txt"), 415, "unsupported_audio", "notes.txt"),
        (post_file(client, wav[: len(wav) // 2], "cut.wav"), 422, "corrupt_audio", "truncated"),
        (post_file(client, b"", "empty.wav"), 422, "empty_audio", "no bytes"),
        (post_file(client, wav_bytes(0.0, SR), "zero.wav"), 422, "corrupt_audio", "zero.wav"),
        (client.post("/v1/classify", json={"audio_data": "%%% not base64"}), 400, "invalid_base64", "base64"),
        (client.post("/v1/classify", json={"audio": "x"}), 400, "missing_audio", "audio_data"),
        (client.post("/v1/classify", json={"audio_data": 12}), 400, "bad_request", "base64 string"),
        (client.post("/v1/classify", content=b"{nope", headers={"content-type": "application/json"}),
         400, "bad_request", "not valid JSON"),
        (client.post("/v1/classify", data={"name": "x"}), 415, "unsupported_media_type", "urlencoded"),
        (client.post("/v1/classify", files={"note": (None, "just a field")}), 400, "missing_audio", "'file'"),
        (post_file(client, wav, include="spectrogram,colour"), 400, "bad_request", "colour"),
        (post_file(client, wav, top_k=0), 400, "bad_request", "top_k"),
        (post_file(client, wav, top_k="many"), 400, "bad_request", "top_k"),
        (post_file(client, wav_bytes(21.0, 8000), "long.wav"), 413, "audio_too_long", "21.0 s"),
        (post_file(client, b"\0" * (2**20 + 1), "big.wav"), 413, "upload_too_large", "--max-upload-mb"),
        (client.get("/v2/classify"), 404, "not_found", "/v2/classify"),
        (client.delete("/v1/model"), 405, "method_not_allowed", "DELETE"),
    ]
    for response, status, code, word in cases:
        assert_error(response, status, code, word)
    # a body that streams past the limit without a Content-Length (chunked)
    chunks = (b"\0" * 65536 for _ in range(20))
    streamed = client.post("/v1/classify", content=chunks, headers={"content-type": "application/json"})
    assert_error(streamed, 413, "upload_too_large", "more than")
    good = post_file(client, wav)
    assert good.status_code == 200 and len(good.json()["top_k"]) == 5
    assert client.get("/healthz").json()["in_flight"] == 0


def test_model_failure_is_a_500_and_the_server_keeps_serving(served, monkeypatch):
    calls = {"n": 0}
    real = served.score

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(batch)

    monkeypatch.setattr(served, "score", flaky)
    with TestClient(create_app(served), raise_server_exceptions=False) as client:
        assert_error(post_file(client, wav_bytes(1.0, SR)), 500, "internal_error", "simulated")
        assert post_file(client, wav_bytes(1.0, SR)).status_code == 200


# ---------------------------------------------------------------------------------------------- load behaviour
class GatedScore:
    """The model's score function held until ``gate`` is set (to fill the queue on purpose)."""

    def __init__(self, served: ServedModel):
        self.real, self.gate, self.batches = served.score, threading.Event(), []

    def __call__(self, batch):
        self.gate.wait(10)
        self.batches.append(len(batch))
        return self.real(batch)


async def _in_process(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await requests(http)


def _files(data: bytes) -> dict:
    return {"file": ("clip.wav", data, "audio/wav")}


def test_bounded_queue_gives_503_and_timeouts_504(served, monkeypatch):
    gated = GatedScore(served)
    monkeypatch.setattr(served, "score", gated)
    app = create_app(served, ServeSettings(max_queue=2, timeout=2.0, max_wait_ms=0))
    data = wav_bytes(1.0, SR)

    async def scenario(http):
        first = [asyncio.create_task(http.post("/v1/classify", files=_files(data))) for _ in range(2)]
        while app.state.admission.active < 2:
            await asyncio.sleep(0.01)
        refused = await http.post("/v1/classify", files=_files(data))
        health = (await http.get("/healthz")).json()
        gated.gate.set()
        done = await asyncio.gather(*first)
        gated.gate.clear()  # now nothing is scored before the 2 s timeout
        late = await http.post("/v1/classify", files=_files(data))
        gated.gate.set()
        after = await http.post("/v1/classify", files=_files(data))
        return refused, health, done, late, after

    refused, health, done, late, after = asyncio.run(_in_process(app, scenario))
    assert_error(refused, 503, "queue_full", "--max-queue")
    assert refused.headers["retry-after"] == "1"
    assert health["in_flight"] == 2 and health["refused"] == 1
    assert [r.status_code for r in done] == [200, 200]
    assert_error(late, 504, "timeout", "2 s")
    assert after.status_code == 200
    assert app.state.admission.active == 0


def test_concurrent_requests_are_batched_and_equal_one_by_one(served, monkeypatch):
    gated = GatedScore(served)
    monkeypatch.setattr(served, "score", gated)
    app = create_app(served, ServeSettings(max_batch=16, max_wait_ms=20))
    clips = [wav_bytes(1.0 + 0.5 * i, SR, seed=i) for i in range(6)]  # 1, 2, 3, 4, 5, 6 windows: 21

    async def scenario(http):
        tasks = [asyncio.create_task(http.post("/v1/classify", files=_files(c))) for c in clips]
        while app.state.admission.active < len(clips):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # every request decoded and queued
        gated.gate.set()
        return await asyncio.gather(*tasks)

    responses = asyncio.run(_in_process(app, scenario))
    assert all(r.status_code == 200 for r in responses)
    windows = sum(r.json()["windows"] for r in responses)
    assert windows == 21 and sum(gated.batches) == windows
    assert max(gated.batches) == 16 and len(gated.batches) <= 3  # windows of several requests share batches
    for clip, response in zip(clips, responses):
        wave = sf.read(io.BytesIO(clip), dtype="float32")[0]
        starts = served.window_starts(len(wave))
        alone = np.stack([served.score(served.windows(wave, starts)[i : i + 1])[0] for i in range(len(starts))])
        for window, probs in zip(response.json()["timeline"], alone):
            for entry in window["top_k"]:
                assert entry["confidence"] == pytest.approx(float(probs[entry["index"]]), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------- token
def test_token_is_required_on_every_request(served):
    with TestClient(create_app(served, ServeSettings(token="s3cret-token"))) as client:
        for path in ("/", "/healthz", "/v1/model", "/docs", "/openapi.json"):
            assert_error(client.get(path), 401, "unauthorized", "Bearer")
        missing = post_file(client, wav_bytes(1.0, SR))
        assert_error(missing, 401, "unauthorized", "token")
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(client.get("/healthz", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized", "not valid")
        assert client.get("/healthz", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert client.get("/v1/model", headers={"X-API-Token": "s3cret-token"}).status_code == 200
        ok = client.post("/v1/classify", headers={"Authorization": "Bearer s3cret-token"},
                         files=_files(wav_bytes(1.0, SR)))
        assert ok.status_code == 200
        page = client.get("/?token=s3cret-token")  # the browser's way in: a same-site cookie for the page's requests
        assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
        assert client.get("/v1/model").status_code == 200  # the client now carries the cookie
        client.cookies.clear()
        assert client.get("/v1/model").status_code == 401


def test_loopback_detection():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.4", "::", "example.org"]))


def test_start_up_refusals(ssl_checkpoint, resnet_checkpoint, capsys, monkeypatch):
    monkeypatch.delenv("AUDIO_SSL_SERVE_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--checkpoint", str(resnet_checkpoint), "--host", "0.0.0.0"])
    assert exit_info.value.code == 2
    assert "--token" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--checkpoint", str(ssl_checkpoint)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "SimCLR" in err and "without a classifier head" in err and err.startswith("audio-ssl serve: error:")
    with pytest.raises(ModelNotServableError, match="does not exist"):
        ServedModel(resnet_checkpoint.parent / "missing.ckpt")
