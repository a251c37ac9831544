"""Train a model under a precision policy and report underflow, overflow and lost updates.

The model is the bit-exact numpy MLP (--model mlp, the default, on the digits
data), or a PyTorch model on the torch engine (--model char-gpt: a small GPT on
the text of Python's documentation; --model cnn: a small conv net), which needs
the extra: pip install "fpsim[torch]".

The policy is a preset (fp32, fp16-pure, fp16-mixed, fp16-amp, bf16-pure,
bf16-mixed, bf16-sr, bf16-kahan), an FP8 / MX recipe (fp8-unscaled, fp8-current,
fp8-delayed, fp8-rowwise, mxfp8, mxfp6, mxfp4, nvfp4: the products' operands
quantized with per-tensor, per-row or block scales, everything else FP32), a
JSON dict of Policy fields, e.g. '{"preset": "fp16-mixed", "loss_scale": 1024}',
or the path of a JSON file holding such a dict (FILE.json).  Over a preset, a
"scaling" dict changes only the tensor kinds it names.  The run shows a progress bar,
ends with a summary table, and with --out writes the whole result (per-step
history, per-layer counts, histograms) as JSON for later analysis.  An option the
model does not read is refused (--hidden for a torch model, --momentum without
--optimizer momentum).

Your own model: --model path/to/file.py:build or --model package.module:build
names a function build() as fpsim inspect takes it (see fpsim inspect --help):
it returns a torch.nn.Module, (module, inputs), (module, inputs, loss_fn), or
a dict with the keys model, inputs, loss_fn.  With --data NAME (a built-in data
set: digits, mnist1d, mnist:PATH, pydoc) build is the model's factory: called
for the run (seeded from --seed) with --model-options as keyword arguments and
with what the data decide among the parameters it names (vocab_size,
block_size, classes, inputs), and trained with the engine's cross-entropy (the
inputs and loss_fn it returns are not used).  Without --data the model trains
on the inputs it returns, one batch repeated every step: a dict of keyword
inputs (its loss: loss_fn(output), else the model's own output.loss, as a
Hugging Face model gives with labels, else the cross-entropy against "labels")
or one tensor (its loss: loss_fn(output), which is then required).  Nothing is
held out: test_loss and test_accuracy are None.  For example:

  def build(inputs, classes):          # mymodel.py, told the sizes of --data digits
      import torch
      return torch.nn.Sequential(torch.nn.Linear(inputs, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))

  fpsim train --model mymodel.py:build --data digits --policy bf16-mixed --optimizer adam --lr 1e-3

Ctrl-C stops the run: one line says at which step, and with --out the steps taken
are written as a partial result whose status is "interrupted".

Exit status: 0 when the run trained; 3 when it did not (its status, shown in the
table, is "diverged", "no updates" or "loss-scale floor"); 1 when --out could not
be written at the end (the result is then kept in a file in the temporary folder,
named in the output); 2 for a usage error; 130 when interrupted.

Examples:
  fpsim train --policy bf16-pure --lr 0.003 --steps 1500
  fpsim train --policy fp16-mixed --grad-scale 2**-20 --loss-scale 2**16 --out result.json
  fpsim train --policy fp16-amp --data mnist:~/data/mnist.npz --hidden 256,256 --optimizer adam --lr 1e-3
  fpsim train --model char-gpt --policy bf16-mixed --optimizer adam --lr 1e-3 --steps 300
  fpsim train --model char-gpt --policy fp8-delayed --optimizer adam --lr 3e-3 --steps 300
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping

from . import UsageError
from .inspect import MODEL_CHOICES, build_user_model, user_code, user_model_spec
from ..numerics.exact import parse_real
from ..report.table import text_table
from ..engines import TrainingInterrupted
from ..sim.config import MLP_HIDDEN
from ..sim.policy import POLICIES, SCALED_POLICIES
from ..sim.vocabulary import MODELS
from ..sim.result import STATUSES


def number(text: str) -> float:
    """A finite float from '0.5', '1e-6', '2**-20' or '2^-20' (UsageError saying what is wrong otherwise)."""
    value = text.strip()
    base, power, exponent = value.partition("**") if "**" in value else value.partition("^")
    try:
        result = float(parse_real(base)) ** float(parse_real(exponent)) if power else float(parse_real(value))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"not a number: {text!r} (use e.g. 0.05, 1e-6 or 2**-20)") from None
    except OverflowError:
        raise UsageError(f"{text!r} is beyond the range of float64 (magnitudes up to about 1.8e308)") from None
    if isinstance(result, complex) or math.isnan(result) or "inf" in value.lower():
        raise UsageError(f"not a finite real number: {text!r}")
    if math.isinf(result):  # a Decimal beyond 2^65536 converts to inf without an OverflowError
        raise UsageError(f"{text!r} is beyond the range of float64 (magnitudes up to about 1.8e308)")
    if result == 0 and (parse_real(base) if power else parse_real(value)) != 0:
        raise UsageError(f"{text!r} is below the range of float64: it would be 0")
    return result


def configure(parser):
    parser.add_argument("--policy", required=True,
                        help=f"a preset: {', '.join(POLICIES)} (from {next(iter(SCALED_POLICIES))} on, FP8 / MX: "
                             "only the products' operands quantized); a JSON dict of Policy fields, e.g. "
                             "'{\"preset\": \"mxfp8\", \"scaling\": {\"gradients\": {\"kind\": \"block\", "
                             "\"block\": \"mxfp8_e4m3\", \"scale_rounding\": \"ceil\"}}}' (the other kinds "
                             "keep the preset's scaling); or FILE.json holding such a dict")
    parser.add_argument("--model", default="mlp", choices=MODEL_CHOICES, metavar="MODEL",
                        help="; ".join(f"{m.name}: the {m.label} on {m.data} ({m.engine} engine)"
                                       for m in MODELS.values()) + " (default mlp); or your own: "
                             "path/to/file.py:build or package.module:build (see above)")
    parser.add_argument("--model-options", default=None,
                        help="JSON dict of the torch model's settings, e.g. '{\"n_layer\": 4}'")
    parser.add_argument("--data", default=None,
                        help="the model's default data set unless given: digits, mnist:PATH to a local npz, "
                             "teacher (MLP); pydoc (char-gpt)")
    parser.add_argument("--hidden", default=None,
                        help=f"the MLP's hidden layer widths, comma-separated (default "
                             f"{','.join(map(str, MLP_HIDDEN))})")
    parser.add_argument("--optimizer", default="sgd", help="sgd (default), momentum, adam (or adamw, torch engine)")
    parser.add_argument("--lr", type=number, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    parser.add_argument("--grad-scale", type=number, default=1.0,
                        help="multiply the loss (and every gradient) by this, e.g. 2**-20; the optimizer "
                             "compensates, so only rounding sees it")
    parser.add_argument("--loss-scale", default=None,
                        help="override the policy's loss scale: a number (2**16) or 'dynamic'")
    parser.add_argument("--momentum", type=number, default=None,
                        help="momentum of --optimizer momentum (default 0.9)")
    parser.add_argument("--histograms", action="store_true", help="record histograms of log2|value|")
    parser.add_argument("--shadow-every", type=int, default=100,
                        help="compare gradients with an FP64 shadow every N steps (0: never; default 100)")
    parser.add_argument("--out", help="write the full result as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _json_or_name(flag: str, text: str):
    """A JSON dict when ``text`` starts with "{", else the text itself (a name)."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"{flag} is not valid JSON: {error}") from None
        except RecursionError:
            raise UsageError(f"{flag} is nested too deeply: give a flat dict") from None
    return text


