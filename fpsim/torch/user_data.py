"""Your own data and loss on the torch engine: ``fpsim.train(policy, model=, data=, loss_fn=, validation=)``.

``data`` (and ``validation``) may be, besides a built-in data set's name (``fpsim.sim.data``):

* ``(x, y)``: two numpy arrays or tensors holding one example per row (the same first dimension).  Floating
  values reach the model in float32 (the engine computes in float32), integers as int64.  Batches of
  ``batch_size`` rows are drawn as from a built-in data set: each epoch a fresh permutation from the run's
  seed, the remainder dropped (``fpsim.sim.data.epoch_batches``);
* a ``torch.utils.data.Dataset`` (map-style: ``len`` and ``dataset[i]``): examples drawn the same way and
  collated by ``torch.utils.data.default_collate`` (``(x, y)`` pairs or dicts of tensors);
* a ``torch.utils.data.DataLoader``: its batches, of its batch size and in its order (``batch_size`` is not
  read);
* any other iterable of batches (a list, a generator): its batches in its order.  When it ends before
  ``steps``, a re-iterable one (a list, a loader) starts again; a one-time iterator (a generator) is a
  ``ValueError`` saying after how many batches it ran out.  An ``IterableDataset`` of single examples is
  refused: wrap it in a ``DataLoader(dataset, batch_size=...)``.

Determinism: torch's global generator, which a shuffling ``DataLoader`` (its ``RandomSampler``, its base seed)
and a dataset's own random transforms draw from, is set from the run's seed before every batch is fetched
and restored afterwards: the same seed gives the same batches, and torch's global state is left as it was.
A loader given its own ``generator=`` shuffles from that generator instead (its state is the caller's).

A batch is ``(inputs, targets)``, the model called ``model(inputs)`` (``model(**inputs)`` when the inputs are
a dict), or a dict of tensors as a Hugging Face collator gives, the model called ``model(**batch)`` and its
targets ``batch["labels"]`` (None without them).  The loss of a batch, first that applies:

1. ``loss_fn(output, targets)`` when a ``loss_fn`` is given (for a dict batch ``targets`` is the whole dict);
2. the model's own loss, ``output.loss`` (``fpsim.torch.outputs.own_loss``: a Hugging Face model computes it
   when the batch has ``labels``);
3. the engine's cross-entropy, mean in nats, of the logits (``fpsim.torch.outputs.logits_of``) of shape
   (..., K) against integer targets of shape (...): per example (B, K) against (B,), or per token (B, T, V)
   against (B, T); a target of -100 is left out (torch's ``ignore_index``).

``DataInfo`` is what a model factory is told about the data (``call_factory``).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..sim.config import MAX_BATCH_VALUES
from ..sim.data import epoch_batches
from .outputs import logits_of, own_loss


@dataclass(frozen=True)
class DataInfo:
    """What the data say about the model that fits them; None where they do not say.

    A factory receives, as keyword arguments, the fields it names among its parameters (``call_factory``)."""

    vocab_size: int | None = None
    """Distinct tokens: a built-in text's characters; for integer ``(x, y)`` arrays of token sequences
    (x and y both (N, T)), the largest token in either plus one."""
    block_size: int | None = None
    """Context length T: the length of the token sequences (the last dimension of integer inputs, or of
    ``input_ids`` in a dict) of ``(x, y)`` arrays, a dataset's first example, a loader's dataset's first example
    or a list's first batch.  A built-in text does not decide it (the model does, ``model.config.block_size``)."""
    classes: int | None = None
    """Classes: a built-in classification data set's; for ``(x, y)`` arrays with integer labels y of shape
    (N,), the largest label plus one."""
    inputs: int | None = None
    """Features per example: a built-in classification data set's; for ``(x, y)`` arrays with a floating x of
    shape (N, F), F."""

    def offered(self) -> dict:
        """The fields the data decide (not None)."""
        return {name: value for name, value in vars(self).items() if value is not None}


def builtin_info(dataset) -> DataInfo:
    """The ``DataInfo`` of a built-in data set (``fpsim.sim.data.Dataset`` or ``TextDataset``)."""
    if dataset.task == "language-model":
        return DataInfo(vocab_size=dataset.vocab_size)
    return DataInfo(classes=dataset.outputs, inputs=dataset.inputs)


