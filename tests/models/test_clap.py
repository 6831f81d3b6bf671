"""CLAP zero-shot (audio_ssl.models.clap) on a tiny random ClapModel saved in the test and loaded back through
the Hub-id path (an offline Hugging Face cache in tmp_path): probabilities against a direct transformers
computation, resampling, true lengths, batch independence, and the loading and label errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from clap_utils import SAMPLE_RATE, TINY_ID, offline_hub, save_tiny_clap  # noqa: E402

from audio_ssl.data.audio import resample  # noqa: E402
from audio_ssl.models.clap import (  # noqa: E402
    ClapLoadError,
    check_labels,
    class_name_to_label,
    load_clap,
    prompts_for,
)

pytestmark = pytest.mark.usefixtures("clap_offline")  # nothing here may reach the Hugging Face Hub

PROMPTS = ["This is a sound of dog.", "This is a sound of siren.", "This is a sound of rain."]


@pytest.fixture
def clap(clap_hub):
    return load_clap(TINY_ID)


def noise(batch: int, seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal((batch, round(seconds * rate)))).astype(np.float32)


def test_hub_id_loads_from_the_cache_and_probabilities_sum_to_one(clap, tiny_clap_folder):
    assert clap.source == TINY_ID and clap.sample_rate == SAMPLE_RATE and clap.max_samples == SAMPLE_RATE
    assert clap.logit_scale == pytest.approx(np.exp(2.5), rel=1e-6)
    probs = clap.zero_shot(noise(3, 0.5, 16000), 16000, PROMPTS)
    assert probs.shape == (3, 3) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert (probs > 0).all()
    local = load_clap(str(tiny_clap_folder))  # the same files as a local folder: the same numbers
    torch.testing.assert_close(local.zero_shot(noise(3, 0.5, 16000), 16000, PROMPTS), probs)


def test_equals_a_direct_transformers_computation(clap, tiny_clap_folder):
    from transformers import ClapModel, ClapProcessor

    model = ClapModel.from_pretrained(tiny_clap_folder).eval()
    processor = ClapProcessor.from_pretrained(tiny_clap_folder)
    audio = noise(2, 0.75, SAMPLE_RATE, seed=3)
    inputs = processor(text=PROMPTS, audio=list(audio), sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
    with torch.no_grad():
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        sound = model.get_audio_features(input_features=inputs["input_features"], is_longer=inputs["is_longer"])
        t, a = text.pooler_output, sound.pooler_output
        cos = (a / a.norm(dim=-1, keepdim=True)) @ (t / t.norm(dim=-1, keepdim=True)).T
        expected = torch.softmax(model.logit_scale_a.exp() * cos, dim=-1)
        forward = model(**inputs).logits_per_audio.softmax(-1)
    ours = clap.zero_shot(audio, SAMPLE_RATE, PROMPTS)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, forward, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(clap.text_embeddings(PROMPTS), torch.nn.functional.normalize(t, dim=-1))
    assert not torch.allclose(ours[0], ours[1])  # the two clips are told apart


def test_16k_input_is_resampled_to_48k(clap):
    x16 = noise(2, 0.6, 16000, seed=1)
    x48 = resample(x16, 16000, SAMPLE_RATE)
    assert x48.shape == (2, 3 * x16.shape[1])
    torch.testing.assert_close(clap.audio_embeddings(x16, 16000), clap.audio_embeddings(x48, SAMPLE_RATE))
    # and against a tone written at each rate (not by the resampler): the same embedding to resampling accuracy
    t16, t48 = np.arange(9600) / 16000, np.arange(28800) / SAMPLE_RATE
    tone16 = (0.3 * np.sin(2 * np.pi * 440 * t16)).astype(np.float32)[None]
    tone48 = (0.3 * np.sin(2 * np.pi * 440 * t48)).astype(np.float32)[None]
    torch.testing.assert_close(clap.audio_embeddings(tone16, 16000), clap.audio_embeddings(tone48, SAMPLE_RATE),
                               rtol=0, atol=2e-3)


def test_lengths_drop_padding_and_batches_do_not_matter(clap):
    audio = noise(3, 1.0, SAMPLE_RATE, seed=2)
    short = audio[1, : SAMPLE_RATE // 3]
    padded = clap.audio_embeddings(audio, SAMPLE_RATE, lengths=[SAMPLE_RATE, SAMPLE_RATE // 3, SAMPLE_RATE])
    alone = clap.audio_embeddings(short[None], SAMPLE_RATE)
    torch.testing.assert_close(padded[1], alone[0])  # the padding never reached the model
    with_padding = clap.audio_embeddings(audio[1:2] * (np.arange(SAMPLE_RATE) < SAMPLE_RATE // 3), SAMPLE_RATE)
    assert not torch.allclose(with_padding, alone)  # it would have: CLAP repeats a short clip instead
    torch.testing.assert_close(padded[2], clap.audio_embeddings(audio[2:], SAMPLE_RATE)[0])


def test_fused_model_is_deterministic_and_batch_independent(tmp_path):
    fused = load_clap(str(save_tiny_clap(tmp_path / "fused", fusion=True)))
    audio = noise(3, 0.8, SAMPLE_RATE, seed=4)
    batch = fused.zero_shot(audio, SAMPLE_RATE, PROMPTS)
    for i in range(3):  # the extractor alone would mark one clip per batch as "longer" at random
        torch.testing.assert_close(fused.zero_shot(audio[i : i + 1], SAMPLE_RATE, PROMPTS)[0], batch[i])


def test_bad_audio_is_refused(clap):
    with pytest.raises(ValueError, match="longer than the 1 s"):
        clap.audio_embeddings(noise(1, 1.5, SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        clap.audio_embeddings(np.zeros(100, np.float32), SAMPLE_RATE)
    bad = noise(1, 0.1, SAMPLE_RATE)
    bad[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clap.audio_embeddings(bad, SAMPLE_RATE)
    with pytest.raises(ValueError, match="lengths"):
        clap.audio_embeddings(noise(2, 0.1, SAMPLE_RATE), SAMPLE_RATE, lengths=[10])
    with pytest.raises(ValueError, match="orig_sr"):
        clap.audio_embeddings(noise(1, 0.1, SAMPLE_RATE), 0)


def test_offline_hub_id_names_what_to_fetch(monkeypatch, tmp_path, tiny_clap_folder):
    offline_hub(monkeypatch, tmp_path, tiny_clap_folder)  # the cache holds only the tiny model; the Hub is off
    with pytest.raises(ClapLoadError) as info:
        load_clap("laion/clap-htsat-unfused")
    message = str(info.value)
    assert "'laion/clap-htsat-unfused'" in message
    assert "hf download laion/clap-htsat-unfused --local-dir DIR" in message
    assert "--model DIR" in message and "--set model=DIR" in message


def test_folder_errors_name_the_folder(tmp_path, tiny_clap_folder):
    with pytest.raises(ClapLoadError, match=f"{tmp_path / 'nowhere'} does not exist"):
        load_clap(str(tmp_path / "nowhere"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ClapLoadError, match="is a file, not a folder"):
        load_clap(str(tmp_path / "file.bin"))
    with pytest.raises(ClapLoadError, match="not a model folder"):
        load_clap(str(tmp_path))
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(tmp_path / "bert")
    with pytest.raises(ClapLoadError, match="'bert' model, not a CLAP model"):
        load_clap(str(tmp_path / "bert"))
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text((tiny_clap_folder / "config.json").read_text())
    with pytest.raises(ClapLoadError, match=f"{incomplete}: the CLAP weights or processor cannot be loaded"):
        load_clap(str(incomplete))


def test_labels_prompts_and_class_names():
    assert class_name_to_label("chirping_birds") == "chirping birds" and class_name_to_label("dog") == "dog"
    assert prompts_for(["dog", "a {b}"], "A {label} sound {x}") == ["A dog sound {x}", "A a {b} sound {x}"]
    with pytest.raises(ValueError, match=r"template 'A sound' has no \{label\}"):
        prompts_for(["dog"], "A sound")
    assert check_labels([" dog ", "siren"]) == ["dog", "siren"]
    with pytest.raises(ValueError, match="x.txt: the label list is empty"):
        check_labels([], "x.txt")
    with pytest.raises(ValueError, match="label 2 of 3 is empty"):
        check_labels(["dog", " ", "rain"])
    with pytest.raises(ValueError, match=r"label 'dog' is given twice \(labels 1 and 3\)"):
        check_labels(["Dog", "rain", "dog"])