def _hidden(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated integers such as 128,128; got {text!r}") from None


def run(args) -> int:
    from .. import train

    loss_scale = None
    if args.loss_scale is not None:
        loss_scale = "dynamic" if args.loss_scale.strip().lower() == "dynamic" else number(args.loss_scale)
    if args.momentum is not None and args.optimizer.strip().lower() != "momentum":
        raise UsageError(f"--momentum is the setting of --optimizer momentum; {args.optimizer} does not read it: "
                         "drop it or add --optimizer momentum")
    if args.out:
        _check_writable(args.out)
    options = {}
    if args.model_options is not None:
        options["model_options"] = _json_or_name("--model-options", args.model_options)
    if args.hidden is not None:
        options["hidden"] = _hidden(args.hidden)  # a torch model refuses it (TrainConfig)
    if args.momentum is not None:
        options["momentum"] = args.momentum
    model, data = args.model, args.data
    if user_model_spec(args.model):
        model, data, options = _user_model(args, options)
    try:
        with user_code(args.model if user_model_spec(args.model) else None):
            result = train(_json_or_name("--policy", args.policy), model=model, data=data, **options,
                           optimizer=args.optimizer, lr=args.lr, steps=args.steps, batch_size=args.batch_size,
                           seed=args.seed, grad_scale=args.grad_scale, histograms=args.histograms,
                           shadow_every=args.shadow_every, progress=not args.no_progress, loss_scale=loss_scale)
    except TrainingInterrupted as interrupted:
        return _interrupted(interrupted.result, args.out)
    rows = [{"measure": name, "value": "-" if value is None else value} for name, value in result.summary().items()]
    print(text_table(rows))
    if result.status != "ok":
        where = f" at step {result.diverged_step}" if result.diverged else ""
        print(f"{result.status}{where}: {STATUSES[result.status]}")
    status = 0 if result.status == "ok" else 3
    if args.out:
        try:
            result.save(args.out)
            print(f"wrote {args.out}")
        except OSError as error:
            kept = _keep(result)
            print(f"fpsim: could not write {args.out} ({error.strerror or error}); the result is in {kept}",
                  file=sys.stderr)
            return 1
    return status


def _user_model(args, options: dict):
    """(model, data, options) for ``fpsim.train`` of the user's ``--model WHERE:FUNCTION`` (see the module
    docstring): with --data, the build function as the model's factory; without, the module it builds (seeded
    from --seed, given --model-options) on its inputs, one batch repeated, with its loss_fn."""
    from ..torch import user_model

    with user_code():
        function = user_model.load(args.model)
    if args.data is not None:
        return user_model.as_factory(args.model, function), args.data, options
    settings = options.pop("model_options", {})
    if not isinstance(settings, dict):
        raise UsageError(f"--model-options must be a JSON dict of build()'s keyword arguments, got {settings!r}")
    built = build_user_model(args.model, args.seed, **settings)
    if built.inputs is None:
        raise UsageError(f"--model {args.model}: build() returned only a module, and there is no --data: return "
                         f"(module, inputs[, loss_fn]) to train on its inputs, or give --data digits (or another "
                         f"data set)")
    inputs = built.inputs[0] if isinstance(built.inputs, tuple) and len(built.inputs) == 1 else built.inputs
    if isinstance(inputs, tuple):
        raise UsageError(f"--model {args.model}: fpsim train takes build()'s inputs as one tensor or a dict of "
                         f"keyword inputs, not {len(inputs)} positional ones")
    batch = inputs if isinstance(inputs, Mapping) else (inputs, None)
    if built.loss_fn is not None:
        options["loss_fn"] = lambda output, targets: built.loss_fn(output)
    return built.model, [batch], options


def _interrupted(result, out: str | None) -> int:
    """Ctrl-C: one line saying where the run stopped, the partial result (status "interrupted") written to
    ``out`` if given; exit status 130, as for any interrupted command."""
    line = f"fpsim: interrupted at step {result.steps_run} of {result.config['steps']}"
    if out:
        try:
            result.save(out)
            line += f"; the partial result (status 'interrupted') is in {out}"
        except OSError as error:
            line += (f"; could not write {out} ({error.strerror or error}), the partial result is in "
                     f"{_keep(result)}")
    else:
        line += "; nothing was kept (give --out FILE to keep a partial result)"
    print(line, file=sys.stderr)
    return 130


def _check_writable(path: str) -> None:
    """Refuse, before training, an --out that cannot be written: a folder, a missing or read-only folder."""
    absolute = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(absolute)
    if os.path.isdir(absolute):
        raise UsageError(f"--out {path} is a folder: give a file name, e.g. {os.path.join(path, 'result.json')}")
    if not os.path.isdir(folder):
        raise UsageError(f"--out: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(absolute) and not os.access(absolute, os.W_OK)):
        raise UsageError(f"--out {path} cannot be written (permission denied)")


def _keep(result) -> str:
    """Save ``result`` in a new file of the temporary folder; its path."""
    handle, path = tempfile.mkstemp(prefix="fpsim-train-", suffix=".json")
    os.close(handle)
    result.save(path)
    return path
