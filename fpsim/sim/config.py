"""``TrainConfig``: one training run's whole configuration, validated once, with a canonical JSON form.

``fpsim.train(policy, **options)``, ``fpsim train`` and the sweeps all build a
``TrainConfig``; the engines read nothing else.  Validation happens here, in
``__post_init__``, so a mistake is one ``ValueError`` (or ``TypeError``) that
names the option before anything runs.  Values are stored canonically, so two
ways of writing one run are one configuration and hash to one sweep key:

* numbers: a float option given as an int (``loss_scale=1024``) or as a numpy
  scalar becomes that float; an integer option accepts numpy integers;
* names (policy presets, optimizer, data set, model) are case-folded;
* ``hidden=16`` is ``(16,)``; ``scaler={}`` is ``scaler=None``;
* ``data=None`` is the model's default data set (``fpsim.sim.vocabulary.MODELS``); ``hidden=None`` the MLP's
  default widths (a torch model keeps None: it takes no ``hidden``).

An option the chosen model does not read is refused, not ignored (``hidden`` for a torch
model, ``model_options`` for the MLP); so is a number the engines would compute in FP32
but FP32 cannot hold (``lr``, and the optimizer's step size or epsilon it derives).

``to_dict()`` gives the JSON form (``TrainConfig.from_dict`` inverts it, and
``fpsim.train(**config.to_dict())`` reruns the run), except for what only Python
holds: a model given as a factory or a module, data given as Python objects (arrays,
a Dataset, a DataLoader, batches), a ``loss_fn``, a ``validation``.  Each is written
as a description in angle brackets (``"<factory mymodule.build>"``, ``"<data (x, y):
x (1000, 64) float32, y (1000,) int64>"``), and ``from_dict`` refuses such a
description in one line: a run given a Python object cannot be rerun from JSON.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from ..numerics.checks import integer, is_integer, number_in, positive_fp32_number, positive_number
from ..numerics.formats import FP32
from .data import TEXT_DATA_SETS, parse_data_spec
from .loss_scaling import SCALER_OPTIONS, LossScaler, loss_scale_of
from .policy import Policy
from .vocabulary import MODELS, OPTIMIZERS, model_named

MAX_STEPS = 10**6
"""Most steps a run may take: each step's record (about 0.7 kB) is kept in memory."""

MAX_PARAMETERS = 1 << 26
"""Most weights a model may have (about 67 million; each is stored several times: master, params, optimizer)."""

MAX_BATCH_VALUES = 1 << 20
"""Most input values (examples x features, or windows x characters) one batch may hold: activations scale with it."""

MLP_HIDDEN = (128, 128, 128)
"""The MLP's hidden layer widths when ``hidden`` is not given."""

