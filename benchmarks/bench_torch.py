"""Cost of fpsim.torch.emulate: an emulated training step as a ratio to the plain FP32 torch step, on char-gpt
and on two Hugging Face models built from small configs.

The step: zero the gradients, forward a batch of the pydoc text, cross-entropy on the logits, backward, AdamW
update (plain torch, outside the emulation).  The models, all on the pydoc characters (random weights, seed 0,
dropout 0):

* ``char-gpt``: ``fpsim.torch.models``, default GPTConfig (2 layers, width 64, 4 heads, context 64), batch 32;
* ``gpt2``: transformers' ``GPT2LMHeadModel`` (2 layers, width 128, 4 heads, context 64: Conv1D layers calling
  ``torch.addmm``), batch 8 x 64 tokens;
* ``llama``: transformers' ``LlamaForCausalLM`` (2 layers, width 128, 4 heads and 4 key/value heads, SwiGLU
  width 344, RMSNorm, rotary positions), batch 8 x 64 tokens.  ``--gqa`` gives it 2 key/value heads
  (grouped-query attention, which 16-bit policies could not run before issue 20).

Emulated under ``fp32``, ``bf16-mixed``, ``fp16-amp`` and ``fp8-current`` with native accumulation, and
``bf16-mixed`` with a recorder; the plain FP32 step and real ``torch.autocast("cpu", bfloat16)`` are timed in
the same run.  Each figure is the best of ``--repeats`` steps (and the median, whose distance from the best
shows the machine's noise), the cases interleaved round by round so that a load change hits all of them; wall
time and the process's CPU time (with one thread, the work done whatever the other processes on the machine
do).  Targets (issues 12 and 20): ``bf16-mixed`` <= 2x and ``fp8-current`` <= 3x the FP32 step.

    python benchmarks/bench_torch.py [--models char-gpt gpt2 llama] [--repeats 10] [--threads 1] [--gqa]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from fpsim.sim.data import load_data
from fpsim.sim.recorder import Recorder
from fpsim.torch import emulate
from fpsim.torch.models import get_model

REFERENCE = "fp32 (plain torch)"
CONTEXT = 64
HF_BATCH = 8
HF_WIDTH = 128


def char_gpt(dataset, gqa):
    spec = get_model("char-gpt")
    config = spec.make_config(dataset)
    return spec.build(config, torch.Generator().manual_seed(0)), 32


def gpt2(dataset, gqa):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=dataset.vocab_size, n_positions=CONTEXT, n_embd=HF_WIDTH, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    return GPT2LMHeadModel(config), HF_BATCH


def llama(dataset, gqa):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=dataset.vocab_size, hidden_size=HF_WIDTH, intermediate_size=344,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2 if gqa else 4,
                         max_position_embeddings=CONTEXT)
    return LlamaForCausalLM(config), HF_BATCH


MODELS = {"char-gpt": char_gpt, "gpt2": gpt2, "llama": llama}


def logits_of(output):
    """The logits of a model's output: a tensor, or a Hugging Face ``ModelOutput``'s ``logits``."""
    return output if isinstance(output, torch.Tensor) else output.logits


def cases_for(model, x, y, vocab_size):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(context=None):
        optimizer.zero_grad(set_to_none=True)
        with context() if context is not None else torch.enable_grad():
            loss = F.cross_entropy(logits_of(model(x)).reshape(-1, vocab_size), y.reshape(-1))
            loss.backward()
        optimizer.step()

    recorder = Recorder()
    recorder.start_step(0)
    cases = {REFERENCE: lambda: step(),
             "torch.autocast cpu bf16 (real)": lambda: step(lambda: torch.autocast("cpu", dtype=torch.bfloat16))}
    for policy in ("fp32", "bf16-mixed", "fp16-amp", "fp8-current"):
        cases[f"emulate {policy}"] = lambda policy=policy: step(lambda: emulate(policy, model=model))
    cases["emulate bf16-mixed + recorder"] = lambda: step(lambda: emulate("bf16-mixed", model=model,
                                                                           recorder=recorder))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch (and numba) threads (default 1: on a shared machine, OpenMP teams of 2+ "
                             "threads wait for each other and the wall times measure the load)")
    parser.add_argument("--gqa", action="store_true", help="llama with 2 key/value heads for its 4 query heads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_data("pydoc")
    rng = np.random.default_rng(0)
    runs = {}
    for name in args.models:
        model, batch = MODELS[name](dataset, args.gqa)
        x, y = (torch.from_numpy(np.ascontiguousarray(a)) for a in dataset.batch(rng, batch, CONTEXT))
        runs[name] = (batch, cases_for(model, x, y, dataset.vocab_size))
    failed = {}
    for name, (_, cases) in runs.items():  # warm-up: numba compilation, allocator, autocast caches
        for case_name, case in list(cases.items()):
            try:
                case()
            except Exception as error:  # a case the emulation cannot run yet is reported, not timed
                failed[(name, case_name)] = f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"
                del cases[case_name]
    torch.set_num_threads(args.threads)  # numba's first parallel launch resets OpenMP's thread count
    wall = {(m, c): [] for m, (_, cases) in runs.items() for c in cases}
    cpu = {key: [] for key in wall}
    time.sleep(0.5)
    for _ in range(args.repeats):
        for name, (_, cases) in runs.items():
            for case_name, case in cases.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                case()
                wall[(name, case_name)].append(time.perf_counter() - start)
                cpu[(name, case_name)].append(time.process_time() - start_cpu)
    print(f"training step, {torch.get_num_threads()} torch thread(s), best (median) of {args.repeats}; wall and "
          "CPU time, each as a ratio to the plain FP32 step's best (median):")
    for name, (batch, cases) in runs.items():
        print(f"{name} (batch {batch} x {CONTEXT} characters)")
        reference = {kind: (min(t[(name, REFERENCE)]), np.median(t[(name, REFERENCE)]))
                     for kind, t in (("wall", wall), ("cpu", cpu))}
        for case_name in cases:
            cells = []
            for kind, t in (("wall", wall), ("cpu", cpu)):
                best, median = min(t[(name, case_name)]), np.median(t[(name, case_name)])
                cells.append(f"{kind} {best * 1e3:7.1f} ms {best / reference[kind][0]:5.2f}x "
                             f"({median / reference[kind][1]:5.2f}x)")
            print(f"  {case_name:<32} " + "   ".join(cells))
        for (model_name, case_name), why in failed.items():
            if model_name == name:
                print(f"  {case_name:<32} failed: {why}")


if __name__ == "__main__":
    main()
