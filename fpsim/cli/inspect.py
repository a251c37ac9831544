"""Will a model train in FP16, BF16 or FP8, and with which loss scale?  Measure it on one FP32 step.

Runs one forward and backward pass of a built-in model in plain FP32 torch on
one batch of its data, then prints, per module and tensor kind (activations:
the module's output; activation_grads: the gradient with respect to it;
weight_grads: its parameters' gradients):

  inf/nan              values already inf or NaN in FP32 (counted, left out below)
  max|x|, min|x|>0     the largest magnitude and the smallest non-zero finite one
  uf / sub / of %      shares that each format would flush to zero, hold as
                       subnormals (both of the non-zero values), or overflow
  hr                   headroom: log2(format max / max|x|) in binades; negative
                       means the largest value overflows

and the window of loss scales 2^k that keeps every FP16 gradient finite with
the least underflow, or says that none can when gradients are already inf or
NaN (see fpsim.torch.inspect for the exact definitions).
Needs PyTorch: pip install "fpsim[torch]".

Examples:
  fpsim inspect --model char-gpt
  fpsim inspect --model cnn --formats fp16,e4m3 --plot cnn.png
  fpsim inspect --model mlp --batch-size 256 --seed 1
"""

from __future__ import annotations

import os

import numpy as np

from . import UsageError
from ..sim.vocabulary import MODELS
MEMORY_BUDGET = 4 << 30
"""Most bytes an inspection may take (its estimate: ``fpsim.torch.inspect.kept_values`` times
``BYTES_PER_KEPT_VALUE``); a larger --batch-size is refused before its batch is drawn."""
SEEDS = 1 << 64
"""Seeds are integers in [0, 2^64): numpy's generators take no negative seed, torch's none beyond."""


def configure(parser):
    parser.add_argument("--model", required=True, choices=list(MODELS),
                        help="; ".join(f"{m.name}: the {m.label} on {m.data}" for m in MODELS.values())
                             + " (the mlp as a torch module with the numpy engine's weights)")
    parser.add_argument("--formats", default="fp16,bf16,e4m3,e5m2",
                        help="comma-separated formats to measure against (names, aliases or eXmY; "
                             "default fp16,bf16,e4m3,e5m2)")
    parser.add_argument("--batch-size", type=int, default=32, help="examples in the batch (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the batch (default 0)")
    parser.add_argument("--plot", metavar="PATH", help="also write histograms of log2|x| per kind, with each "
                                                       "format's flush, subnormal and overflow limits, to PATH "
                                                       "(its extension names the format: .png, .pdf, .svg...)")


def run(args) -> int:
    try:
        from ..torch import inspect
        from ..torch.inspect import plot_format
    except ImportError as error:
        raise UsageError(str(error)) from None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if not 0 <= args.seed < SEEDS:
        raise UsageError(f"--seed must be an integer in [0, 2^64), got {args.seed}")
    formats = [name.strip() for name in args.formats.split(",") if name.strip()]
    if not formats:
        raise UsageError("--formats needs at least one format, e.g. fp16,bf16")
    if args.plot and (os.path.isdir(args.plot) or not os.path.isdir(os.path.dirname(os.path.abspath(args.plot)))):
        raise UsageError(f"--plot {args.plot}: give a file in an existing folder, e.g. char-gpt.png")
    if args.plot:
        try:
            plot_format(args.plot)
        except ValueError as error:
            raise UsageError(f"--plot {args.plot}: {error}") from None
    model, inputs, loss_fn = build(args.model, args.batch_size, args.seed)
    result = inspect(model, inputs, loss_fn=loss_fn, formats=formats)
    print(f"{args.model}: one FP32 forward and backward, batch of {args.batch_size}, seed {args.seed}")
    print(result.table())
    if args.plot:
        try:
            result.plot(args.plot)
        except OSError as error:
            raise UsageError(f"cannot write --plot {args.plot}: {error.strerror or error}") from None
        print(f"figure written to {args.plot}")
    return 0