_INTEGER_SCALER_OPTIONS = ("growth_interval", "hysteresis")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.  Every field is validated and made canonical on construction."""

    policy: Policy
    """The precision policy: a ``Policy``, a preset name or a dict of Policy fields (as given, before
    ``loss_scale`` overrides it; ``effective_policy`` is what the run uses)."""
    model: object = "mlp"
    """A built-in model's name (``fpsim.sim.vocabulary.MODELS``), a factory returning a ``torch.nn.Module``, or
    a ``torch.nn.Module`` (trained as a copy) (torch engine)."""
    model_options: dict = field(default_factory=dict)
    """Settings of the model (its config dataclass's fields, e.g. ``{"n_layer": 2}`` for char-gpt);
    the MLP takes its widths from ``hidden``."""
    data: object = None
    """Data set (``fpsim.sim.data``): a name, "mnist:PATH", or a dict with a "name"; None: the model's default.
    For a factory or a module (torch engine), also your own data as Python objects: ``(x, y)`` arrays or
    tensors, a ``torch.utils.data.Dataset`` or ``DataLoader``, or an iterable of batches
    (``fpsim.torch.user_data`` says how each is batched and seeded)."""
    loss_fn: object = None
    """``loss_fn(output, targets) -> scalar tensor`` (torch engine); None: the model's own ``output.loss``, else
    the cross-entropy of its logits against the targets (``fpsim.torch.user_data``)."""
    validation: object = None
    """Held-out data for your own ``data``, in the same forms, on which ``test_loss`` (and, with the engine's
    cross-entropy, ``test_accuracy``) are measured; None: nothing is held out, both are None.  A built-in data
    set holds out its own test set and takes none."""
    hidden: tuple | None = None
    """Widths of the MLP's hidden layers (ReLU); None: ``MLP_HIDDEN``, so the default model is 64-128-128-128-10
    on digits.  The MLP's only: a torch model refuses it (its sizes are ``model_options``)."""
    optimizer: str = "sgd"
    """Optimizer name: one of the model's (``BuiltinModel.optimizers``; a factory's torch engine takes every one of
    ``fpsim.sim.vocabulary.OPTIMIZERS``); ``momentum``, ``betas``, ``eps`` are its settings."""
    lr: float = 0.05
    """Learning rate: a positive number within FP32's range (the engines apply it in FP32)."""
    steps: int = 1500
    """Training steps (>= 1)."""
    batch_size: int = 64
    """Examples (windows of text, for a character model) per step."""
    seed: int = 0
    """Everything random (initialisation, batch order, stochastic rounding) derives from it."""
    grad_scale: float = 1.0
    """Multiplies the loss, so every gradient is that many times smaller (or larger), while the optimizer is
    made invariant to it (SGD: lr / grad_scale; Adam: eps * grad_scale): in exact arithmetic the run is
    unchanged.  A stand-in for small gradients, not a model of any particular network."""
    histograms: bool = False
    """Keep histograms of log2|value| before rounding at ``histogram_steps``."""
    histogram_steps: tuple | None = None
    """Steps of the histograms (default with ``histograms``: the first, 10%, 50% and the last)."""
    loss_scale: float | str | None = None
    """If given, wins over the policy's ``loss_scale`` (``effective_policy``): a positive constant or "dynamic",
    read by the one rule of both, ``fpsim.sim.loss_scaling.loss_scale_of``; None keeps the policy's."""
    scaler: dict | None = None
    """Settings of the dynamic loss scaler (``fpsim.sim.loss_scaling.SCALER_OPTIONS``)."""
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    record_every: int = 50
    """Window (steps) of the per-module count history; 0 for none."""
    shadow_every: int = 100
    """Every this many steps, compare the gradients with an FP64 shadow (numpy engine); 0 for never."""

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)  # the dataclass is frozen
        put("policy", Policy.coerce(self.policy))
        put("model", _model(self.model))
        if not isinstance(self.model_options, dict) or not all(isinstance(k, str) for k in self.model_options):
            raise ValueError(f"model_options must be a dict of named settings, got {self.model_options!r}")
        put("model_options", dict(self.model_options))
        if self.model == "mlp" and self.model_options:
            raise ValueError("the MLP takes no model_options: give its widths as hidden=(...)")
        put("data", _data(self.model, self.data))
        put("validation", _validation(self.data, self.validation))
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be a function loss_fn(output, targets) -> scalar tensor, got "
                            f"{type(self.loss_fn).__name__}")
        if self.loss_fn is not None and isinstance(self.model, str):
            raise ValueError(f"loss_fn is for a model factory or module (model=...); the built-in model "
                             f"{self.model!r} trains with its engine's cross-entropy")
        if self.engine == "numpy":
            _numpy_engine_can_run(self.policy, self.data)
        put("hidden", _hidden(self.model, self.hidden))
        optimizers = MODELS[self.model].optimizers if isinstance(self.model, str) else OPTIMIZERS
        if not isinstance(self.optimizer, str) or self.optimizer.strip().lower() not in optimizers:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: use one of {', '.join(optimizers)}")
        put("optimizer", self.optimizer.strip().lower())
        put("lr", positive_fp32_number("lr", self.lr))
        for name in ("grad_scale", "eps"):
            put(name, positive_number(name, getattr(self, name)))
        _optimizer_scalars_fit_fp32(self.optimizer, self.lr, self.eps, self.grad_scale)
        put("momentum", number_in("momentum", self.momentum, 0.0, 1.0))
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), e.g. (0.9, 0.999); got {self.betas!r}")
        put("betas", tuple(number_in("each of betas", b, 0.0, 1.0) for b in self.betas))
        for name, minimum in (("steps", 1), ("batch_size", 1), ("seed", 0), ("record_every", 0),
                              ("shadow_every", 0)):
            put(name, integer(name, getattr(self, name), minimum))
        if self.steps > MAX_STEPS:
            raise ValueError(f"steps must be at most {MAX_STEPS}, got {self.steps}")
        if not isinstance(self.histograms, bool):
            raise ValueError(f"histograms must be True or False, got {self.histograms!r}")
        put("histogram_steps", _histogram_steps(self.histograms, self.histogram_steps, self.steps))
        put("loss_scale", loss_scale_of(self.loss_scale))
        put("scaler", _scaler(self.scaler))
        LossScaler.for_policy(self.effective_policy.loss_scale, self.scaler)  # refuses settings that cannot apply

    @property
    def engine(self) -> str:
        """``"numpy"`` (the bit-exact MLP engine) or ``"torch"``."""
        return MODELS[self.model].engine if isinstance(self.model, str) else "torch"

    @property
    def effective_policy(self) -> Policy:
        """The policy the run uses: ``policy`` with ``loss_scale`` applied when one is given."""
        if self.loss_scale is None:
            return self.policy
        return dataclasses.replace(self.policy, loss_scale=self.loss_scale,
                                   name=f"{self.policy.name} (loss scale {self.loss_scale:g})"
                                   if isinstance(self.loss_scale, float)
                                   else f"{self.policy.name} (loss scale {self.loss_scale})")

    def to_dict(self) -> dict:
        """The canonical JSON form: ``fpsim.train(**config.to_dict())`` reruns the run (see the module docstring
        for what only Python holds).  ``loss_fn`` and ``validation`` are written for a factory or a module only:
        a built-in model's form is what it was before they existed (so are the sweeps' keys of its runs)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["policy"] = self.policy.to_dict()
        if not isinstance(self.model, str):
            out["model"] = _written("factory" if hasattr(self.model, "__qualname__") else "module", self.model)
        for name in ("data", "validation"):
            if _python_data(out[name]):
                out[name] = _written(name, out[name])
        if isinstance(self.model, str):  # a built-in model's form (and sweep key) holds no fields of user data
            del out["loss_fn"], out["validation"]  # (it refuses both)
        elif self.loss_fn is not None:
            out["loss_fn"] = _written("loss_fn", self.loss_fn)
        for name in ("hidden", "betas", "histogram_steps"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, options: dict) -> "TrainConfig":
        """A config from a dict of options (``to_dict``'s form, or what ``fpsim.train`` takes), one-line errors."""
        if not isinstance(options, dict):
            raise TypeError(f"a training configuration is a dict of options, got {type(options).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [name for name in options if name not in known]
        if unknown:
            raise ValueError(f"unknown training option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; the options are {', '.join(known)}")
        if "policy" not in options:
            raise ValueError("a training configuration needs a 'policy'")
        for name in ("model", "data", "validation", "loss_fn"):
            value = options.get(name)
            if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
                raise ValueError(f"{name} {value} was a Python object, which JSON cannot hold: a run given one "
                                 f"cannot be rerun from its JSON form; pass the object itself as {name}=")
        return cls(**options)


def _model(model):
    if callable(model) and not isinstance(model, str):
        return model
    return model_named(model).name


def _numpy_engine_can_run(policy: Policy, data) -> None:
    """Refuse what the MLP engine does not simulate, rather than ignore it."""
    if policy.placement != "autocast":
        raise ValueError(f"placement={policy.placement!r} is for the torch engine: the MLP rounds every product "
                         "and layer output to the policy's formats and computes its loss in the loss format")
    name = data if isinstance(data, str) else data["name"]
    if name in TEXT_DATA_SETS:
        raise ValueError(f"{name!r} is text, for a character model: use model='char-gpt', or give the MLP "
                         "digits, mnist1d, mnist:PATH or teacher")


def _python_data(data) -> bool:
    """Whether ``data`` is given as Python objects (anything but None, a name or a dict spec)."""
    return data is not None and not isinstance(data, (str, dict))


def _written(kind: str, value) -> str:
    """The JSON form of a Python object: a description in angle brackets (see the module docstring)."""
    if kind in ("data", "validation"):
        shapes = [getattr(a, "shape", None) for a in value] if isinstance(value, (tuple, list)) and \
            len(value) == 2 else []
        if shapes and None not in shapes:
            x, y = value
            return (f"<{kind} (x, y): x {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}, "
                    f"y {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}>")
        if isinstance(value, (tuple, list)):
            return f"<{kind}: a {type(value).__name__} of {len(value)} batches>"
    name = getattr(value, "__qualname__", None)
    if name is not None:
        return f"<{kind} {getattr(value, '__module__', '?')}.{name}>"
    return f"<{kind}: a {type(value).__module__}.{type(value).__qualname__}>"


def _data(model, data):
    if _python_data(data):
        if isinstance(model, str):
            raise ValueError(f"data given as Python objects ({type(data).__name__}) is for a model factory or "
                             f"module (model=...); the built-in model {model!r} takes a data set by name")
        return data
    if data is None:
        return MODELS[model].data if isinstance(model, str) else None
    name, options = parse_data_spec(data)
    return {"name": name, **options} if options else name


def _validation(data, validation):
    if validation is None:
        return None
    if not _python_data(data):
        raise ValueError("validation= is for your own data (data=(x, y), a Dataset, a DataLoader, batches); a "
                         "built-in data set holds out its own test set")
    if not _python_data(validation):
        raise ValueError(f"validation must be data in the forms of data= ((x, y), a Dataset, a DataLoader, "
                         f"batches), got {validation!r}")
    return validation


def _hidden(model, hidden) -> tuple | None:
    if model != "mlp":
        if hidden is not None:
            name = model if isinstance(model, str) else "a model factory"
            raise ValueError(f"hidden sets the MLP's layer widths; {name} (torch engine) does not read it: drop it "
                             "and give a torch model's sizes as model_options (the fields of its config)")
        return None
    if hidden is None:
        return MLP_HIDDEN
    if is_integer(hidden):
        hidden = (hidden,)
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise ValueError(f"hidden must list at least one hidden layer width, e.g. (128, 128, 128); got {hidden!r}")
    return tuple(integer("every hidden layer width", width, 1) for width in hidden)


def _histogram_steps(histograms: bool, steps_given, steps: int):
    if not histograms:
        if steps_given is not None:
            raise ValueError("histogram_steps needs histograms=True")
        return None
    if steps_given is None:
        return tuple(sorted({0, steps // 10, steps // 2, steps - 1}))
    if not isinstance(steps_given, (list, tuple)) or not steps_given:
        raise ValueError(f"histogram_steps must be a non-empty list of steps, got {steps_given!r}")
    for step in steps_given:
        if integer("every histogram step", step, 0) >= steps:
            raise ValueError(f"histogram step {step} is beyond the run's last step {steps - 1}")
    return tuple(sorted({int(s) for s in steps_given}))


def _optimizer_scalars_fit_fp32(optimizer: str, lr: float, eps: float, grad_scale: float) -> None:
    """Refuse the scalar the optimizer derives from ``grad_scale`` when it is beyond FP32's max (the torch
    engine could not apply it to FP32 tensors, the MLP would make every weight inf): SGD and momentum step by
    lr / grad_scale, Adam and AdamW add eps * grad_scale.  Below FP32's range it is a run with no updates."""
    name, value = (("eps * grad_scale", eps * grad_scale) if optimizer in ("adam", "adamw")
                   else ("lr / grad_scale", lr / grad_scale))
    if not value <= FP32.max:
        raise ValueError(f"{name} = {value:.3g}, which the {optimizer} optimizer applies, is beyond FP32's max "
                         f"{FP32.max:.3g}: make grad_scale {'smaller' if '*' in name else 'larger'}")


def _scaler(scaler):
    if scaler is None or scaler == {}:
        return None
    if not isinstance(scaler, dict):
        raise TypeError(f"scaler must be a dict of loss-scaler settings ({', '.join(SCALER_OPTIONS)}), "
                         f"got {scaler!r}")
    out = {}
    for name, value in scaler.items():
        if name in _INTEGER_SCALER_OPTIONS:
            out[name] = integer(f"scaler {name}", value, 1)
        elif name in SCALER_OPTIONS and value is not None:
            out[name] = positive_number(f"scaler {name}", value)
        else:
            out[name] = value  # LossScaler.for_policy names what is unknown
    return out
