"""Will a model train in FP16, BF16 or FP8, and with which loss scale?  Measure it on one FP32 step.

Runs one forward and backward pass of a built-in model in plain FP32 torch on
one batch of its data (or of your own model on the inputs its build function
returns, see --model FILE.py:build below), then prints, per module and tensor kind (activations:
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

Your own model: --model path/to/file.py:build or --model package.module:build
names a function build() (called with no arguments, torch's global generator
seeded from --seed) that returns (module, inputs) or (module, inputs, loss_fn),
or a dict with the keys model, inputs, loss_fn.  inputs: a tensor, a tuple of
positional inputs (model(*inputs)) or a dict of keyword inputs (model(**inputs));
loss_fn(output) -> a scalar tensor, by default the sum of the output's logits
(a tensor, .logits, ["logits"] or [0]).  For example, in mymodel.py:

  import torch

  def build():
      model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
      x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
      return model, x, lambda logits: torch.nn.functional.cross_entropy(logits, y)

  fpsim inspect --model mymodel.py:build --formats fp16,bf16

An error in your file (at import or in build()) shows its traceback, then one
line saying which build failed (exit status 2).

Examples:
  fpsim inspect --model char-gpt
  fpsim inspect --model cnn --formats fp16,e4m3 --plot cnn.png
  fpsim inspect --model mlp --batch-size 256 --seed 1
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from . import UsageError
from ..sim.vocabulary import MODELS
MEMORY_BUDGET = 4 << 30
"""Most bytes an inspection may take (its estimate: ``fpsim.torch.inspect.kept_values`` times
``BYTES_PER_KEPT_VALUE``); a larger --batch-size is refused before its batch is drawn."""
DEFAULT_BATCH = 32
"""Examples in the batch of a built-in model when --batch-size is not given."""
SEEDS = 1 << 64
"""Seeds are integers in [0, 2^64): numpy's generators take no negative seed, torch's none beyond."""


def configure(parser):
    parser.add_argument("--model", required=True, choices=MODEL_CHOICES, metavar="MODEL",
                        help="; ".join(f"{m.name}: the {m.label} on {m.data}" for m in MODELS.values())
                             + " (the mlp as a torch module with the numpy engine's weights); or your own: "
                               "path/to/file.py:build or package.module:build (see above)")
    parser.add_argument("--formats", default="fp16,bf16,e4m3,e5m2",
                        help="comma-separated formats to measure against (names, aliases or eXmY; "
                             "default fp16,bf16,e4m3,e5m2)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples in the batch of a built-in model (default 32; your build's inputs are "
                             "its own batch)")
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
    user = user_model_spec(args.model)
    if user and args.batch_size is not None:
        raise UsageError(f"--batch-size is for a built-in model; {args.model} gives its own inputs: drop it")
    batch_size = DEFAULT_BATCH if args.batch_size is None else args.batch_size
    if batch_size < 1:
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
    if user:
        built = build_user_model(args.model, args.seed)
        if built.inputs is None:
            raise UsageError(f"--model {args.model}: build() returned only a module; fpsim inspect needs example "
                             f"inputs too: return (module, inputs) or (module, inputs, loss_fn)")
        model, inputs, loss_fn = built.model, built.inputs, built.loss_fn
        measured = "on its build's inputs"
    else:
        model, inputs, loss_fn = build(args.model, batch_size, args.seed)
        measured = f"batch of {batch_size}"
    with user_code(args.model if user else None):
        result = inspect(model, inputs, loss_fn=loss_fn, formats=formats)
    print(f"{args.model}: one FP32 forward and backward, {measured}, seed {args.seed}")
    print(result.table())
    if args.plot:
        try:
            result.plot(args.plot)
        except OSError as error:
            raise UsageError(f"cannot write --plot {args.plot}: {error.strerror or error}") from None
        print(f"figure written to {args.plot}")
    return 0


class ModelChoices(list):
    """The --model choices: the built-in models (``MODELS``, what it lists) and any ``WHERE:FUNCTION`` of the
    user's (``fpsim.torch.user_model``), which it also contains."""

    def __contains__(self, name) -> bool:
        return ":" in str(name) or super().__contains__(name)


MODEL_CHOICES = ModelChoices(MODELS)


def user_model_spec(name: str) -> bool:
    """Whether ``--model name`` is the user's ``WHERE:FUNCTION`` rather than a built-in model."""
    return ":" in name


@contextlib.contextmanager
def user_code(spec: str | None = None):
    """Report an error of the user's code: its traceback, trimmed to the user's frames, on stderr, then the one
    line of a usage error.  That is a ``fpsim.torch.user_model.UserCodeError`` (import, build), and with
    ``spec`` (the user's model running) also any exception but the one-line kinds the command reports itself."""
    from ..torch.user_model import UserCodeError, user_error

    try:
        yield
    except UserCodeError as error:
        print(error.user_traceback, end="", file=sys.stderr)
        raise UsageError(str(error)) from None
    except (UsageError, ValueError, TypeError, OSError, RecursionError):
        raise
    except Exception as error:
        if spec is None:
            raise
        failed = user_error(spec, "running the model raised", error)
        print(failed.user_traceback, end="", file=sys.stderr)
        raise UsageError(str(failed)) from None


def build_user_model(spec: str, seed: int, **options):
    """What ``spec``'s build function returns (``fpsim.torch.user_model.Built``), built with torch's global
    generator seeded from ``seed``."""
    from ..torch import user_model

    with user_code():
        return user_model.build(spec, user_model.load(spec), seed, **options)


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