def build(name: str, batch_size: int, seed: int):
    """(model, inputs, loss_fn) of a built-in model, its weights and one batch of its data from ``seed``.

    A batch beyond the training examples (mlp, cnn: drawn without replacement) or beyond ``MEMORY_BUDGET``
    is refused (UsageError, one line) before it is drawn."""
    import torch

    from ..sim.data import load_data
    from ..torch.models import get_model

    rng = np.random.default_rng(seed)
    block_size = None
    dataset = load_data(MODELS[name].data)
    if MODELS[name].engine == "numpy":
        model = _torch_mlp(dataset.inputs, dataset.outputs, rng)
    else:
        spec = get_model(name)
        config = spec.make_config(dataset)
        model = spec.build(config, torch.Generator().manual_seed(seed))
        block_size = getattr(config, "block_size", None)
    if dataset.task != "language-model" and batch_size > len(dataset.y_train):
        raise UsageError(f"--batch-size {batch_size} exceeds the {len(dataset.y_train)} training examples of "
                         f"{dataset.name!r}: choose at most {len(dataset.y_train)}")
    _check_memory(name, model, dataset, block_size, batch_size)
    return (model, *_batch(dataset, rng, batch_size, block_size))


def _batch(dataset, rng, batch_size: int, block_size):
    """(inputs, loss_fn) of one batch of ``dataset`` drawn from ``rng``: ``batch_size`` windows of ``block_size``
    characters for a language model, else ``batch_size`` training examples without replacement."""
    import torch
    from torch.nn import functional as F

    if dataset.task == "language-model":
        x, y = dataset.batch(rng, batch_size, block_size)
        x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        return x, lambda logits: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    rows = rng.choice(len(dataset.y_train), size=batch_size, replace=False)
    x = torch.from_numpy(dataset.x_train[rows].astype(np.float32))
    y = torch.from_numpy(dataset.y_train[rows].astype(np.int64))
    return x, lambda logits: F.cross_entropy(logits, y)


def _check_memory(name: str, model, dataset, block_size, batch_size: int) -> None:
    """Refuse a batch whose inspection would take more than ``MEMORY_BUDGET``.  The values an inspection keeps
    are a + b * batch (per-example activations and gradients, plus the weight gradients): a and b come from
    batches of one and two examples (their own random stream, so that the run's batch is unchanged)."""
    from ..torch.inspect import BYTES_PER_KEPT_VALUE, kept_values

    kept = []
    for n in (1, 2):
        inputs, loss_fn = _batch(dataset, np.random.default_rng(0), n, block_size)
        kept.append(kept_values(model, inputs, loss_fn=loss_fn))
    one, two = kept
    per_example, fixed = two - one, 2 * one - two
    need = (fixed + per_example * batch_size) * BYTES_PER_KEPT_VALUE
    if need > MEMORY_BUDGET:
        largest = max(1, (MEMORY_BUDGET // BYTES_PER_KEPT_VALUE - fixed) // max(per_example, 1))
        raise UsageError(f"--batch-size {batch_size}: inspecting {name} on {batch_size} examples would need about "
                         f"{need / 2 ** 30:.1f} GiB, beyond the {MEMORY_BUDGET >> 30} GiB fpsim inspect allows "
                         f"itself; choose --batch-size {largest} or less")


def _torch_mlp(inputs: int, outputs: int, rng, hidden=(128, 128, 128)):
    """The numpy trainer's MLP (``fpsim.engines.mlp.MLP``, its initial weights from ``rng``) as a torch module
    whose Linear layers are ``layers.0``, ``layers.1``... as the numpy recorder names them."""
    import torch
    from torch import nn

    from ..engines.mlp import MLP

    sizes = (inputs, *hidden, outputs)
    layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    with torch.no_grad():
        for layer, (W, b) in zip(layers, MLP(sizes).init_weights(rng)):
            layer.weight.copy_(torch.from_numpy(W.T))
            layer.bias.copy_(torch.from_numpy(b))

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = layers

        def forward(self, x):
            for layer in self.layers[:-1]:
                x = torch.relu(layer(x))
            return self.layers[-1](x)

    return TorchMLP()
