"""Emulated BF16/FP16 against real ``torch.autocast("cpu")``, op by op, for both placement tables.

Each Hugging Face model (built from a small config with random weights, seeded; no download) runs its
forward pass (``torch.no_grad()``) on the same token batch twice per format: under ``fpsim.torch.emulate``
with ``bf16-mixed`` / ``fp16-mixed`` and a placement table (``"autocast-cuda"``, ``"autocast-cpu"``), and as
real CPU autocast (``torch.autocast("cpu", dtype)``, the same FP32 weights).  A recording dispatch mode
keeps every ATen op's outputs in both runs; an op's n-th call in one run is matched with its n-th call in
the other (op names whose call counts differ are left out and counted).  For the first product (the
first matrix-product op's output), for each op class of the table under test (matmul, fp32, move,
promote) and for the logits it prints the share of elements bit-identical and the share within one unit
in the last place of the 16-bit format.

    python benchmarks/cpu_autocast_compare.py [--models gpt2,llama,bert] [--tokens 32] [--seed 0]
    python benchmarks/cpu_autocast_compare.py --probe    # the CPU lists, read from the installed torch

Measured (torch 2.13 CPU build, AVX512; transformers 5.24; 2 layers, width 64, batch 2 x 32 tokens, seed 0,
SDPA attention), share of the logits bit-identical, autocast-cuda -> autocast-cpu:

    BF16: GPT-2 43.2 % -> 100 %,  Llama (GQA) 56.7 % -> 100 %,  BERT 89.1 % -> 100 %
    FP16: GPT-2 42.6 % -> 100 %,  Llama (GQA) 46.9 % -> 100 %,  BERT 81.7 % -> 100 %

The first product is bit-identical under both (100 %).  Per op class under autocast-cpu (GPT-2, BF16):
matmul 99.99 %, move 100 %, promote 95.6 % (99.6 % within 1 ulp); what remains there is one kernel:
ATen's CPU ``pow(x, 3)`` (GELU-tanh) on a bfloat16 tensor multiplies in bfloat16, x*x rounded before *x
(two roundings, where the emulation rounds once: 77.5 % of 1e5 random values agree), which GPT-2's
logits absorb here; float16's pow rounds once.  With ``--attention eager`` (softmax and two bmm instead of
SDPA) GPT-2 BF16 reaches 81.5 % (that pow no longer absorbed), FP16 100 %, Llama and BERT 100 %.
autocast-cuda differs from CPU autocast by design: it runs softmax, layer_norm, pow, rsqrt, sum... in
FP32 where the CPU runs them in the precision of their input, and its attention uses FP32's exp where
ATen's CPU kernel uses a fast exponential for 16-bit inputs (``fpsim.torch.products.cpu_fast_exp``).

``--probe`` runs each public function of a list under ``torch.autocast("cpu", torch.bfloat16)`` on float32
and on bfloat16 inputs and prints its class as the installed torch shows it (lower precision: float32 in,
bfloat16 out; fp32: bfloat16 in, float32 out; else promote) beside the class ``"autocast-cpu"`` gives the
ATen operator the function reaches (its first op the table does not promote): the check that the table
is the installed torch's lists.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from cuda_autocast_compare import agreement  # noqa: E402  (share bit-identical, share within 1 ulp)

WIDTH, LAYERS, VOCAB = 64, 2, 97
TABLES = ("autocast-cuda", "autocast-cpu")


def build(name: str, seed: int, attention: str = "sdpa"):
    """A small ``transformers`` model (eval mode; attention ``"sdpa"`` or ``"eager"``) with seeded random weights."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, attn_implementation=attention)
    if name == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=LAYERS, n_embd=WIDTH, n_head=2, n_positions=128, **common))
    elif name == "llama":  # grouped-query attention: 4 query heads, 2 key/value heads
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=LAYERS, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, **common))
    elif name == "bert":
        model = transformers.BertForMaskedLM(transformers.BertConfig(
            num_hidden_layers=LAYERS, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_attention_heads=2,
            max_position_embeddings=128, **common))
    else:
        raise ValueError(f"unknown model {name!r}: use gpt2, llama or bert")
    return model.eval()