def call_factory(factory, options: dict, info: DataInfo):
    """``factory(**options, **told)``, ``told`` being the fields of ``info`` that ``factory`` names among its
    parameters (keyword-able, not ``**kwargs``); ValueError, one line, when an option sets one of them."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: it is told nothing
        parameters = ()
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    told = {name: value for name, value in info.offered().items() if name in named}
    clashing = sorted(set(told) & set(options))
    if clashing:
        raise ValueError(f"model option(s) {', '.join(clashing)} are set by the data ({told}); leave them out")
    return factory(**options, **told)


class UserData:
    """A user's ``data`` (or ``validation``) in one of the forms of the module docstring, checked on creation;
    ``what`` names it in errors."""

    def __init__(self, data, what: str = "data"):
        self.what = what
        self.data = data
        if is_pair(data):
            self.form = "arrays"
            self.x, self.y = (_tensor(a) for a in data)
            if self.x.ndim == 0 or self.x.shape[0] != self.y.shape[0] or self.x.shape[0] == 0:
                raise ValueError(f"{what}=(x, y) must hold one example per row in both, at least one; got x of "
                                 f"shape {tuple(self.x.shape)} and y of shape {tuple(self.y.shape)}")
        elif isinstance(data, torch.utils.data.IterableDataset):
            raise TypeError(f"{what} is an IterableDataset of single examples: wrap it in "
                            f"torch.utils.data.DataLoader({what}, batch_size=...) to give batches")
        elif isinstance(data, torch.utils.data.DataLoader):
            self.form = "loader"
        elif isinstance(data, torch.utils.data.Dataset):
            if not hasattr(data, "__len__"):
                raise TypeError(f"{what} is a torch Dataset without a length: give len(), or a DataLoader")
            self.form = "dataset"
            if len(data) == 0:
                raise ValueError(f"{what} is an empty Dataset")
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping, torch.Tensor, np.ndarray)):
            self.form = "batches"
        else:
            raise TypeError(f"{what} must be a data set's name, (x, y) arrays or tensors, a torch Dataset or "
                            f"DataLoader, or an iterable of batches; got {type(data).__name__}")

    def info(self) -> DataInfo:
        """What these data decide (see ``DataInfo``), read without drawing a batch."""
        if self.form == "arrays":
            x, y = self.x, self.y
            if not x.is_floating_point() and not y.is_floating_point() and x.ndim == 2 and y.shape == x.shape:
                return DataInfo(vocab_size=int(max(x.max(), y.max())) + 1, block_size=int(x.shape[1]))
            classes = int(y.max()) + 1 if y.ndim == 1 and not y.is_floating_point() else None
            inputs = int(x.shape[1]) if x.ndim == 2 and x.is_floating_point() else None
            return DataInfo(classes=classes, inputs=inputs)
        source = self.data.dataset if self.form == "loader" else self.data
        first = None
        if self.form == "dataset" or (self.form == "loader"
                                      and not isinstance(source, torch.utils.data.IterableDataset)):
            first = source[0]
        elif self.form == "batches" and isinstance(source, (list, tuple)) and source:
            first = source[0]
        return DataInfo(block_size=_sequence_length(first))

    def training(self, batch_size: int, rng: np.random.Generator, torch_seed: int):
        """The training batches, forever (see the module docstring): ``(x, y)`` rows drawn with ``rng``;
        any other form fetched with torch's global generator set from ``torch_seed`` (``seeded``)."""
        if self.form == "arrays":
            n = self.x.shape[0]
            if batch_size > n:
                raise ValueError(f"batch_size {batch_size} exceeds the {n} examples of {self.what}")
            values = batch_size * int(np.prod(self.x.shape[1:]))
            if values > MAX_BATCH_VALUES:
                raise ValueError(f"batch_size {batch_size} takes {values} input values, beyond the "
                                 f"{MAX_BATCH_VALUES} a step may take: choose a smaller batch_size")
            return ((self.x[index], self.y[index]) for index in map(torch.from_numpy,
                                                                   epoch_batches(rng, n, batch_size)))
        if self.form == "dataset":
            if batch_size > len(self.data):
                raise ValueError(f"batch_size {batch_size} exceeds the {len(self.data)} examples of {self.what}")
            stream = (self._collate(index) for index in epoch_batches(rng, len(self.data), batch_size))
        else:
            stream = self._cycle()
        return (batch_of(batch, self.what) for batch in seeded(stream, torch_seed))

    def evaluation(self, eval_batch: int, torch_seed: int):
        """Every example once, in order: ``(x, y)`` rows and a Dataset's examples in batches of ``eval_batch``;
        a loader's or an iterable's batches as they come (one pass)."""
        if self.form == "arrays":
            n = self.x.shape[0]
            return ((self.x[s:s + eval_batch], self.y[s:s + eval_batch]) for s in range(0, n, eval_batch))
        if self.form == "dataset":
            n = len(self.data)
            stream = (self._collate(range(s, min(s + eval_batch, n))) for s in range(0, n, eval_batch))
        else:
            stream = iter(self.data)
        return (batch_of(batch, self.what) for batch in seeded(stream, torch_seed))

    def _collate(self, indices):
        return torch.utils.data.default_collate([self.data[int(i)] for i in indices])

    def _cycle(self):
        """The batches of a loader or an iterable, again from the start when it ends (a re-iterable one)."""
        for epoch in itertools.count():
            iterator = iter(self.data)
            if epoch and iterator is self.data:
                raise ValueError(f"{self.what} ran out after {count} batches, before the run's last step: give "
                                 f"more batches, fewer steps, or a re-iterable (a list, a DataLoader)")
            count = 0
            for count, batch in enumerate(iterator, 1):
                yield batch
            if count == 0:
                raise ValueError(f"{self.what} gave no batch")


