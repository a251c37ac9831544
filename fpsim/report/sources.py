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

# --- FP16 overflow in real models (cited beside the transformer_overflow measurement) ---------------
HF_T5_ISSUE = "huggingface/transformers issue 5651 (https://github.com/huggingface/transformers/issues/5651)"
HF_T5_PR = "huggingface/transformers PR 10956 (https://github.com/huggingface/transformers/pull/10956)"
HF_PEGASUS_ISSUE = "huggingface/transformers issue 12225 (https://github.com/huggingface/transformers/issues/12225)"
BLOOM = ("The Technology Behind BLOOM Training, the BLOOM Megatron-DeepSpeed write-up "
         "(https://huggingface.co/blog/bloom-megatron-deepspeed)")
T5_FFN_OUTPUT = Cited(66246, "", "largest FFN output of T5 fine-tuned in FP16 (> 65504; the loss became NaN)",
                      HF_T5_ISSUE)
T5_HIDDEN_STATES = Cited(2.75e5, "", "largest |hidden state| of T5 in FP16 (range -2.77e5 to 2.75e5; a LayerNorm "
                                     "variance of 6.9e8): \"trained in bfloat16 isn't going to work with float16\"",
                         HF_T5_PR)
PEGASUS_FC2 = Cited(6.06e4, "", "Pegasus fc2 output in FP16, next to FP16's 65504", HF_PEGASUS_ISSUE)
BLOOM_FP16 = Cited(104, "B parameters", "BLOOM's 104B trial run in FP16, \"a complete failure\"; BLOOM was then "
                                        "trained in BF16", BLOOM)

# --- FP8 and MX training (cited beside the fp8 measurements) --------------------------------------
TORCHAO_DELAYED_REMOVED = ("pytorch/ao PR 1753, \"delete delayed scaling from torchao.float8\" (2025-02-21), after "
                           "issue 1680: \"lack of real world use cases for delayed/static scaling (dynamic scaling is "
                           "required for higher accuracy)\" (https://github.com/pytorch/ao/pull/1753)")
MXFP8_RECIPES = ("Mishra, Stosic, Layton 2025, Recipes for Pre-training LLMs with MXFP8 (arXiv 2506.08027): the OCP "
                 "specification's rounding of the scale \"can lead to divergence when pre-training an LLM\"; "
                 "rounding it up (round-to-infinity) pre-trains an 8B model on 15T tokens in MXFP8")
TE_DELAYED_SCALING = ("NVIDIA Transformer Engine, recipe.DelayedScaling (amax_history_len 1024, margin 0, "
                      "amax_compute_algo \"max\"; transformer_engine/common/recipe/delayed_scaling.cu)")
OCP_MX = "Open Compute Project, OCP Microscaling Formats (MX) Specification v1.0, sections 5 and 6.3"

# --- accumulation in GPU tensor cores (cited beside the hardware measurements) ---------------------------
DEEPSEEK_V3 = ("DeepSeek-AI 2024, DeepSeek-V3 Technical Report (arXiv 2412.19437), section 3.3.2 \"Increasing "
               "Accumulation Precision\": H800 tensor cores keep \"around 14 bits\" in FP8 GEMMs; partial results "
               "are promoted to FP32 registers on CUDA cores every N_C = 128 elements")
DEEPSEEK_MAX_ERROR = Cited(2, "%", "\"a maximum relative error of nearly 2%\" of an FP8 GEMM with K = 4096 (a "
                                   "preliminary test; its inputs and error metric are not given)", DEEPSEEK_V3)
DEEPSEEK_PROMOTION = Cited(128, "elements", "N_C, the interval of promotion to FP32", DEEPSEEK_V3)
TE_SPLIT_ACCUMULATOR = ("NVIDIA Transformer Engine, recipe.Float8CurrentScaling / DelayedScaling: fp8_gemm_fprop "
                        "use_split_accumulator=False, fp8_gemm_dgrad and fp8_gemm_wgrad True "
                        "(transformer_engine/common/recipe/__init__.py)")

# --- the frontier recipes (cited beside the recipes measurements) ------------------------------------------
NVFP4_PRETRAINING = ("NVIDIA 2025, Pretraining Large Language Models with NVFP4 (arXiv 2509.25149): a 12B model "
                     "trained on 10T tokens with 16 x 16 weight scaling, stochastic rounding of the gradients, "
                     "16-point random Hadamard transforms on the weight-gradient inputs and about the last 15% of the "
                     "layers in BF16, each component ablated; MMLU-Pro 62.58% against FP8's 62.62%")
NVFP4_GAP = Cited(1.5, "%", "NVFP4's loss above FP8's over the 12B run: \"within 1-1.5%\" (the upper end)",
                  NVFP4_PRETRAINING)
DEEPSEEK_V3_FP8 = ("DeepSeek-AI 2024, DeepSeek-V3 Technical Report (arXiv 2412.19437), section 3.3 and appendix B: "
                   "E4M3 everywhere, activations scaled per 1 x 128 tile, weights per 128 x 128 block; validated on "
                   "models of about 16B and 230B parameters; block-wise (128 x 128) quantization of the activation "
                   "gradients made a 16B model diverge (appendix B.2)")
DEEPSEEK_FP8_GAP = Cited(0.25, "%", "the relative loss error of FP8 training against BF16, \"consistently below "
                                    "0.25%\"", DEEPSEEK_V3_FP8)