def recording():
    """A dispatch mode keeping every op's floating outputs (float32 numpy copies) in ``.outputs``: op -> the
    list of its calls' outputs, in call order."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recording(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.outputs = defaultdict(list)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            tensors = out if isinstance(out, (list, tuple)) else (out,)
            kept = [t.detach().float().numpy().copy() for t in tensors
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
            if kept:
                self.outputs[func].append(kept)
            return out

    return Recording()


def run(model, ids, context):
    """(logits as float32 numpy, the recording) of one forward pass under ``context``."""
    import torch

    mode = recording()
    with torch.no_grad(), context, mode:
        logits = model(input_ids=ids).logits
    return logits.detach().float().numpy(), mode


def compare(emulated, real, table: str, fmt) -> dict:
    """{row name: (elements, identical, within 1 ulp, ops left out)} from two recordings."""
    from fpsim.torch.placement import MATMUL, VIEW, placement_of

    rows = defaultdict(lambda: np.zeros(3))
    left_out = 0
    first = None
    for func, calls in emulated.outputs.items():
        placed = placement_of(func, table).placement
        if placed == VIEW:
            continue
        other = real.outputs.get(func, [])
        if len(other) != len(calls):
            left_out += 1
            continue
        for mine, theirs in zip(calls, other):
            for a, b in zip(mine, theirs):
                if a.shape != b.shape:
                    continue
                same, close = agreement(a, b, fmt)
                rows[placed] += (a.size, same * a.size, close * a.size)
        if placed == MATMUL and first is None:
            first = func
    if first is not None:
        a, b = emulated.outputs[first][0][0], real.outputs[first][0][0]
        same, close = agreement(a, b, fmt)
        rows["first product"] = np.array([a.size, same * a.size, close * a.size])
    return {name: (int(t[0]), t[1] / t[0], t[2] / t[0], left_out) for name, t in rows.items()}


def probe() -> int:
    """Print each probed function's class under the installed torch's CPU autocast beside the table's."""
    import torch
    from torch.nn import functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    from fpsim.torch.placement import FP32, MATMUL, PROMOTE, VIEW, placement_of

    def r(*shape):
        return torch.rand(*shape) + 0.5

    functions = {
        "mm": lambda d: torch.mm(r(3, 4).to(d), r(4, 5).to(d)),
        "addmm": lambda d: torch.addmm(r(5).to(d), r(3, 4).to(d), r(4, 5).to(d)),
        "bmm": lambda d: torch.bmm(r(2, 3, 4).to(d), r(2, 4, 5).to(d)),
        "baddbmm": lambda d: torch.baddbmm(r(2, 3, 5).to(d), r(2, 3, 4).to(d), r(2, 4, 5).to(d)),
        "addbmm": lambda d: torch.addbmm(r(3, 5).to(d), r(2, 3, 4).to(d), r(2, 4, 5).to(d)),
        "mv": lambda d: torch.mv(r(3, 4).to(d), r(4).to(d)),
        "addmv": lambda d: torch.addmv(r(3).to(d), r(3, 4).to(d), r(4).to(d)),
        "addr": lambda d: torch.addr(r(3, 4).to(d), r(3).to(d), r(4).to(d)),
        "dot": lambda d: torch.dot(r(4).to(d), r(4).to(d)),
        "matmul (vector)": lambda d: torch.matmul(r(3, 4).to(d), r(4).to(d)),
        "conv2d": lambda d: F.conv2d(r(1, 2, 5, 5).to(d), r(3, 2, 3, 3).to(d)),
        "prelu": lambda d: F.prelu(r(2, 3).to(d), r(3).to(d)),
        "sdpa": lambda d: F.scaled_dot_product_attention(*(r(1, 2, 3, 4).to(d) for _ in range(3))),
        "softmax": lambda d: F.softmax(r(3, 4).to(d), -1),
        "log_softmax": lambda d: F.log_softmax(r(3, 4).to(d), -1),
        "layer_norm": lambda d: F.layer_norm(r(3, 4).to(d), (4,)),
        "group_norm": lambda d: F.group_norm(r(2, 4, 3).to(d), 2),
        "pow": lambda d: torch.pow(r(3).to(d), 2),
        "exp": lambda d: torch.exp(r(3).to(d)),
        "log": lambda d: torch.log(r(3).to(d)),
        "rsqrt": lambda d: torch.rsqrt(r(3).to(d)),
        "sum": lambda d: torch.sum(r(3).to(d)),
        "cumsum": lambda d: torch.cumsum(r(3).to(d), 0),
        "prod": lambda d: torch.prod(r(3).to(d)),
        "vector_norm": lambda d: torch.linalg.vector_norm(r(3).to(d)),
        "softplus": lambda d: F.softplus(r(3).to(d)),
        "cdist": lambda d: torch.cdist(r(3, 4).to(d), r(2, 4).to(d)),
        "trace": lambda d: torch.trace(r(3, 3).to(d)),
        "cross_entropy": lambda d: F.cross_entropy(r(3, 4).to(d), torch.tensor([0, 1, 2])),
        "nll_loss": lambda d: F.nll_loss(r(3, 4).to(d), torch.tensor([0, 1, 2])),
        "mse_loss": lambda d: F.mse_loss(r(3).to(d), r(3).to(d)),
        "smooth_l1_loss": lambda d: F.smooth_l1_loss(r(3).to(d), r(3).to(d)),
        "bce_with_logits": lambda d: F.binary_cross_entropy_with_logits(r(3).to(d), r(3).to(d) - 0.5),
        "binary_cross_entropy": lambda d: F.binary_cross_entropy(r(3).to(d) * 0.5, r(3).to(d) - 0.5),
        "avg_pool3d": lambda d: F.avg_pool3d(r(1, 1, 4, 4, 4).to(d), 2),
        "reflection_pad1d": lambda d: F.pad(r(1, 2, 4).to(d), (1, 1), mode="reflect"),
        "grid_sample": lambda d: F.grid_sample(r(1, 1, 4, 4).to(d), r(1, 2, 2, 2).to(d) - 1, align_corners=False),
        "gelu": lambda d: F.gelu(r(3).to(d)),
    }

    class FirstOp(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.op = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.op is None and placement_of(func, "autocast-cpu").placement not in (VIEW, PROMOTE):
                self.op = func
            return func(*args, **(kwargs or {}))

    names = {"lower": MATMUL, "fp32": FP32, "promote": PROMOTE}
    disagree = 0
    print(f"{'function':22s} {'fp32 in':>9s} {'bf16 in':>9s} {'torch':>8s}  {'ATen op':50s} table")
    for name, function in functions.items():
        dtypes = []
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                dtypes.append(function(dtype).dtype)
        seen = "lower" if dtypes[0] == torch.bfloat16 else "fp32" if dtypes[1] == torch.float32 else "promote"
        first = FirstOp()
        with first:
            function(torch.float32)
        table = PROMOTE if first.op is None else placement_of(first.op, "autocast-cpu").placement
        disagree += names[seen] != table
        reached = str(first.op or "(promoted ops only)")
        print(f"{name:22s} {str(dtypes[0])[6:]:>9s} {str(dtypes[1])[6:]:>9s} {seen:>8s}  {reached:50s} {table}"
              + ("" if names[seen] == table else "   <- differs"))
    print(f"{disagree} of {len(functions)} functions placed otherwise than the installed torch's CPU autocast")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,llama,bert", help="comma-separated: gpt2, llama, bert")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sequence (batch of 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokens")
    parser.add_argument("--attention", default="sdpa", choices=("sdpa", "eager"), help="the models' attention")
    parser.add_argument("--probe", action="store_true", help="print the CPU lists as the installed torch shows them")
    args = parser.parse_args(argv)
    if args.probe:
        return probe()

    import torch

    import fpsim
    from fpsim.torch import emulate

    for name in args.models.split(","):
        model = build(name, args.seed, args.attention)
        reference = copy.deepcopy(model)
        ids = torch.randint(0, VOCAB, (2, args.tokens), generator=torch.Generator().manual_seed(args.seed))
        for dtype, preset in ((torch.bfloat16, "bf16-mixed"), (torch.float16, "fp16-mixed")):
            fmt = fpsim.get_format("bf16" if dtype == torch.bfloat16 else "fp16")
            real_logits, real = run(reference, ids, torch.autocast("cpu", dtype=dtype))
            print(f"\n{name} ({args.attention} attention) {preset} vs torch.autocast('cpu', {str(dtype)[6:]}), "
                  f"2 x {args.tokens} tokens:")
            print(f"  {'':14s}" + "".join(f"{table + ' identical':>26s}{'<= 1 ulp':>10s}" for table in TABLES))
            results = {}
            for table in TABLES:
                policy = fpsim.Policy.from_dict({"preset": preset, "placement": table})
                logits, emulated = run(model, ids, emulate(policy, model=model))
                results[table] = compare(emulated, real, table, fmt)
                same, close = agreement(logits, real_logits, fmt)
                results[table]["logits"] = (logits.size, same, close, 0)
            for row in ("first product", "matmul", "fp32", "move", "promote", "logits"):
                cells = "".join(f"{results[t][row][1]:26.2%}{results[t][row][2]:10.2%}" if row in results[t]
                                else f"{'-':>26s}{'-':>10s}" for t in TABLES)
                print(f"  {row:14s}{cells}")
            print("  op names left out (call counts differ): "
                  + ", ".join(f"{t} {next(iter(results[t].values()))[3]}" for t in TABLES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