def is_pair(data) -> bool:
    """Whether ``data`` is ``(x, y)``: a tuple or list of two arrays or tensors (things with a shape)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(a, (np.ndarray, torch.Tensor)) for a in data)


def seeded(iterator, seed: int):
    """The items of ``iterator``, each fetched with torch's global generator in a state of its own stream
    (from ``seed``, carried from one fetch to the next) and the caller's state restored after each."""
    state = torch.Generator().manual_seed(seed).get_state()
    while True:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(state)
            try:
                item = next(iterator)
            except StopIteration:
                return
            state = torch.get_rng_state()
        yield item


def batch_of(batch, what: str = "data"):
    """``batch`` as the engine takes it: a dict, or an ``(inputs, targets)`` tuple; floating tensors in float32,
    numpy arrays as tensors.  TypeError, one line, for anything else."""
    if isinstance(batch, Mapping):
        return {key: _tensor(value) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
        inputs = {k: _tensor(v) for k, v in inputs.items()} if isinstance(inputs, Mapping) else _tensor(inputs)
        return inputs, None if targets is None else _tensor(targets)
    raise TypeError(f"a batch of {what} must be (inputs, targets) or a dict of tensors (as a Hugging Face "
                    f"collator gives); got {type(batch).__name__}"
                    + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))


def forward(model, batch):
    """The model's output for ``batch``: ``model(**batch)`` for a dict, else ``model(inputs)`` (``model(**inputs)``
    for dict inputs)."""
    inputs = batch if isinstance(batch, Mapping) else batch[0]
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def targets_of(batch):
    """A batch's targets: ``y`` of ``(x, y)``, ``batch["labels"]`` of a dict (None without)."""
    return batch.get("labels") if isinstance(batch, Mapping) else batch[1]


def batch_loss(output, batch, loss_fn=None) -> tuple[torch.Tensor, bool]:
    """(the loss of ``batch``, by the rule of the module docstring; whether it is the engine's cross-entropy)."""
    if loss_fn is not None:
        loss = loss_fn(output, batch if isinstance(batch, Mapping) else batch[1])
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            got = f"a tensor of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else type(loss).__name__
            raise TypeError(f"loss_fn(output, targets) must return a scalar tensor, got {got}")
        return loss.reshape(()), False
    own = own_loss(output)
    if own is not None:
        if own.numel() != 1:
            raise TypeError(f"the model's own output.loss is not a scalar (shape {tuple(own.shape)}): give loss_fn=")
        return own.reshape(()), False
    return cross_entropy(output, targets_of(batch)), True


def cross_entropy(output, targets, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats of ``output``'s logits (..., K) against integer ``targets`` (...); ValueError or
    TypeError, one line, saying to give ``loss_fn`` when the two do not fit it."""
    logits = logits_of(output)
    if logits is None:
        raise TypeError(f"the model's {type(output).__name__} output has no logits (a tensor, .logits, ['logits'] "
                        f"or [0]) and no .loss: give loss_fn=lambda output, targets: ...")
    if targets is None:
        raise ValueError("the batch has no targets (no y, or a dict without 'labels') and the model returned no "
                         ".loss: give labels, or loss_fn=lambda output, batch: ...")
    if targets.is_floating_point() or tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(f"the engine's cross-entropy takes logits (..., K) against integer targets (...); got "
                         f"logits {tuple(logits.shape)} and {targets.dtype} targets {tuple(targets.shape)}: give "
                         f"loss_fn=lambda output, targets: ...")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def examples(batch) -> int:
    """How many examples ``batch`` holds: the first dimension of its first tensor input."""
    inputs = batch if isinstance(batch, Mapping) else batch[0]
    tensors = [v for v in (inputs.values() if isinstance(inputs, Mapping) else (inputs,)) if torch.is_tensor(v)]
    return int(tensors[0].shape[0]) if tensors and tensors[0].ndim else 1


def to_double(batch):
    """``batch`` with its floating tensors in float64 (the FP64 shadow's), the rest as it is."""
    if isinstance(batch, Mapping):
        return {key: to_double(value) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(to_double(value) for value in batch)
    return batch.double() if torch.is_tensor(batch) and batch.is_floating_point() else batch


def _tensor(value):
    """A numpy array or tensor as a tensor: floating values in float32, integers in int64; anything else as
    it is."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not torch.is_tensor(value):
        return value
    if value.is_floating_point():
        return value.float()
    if value.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        return value.long()
    return value


def _sequence_length(example) -> int | None:
    """The length of the integer token sequence an example or a batch starts with (``input_ids`` of a dict),
    else None."""
    if isinstance(example, Mapping):
        tokens = example.get("input_ids")
    elif isinstance(example, (tuple, list)) and example:
        tokens = example[0]
    else:
        tokens = example
    if isinstance(tokens, np.ndarray):
        tokens = torch.from_numpy(tokens)
    if torch.is_tensor(tokens) and tokens.ndim >= 1 and not tokens.is_floating_point() and tokens.dtype != torch.bool:
        return int(tokens.shape[-1])
    return None
