"""Emulated FP16/BF16 against real autocast: char-gpt's forward and backward, element by element.

The same char-gpt (default size, seed 0) and the same batch of pydoc windows
run twice per format: on the CPU under ``fpsim.torch.emulate`` with the
``fp16-mixed`` / ``bf16-mixed`` policy (FP32 master weights, autocast's op
placement), and on the device under ``torch.autocast(device, dtype)`` with
the same FP32 weights.  For the logits (the head's output, a 16-bit product),
the loss and every parameter's gradient it prints the share of elements that
are bit-identical and the share within one unit in the last place of the
16-bit format (the spacing of FP16/BF16 at the larger of the two magnitudes).
Differences come from accumulation order (cuBLAS's tensor-core sums against
float32 BLAS on the CPU) and from kernels that autocast runs in FP32 but
computes differently (softmax, layer norm, GELU).

    python benchmarks/cuda_autocast_compare.py [--device cuda] [--batch 16] [--seed 0]

Without a CUDA device it prints one line and exits with status 0 (nothing to
compare).  ``--device cpu`` compares against ``torch.autocast("cpu")``, the
check that this script itself works where there is no GPU.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def spacing(values: np.ndarray, fmt) -> np.ndarray:
    """The spacing of ``fmt`` at |values|: 2^(e - p + 1), e = floor(log2|x|) clamped below at emin."""
    exponent = np.frexp(np.abs(values).astype(np.float64))[1] - 1
    return np.ldexp(1.0, np.maximum(exponent, fmt.emin) - fmt.precision + 1)


def agreement(emulated: np.ndarray, real: np.ndarray, fmt) -> tuple[float, float]:
    """(share bit-identical, share within one ulp of ``fmt``) of two float32 arrays of one shape."""
    emulated, real = emulated.astype(np.float32).ravel(), real.astype(np.float32).ravel()
    identical = emulated.view(np.uint32) == real.view(np.uint32)
    larger = np.maximum(np.abs(emulated), np.abs(real))
    close = np.abs(emulated.astype(np.float64) - real) <= spacing(larger, fmt)
    return float(identical.mean()), float((close | identical).mean())


def forward_backward(model, x, y, context, *, backward_inside: bool):
    """Logits, loss and every parameter's gradient (float32 numpy, by parameter name) of one step.

    ``backward_inside``: run the backward pass inside ``context`` (the emulation
    must see the backward operations; autocast is left before it, as its
    documentation asks: backward operations run in the dtype their forward chose).
    """
    from torch.nn import functional as F

    model.zero_grad(set_to_none=True)
    with context:
        logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        if backward_inside:
            loss.backward()
    if not backward_inside:
        loss.backward()
    out = {"logits": logits.detach().float().cpu().numpy(), "loss": loss.detach().float().cpu().numpy()}
    for name, param in model.named_parameters():
        grad = param.grad if param.grad is not None else param.detach() * 0
        out[f"grad {name}"] = grad.detach().float().cpu().numpy()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (CPU autocast, a self-check)")
    parser.add_argument("--batch", type=int, default=16, help="pydoc windows in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch")
    args = parser.parse_args(argv)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("cuda_autocast_compare: no CUDA device here (torch.cuda.is_available() is False); nothing compared")
        return 0
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu, got {args.device!r}")

    import fpsim
    from fpsim.sim.data import load_data
    from fpsim.torch import emulate
    from fpsim.torch.engine import seed_of
    from fpsim.torch.models import MODELS

    spec = MODELS["char-gpt"]
    data = load_data(spec.data)
    config = spec.make_config(data)
    init_seed, batch_seed = np.random.SeedSequence(args.seed).spawn(2)
    model = spec.build(config, torch.Generator().manual_seed(seed_of(init_seed)))
    x, y = (torch.from_numpy(a) for a in data.batch(np.random.default_rng(batch_seed), args.batch, config.block_size))
    if args.device == "cuda":
        # cuBLAS may otherwise use TF32 for the FP32 products that autocast leaves in FP32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    device_model = spec.build(config, torch.Generator().manual_seed(seed_of(init_seed))).to(args.device)
    print(f"char-gpt {config}, batch {args.batch} x {config.block_size} pydoc characters, seed {args.seed}; "
          f"real: torch.autocast({args.device!r}) on {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}")
    for dtype, policy in ((torch.float16, "fp16-mixed"), (torch.bfloat16, "bf16-mixed")):
        fmt = fpsim.get_format("fp16" if dtype == torch.float16 else "bf16")
        emulated = forward_backward(model, x, y, emulate(policy, model=model), backward_inside=True)
        real = forward_backward(device_model, x.to(args.device), y.to(args.device),
                                torch.autocast(args.device, dtype=dtype), backward_inside=False)
        print(f"\n{policy} emulated vs autocast {str(dtype).removeprefix('torch.')}:")
        print(f"  {'tensor':44s} {'elements':>9s} {'identical':>10s} {'<= 1 ulp':>9s}")
        totals = np.zeros(3)
        for name in emulated:
            same, close = agreement(emulated[name], real[name], fmt)
            size = emulated[name].size
            totals += (size, same * size, close * size)
            print(f"  {name:44s} {size:9d} {same:10.2%} {close:9.2%}")
        print(f"  {'all':44s} {int(totals[0]):9d} {totals[1] / totals[0]:10.2%} {totals[2] / totals[0]:9.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
