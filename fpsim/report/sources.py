"""Published figures the report cites, each with its source: datasheet peaks and others' measurements.

These are the only numbers in the report that are not computed by the run; the
report prints each one with its source beside it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cited:
    """A number from a publication."""

    value: float
    unit: str
    what: str
    source: str

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit} ({self.what}; source: {self.source})"


A100_DATASHEET = "NVIDIA A100 Tensor Core GPU datasheet (dense throughput, without structured sparsity)"
ARTICLE = "rasbt/LLM-finetuning-scripts, mixed-precision experiment (DistilBERT fine-tuned on IMDb, one A100)"
LITGPT = "LitGPT Falcon-7B inference figures (bf16 against FP32), cited with the same mixed-precision experiment"
ZERO = "Rajbhandari et al. 2020, ZeRO: Memory Optimizations Toward Training Trillion Parameter Models, Sec. 3.1"
MICIKEVICIUS = "Micikevicius et al. 2018, Mixed Precision Training (ICLR), Fig. 3"
DISTILBERT = "Sanh et al. 2019, DistilBERT: 6 layers, hidden 768, 12 heads, 66M parameters, with BERT's FFN width 3072 and vocabulary 30522"

# --- training time of DistilBERT on IMDb (the article under test) ---------------------------
DISTILBERT_FP32_MIN = Cited(21.75, "min", "training time, strict FP32", ARTICLE)
DISTILBERT_TF32_MIN = Cited(8.11, "min", "training time, FP32 with TF32 matmuls", ARTICLE)
DISTILBERT_16MIXED_MIN = Cited(7.25, "min", "training time, 16-mixed (FP16 autocast)", ARTICLE)
DISTILBERT_FP32_GB = Cited(5.37, "GB", "peak training memory, FP32", ARTICLE)
DISTILBERT_16MIXED_GB = Cited(4.31, "GB", "peak training memory, 16-mixed", ARTICLE)
DISTILBERT_TF32_ACC = Cited(92.50, "%", "test accuracy, FP32 with TF32 matmuls, one seed", ARTICLE)
DISTILBERT_16MIXED_ACC = Cited(92.15, "%", "test accuracy, 16-mixed, one seed", ARTICLE)

# --- inference of Falcon-7B ---------------------------------------------------------------
FALCON_BF16_SPEEDUP = Cited(1.29, "x", "Falcon-7B inference speed, bf16 against FP32", LITGPT)
FALCON_FP32_GB = Cited(28.95, "GB", "Falcon-7B inference memory, FP32", LITGPT)
FALCON_BF16_GB = Cited(14.50, "GB", "Falcon-7B inference memory, bf16", LITGPT)

# --- optimizer memory -----------------------------------------------------------------------
ADAM_MIXED_BYTES_PER_PARAM = Cited(16, "bytes/parameter", "mixed-precision Adam: FP16 parameters and gradients "
                                   "(2 + 2) plus FP32 master copy, momentum and variance (4 + 4 + 4)", ZERO)
