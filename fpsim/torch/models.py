"""The torch engine's built-in models: ``char-gpt`` (a nanoGPT-style decoder) and ``cnn`` (a 1-D conv net).

Both are small enough that a training step takes milliseconds on one CPU
thread, so that a report can train many of them; both are written as a reader
of karpathy/nanoGPT's ``model.py`` expects: one config dataclass that the model
reads, shape comments where tensors change shape, nothing hidden.

Every parameter is initialised from a ``torch.Generator`` (the run's seed), never
from torch's global random state: the modules are built on the ``meta`` device
(no memory, no random draws) and then materialised and initialised by
``init_weights`` (nanoGPT's scheme: normal(0, 0.02) weights, zero biases,
unit LayerNorm gains, residual projections scaled by 1/sqrt(2 n_layer)).

``SPECS`` holds, per torch model of ``fpsim.sim.vocabulary.MODELS`` (which names it
and gives its builder and default data set), its ``ModelSpec``: the config
dataclass, the task and the config fields the data decide (vocabulary size,
sequence length, classes).  There is no dropout: a run's
randomness is its seed's, and the models are far too small to overfit in the
steps a report gives them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..numerics.checks import integer, is_finite_number
from ..sim.config import MAX_PARAMETERS
from ..sim.vocabulary import MODELS, BuiltinModel, model_named

INIT_STD = 0.02
"""Standard deviation of the normal initialisation of every weight matrix and embedding (GPT-2's, nanoGPT's)."""


# --- char-gpt ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GPTConfig:
    """A nanoGPT-style character-level decoder.  ``vocab_size`` comes from the data."""

    block_size: int = 64
    """Context length T: the number of characters the model sees at once."""
    vocab_size: int = 128
    """Number of distinct tokens (characters); set from the data set's vocabulary."""
    n_layer: int = 2
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; ``n_embd`` must be a multiple of it."""
    n_embd: int = 64
    """Width C of the residual stream."""
    bias: bool = True
    """Biases in the Linear layers and LayerNorms (nanoGPT's option; GPT-2 has them)."""
    tie_weights: bool = True
    """The output head shares its weight with the token embedding (weight tying, as in GPT-2 and nanoGPT)."""
    norm: str = "pre"
    """Where the LayerNorms are (``NORMS``).  ``"pre"``: before each branch, x + attn(ln(x)), and once before
    the head (GPT-2, nanoGPT, T5 with its RMSNorm): the branches see normalised inputs while the residual stream
    itself is never normalised.  ``"none"``: no LayerNorm at all, x + attn(x), x + mlp(x) and the head on the raw
    stream, so that every product sees the stream as it grows (normalisation-free transformers, ReZero's and
    T-Fixup's, train so with their own initialisation; here it stays nanoGPT's)."""
    stream_scale: float = 1.0
    """A constant s that multiplies the embeddings and each branch's output before it joins the residual stream,
    so that the stream is carried s times larger: x = s (wte + wpe), then x + s attn(ln(x)), x + s mlp(ln(x)).
    With ``norm="pre"`` the model computes the same function for every s (each LayerNorm divides s out, up to its
    eps) and its weights receive the same gradients; only the range the values occupy moves, by log2(s)
    binades.  A large s stands for a stream grown large over a long training, as T5's hidden states reached
    2.75e5 (a forced condition: 1, the default, is GPT-2's and nanoGPT's model, with no multiplication)."""

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            object.__setattr__(self, name, integer(f"GPTConfig.{name}", getattr(self, name), 1))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        _check_size("GPTConfig", (self.vocab_size + self.block_size + 12 * self.n_layer * self.n_embd) * self.n_embd)
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if not (is_finite_number(self.stream_scale) and self.stream_scale > 0):
            raise ValueError(f"GPTConfig.stream_scale must be a positive finite number, got {self.stream_scale!r}")
        if self.norm not in NORMS:
            raise ValueError(f"GPTConfig.norm must be one of {', '.join(map(repr, NORMS))}, got {self.norm!r}")


NORMS = ("pre", "none")
"""The choices of ``GPTConfig.norm``: pre-LayerNorm blocks, or no LayerNorm (an unnormalised residual stream)."""


def layer_norm(config: GPTConfig) -> nn.Module:
    """A LayerNorm over the width, or an identity when ``config.norm`` is ``"none"``."""
    return nn.LayerNorm(config.n_embd, bias=config.bias) if config.norm == "pre" else nn.Identity()


def scaled(x, scale: float):
    """``scale * x``; ``x`` itself when ``scale`` is 1, so that the default model runs no extra op."""
    return x if scale == 1 else scale * x


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one product
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        B, T, C = x.size()  # batch, sequence length, embedding width
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        # softmax(q k^T / sqrt(hs)) v with the upper triangle masked: (B, nh, T, T) @ (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """The block's feed-forward part: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))  # (B, T, 4C) inside, (B, T, C) out


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + s attn(ln(x)), then x + s mlp(ln(x)) (ln the identity without
    norms, s the config's ``stream_scale``)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.stream_scale = config.stream_scale
        self.ln_1 = layer_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = layer_norm(config)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + scaled(self.attn(self.ln_1(x)), self.stream_scale)
        return x + scaled(self.mlp(self.ln_2(x)), self.stream_scale)


class GPT(nn.Module):
    """Token and position embeddings, ``n_layer`` blocks, a final LayerNorm (``norm="pre"``) and the output head.

    ``forward(idx)`` takes token indices (B, T) with T <= block_size and returns
    the logits (B, T, vocab_size) of the next token at every position.  With
    ``tie_weights`` the head's weight is the token embedding's (one parameter,
    ``transformer.wte.weight``).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=layer_norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx):
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        x = scaled(self.transformer.wte(idx) + self.transformer.wpe(pos), self.config.stream_scale)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
        x = self.transformer.ln_f(x)
        return self.lm_head(x)  # (B, T, vocab_size)


def build_gpt(config: GPTConfig, generator) -> GPT:
    """A ``GPT`` with its weights drawn from ``generator``."""
    return _materialise(lambda: GPT(config), generator, residual_layers=config.n_layer)


# --- cnn -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CNNConfig:
    """A small 1-D convolutional classifier.  ``length`` and ``classes`` come from the data."""

    length: int = 40
    """Input length L (MNIST-1D: 40 samples; the digits: their 64 pixels read row by row)."""
    classes: int = 10
    """Number of classes."""
    channels: int = 32
    """Channels of every convolution."""
    n_conv: int = 3
    """Number of convolutions, each with stride 2 (each halves the length, rounding up)."""
    kernel_size: int = 5
    """Width of every convolution's kernel (odd: padded by (kernel_size - 1) / 2 to keep centred)."""

    def __post_init__(self):
        for name in ("length", "classes", "channels", "n_conv", "kernel_size"):
            object.__setattr__(self, name, integer(f"CNNConfig.{name}", getattr(self, name), 1))
        if self.kernel_size % 2 == 0:
            raise ValueError(f"CNNConfig.kernel_size must be odd, got {self.kernel_size}")
        _check_size("CNNConfig", self.n_conv * self.channels ** 2 * self.kernel_size
                    + self.channels * self.length * self.classes)
        if self.classes < 2:
            raise ValueError(f"CNNConfig.classes must be at least 2, got {self.classes}")

    @property
    def out_length(self) -> int:
        """Length after the convolutions: L halved (rounded up) ``n_conv`` times."""
        length = self.length
        for _ in range(self.n_conv):
            length = (length + 1) // 2
        return length


class CNN(nn.Module):
    """``n_conv`` stride-2 convolutions with ReLU, flattened, then a Linear head.

    ``forward(x)`` takes signals (B, L) or (B, 1, L) and returns logits (B, classes).
    With the defaults on MNIST-1D: (B, 1, 40) -> (B, 32, 20) -> (B, 32, 10) ->
    (B, 32, 5) -> (B, 160) -> (B, 10); 12,106 parameters.
    """

    def __init__(self, config: CNNConfig):
        super().__init__()
        self.config = config
        padding = (config.kernel_size - 1) // 2
        self.convs = nn.ModuleList([
            nn.Conv1d(1 if i == 0 else config.channels, config.channels, config.kernel_size, stride=2,
                      padding=padding)
            for i in range(config.n_conv)])
        self.head = nn.Linear(config.channels * config.out_length, config.classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)  # (B, L) -> (B, 1, L): one input channel
        for conv in self.convs:
            x = F.relu(conv(x))  # (B, channels, ceil(L_in / 2))
        return self.head(x.flatten(1))  # (B, channels * out_length) -> (B, classes)


def build_cnn(config: CNNConfig, generator) -> CNN:
    """A ``CNN`` with its weights drawn from ``generator``."""
    return _materialise(lambda: CNN(config), generator, residual_layers=None)


# --- initialisation ------------------------------------------------------------------------------
def _materialise(make: Callable[[], "nn.Module"], generator, residual_layers: int | None):
    """Build the module on the meta device (no random draws), allocate it on the CPU, initialise it."""
    with torch.device("meta"):
        model = make()
    model = model.to_empty(device="cpu")
    if isinstance(model, GPT) and model.config.tie_weights:
        model.lm_head.weight = model.transformer.wte.weight  # to_empty re-creates the shared parameter
    init_weights(model, generator, residual_layers)
    return model


def init_weights(model, generator, residual_layers: int | None = None) -> None:
    """nanoGPT's initialisation, every draw from ``generator``, in the order of ``model.modules()``.

    Linear, convolution and embedding weights ~ N(0, 0.02^2); those named
    ``c_proj`` (the residual projections) ~ N(0, (0.02 / sqrt(2 residual_layers))^2)
    when ``residual_layers`` is given (GPT-2's scaling, so that the residual stream's
    variance does not grow with depth); biases 0; LayerNorm gains 1.  A
    module of any other kind that holds parameters raises TypeError, so that
    no parameter is left with the uninitialised memory of ``to_empty``.
    """
    names = {module: name for name, module in model.named_modules()}
    with torch.no_grad():
        for module in model.modules():
            direct = list(module.parameters(recurse=False))
            if not direct:
                continue
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)):
                std = INIT_STD
                if residual_layers and names[module].endswith("c_proj"):
                    std = INIT_STD / math.sqrt(2 * residual_layers)
                module.weight.normal_(0.0, std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                if module.bias is not None:
                    module.bias.zero_()
            else:
                raise TypeError(f"init_weights does not know how to initialise {type(module).__name__} "
                                f"({names[module] or 'the model'})")


# --- the registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """What the torch engine needs to know about a built-in model beyond its record (``MODELS[name]``)."""

    name: str
    """Its name in ``fpsim.sim.vocabulary.MODELS``."""
    config: type
    """The config dataclass; a run's ``model_options`` are its fields."""
    task: str
    """"language-model": logits (B, T, V) against next tokens (B, T); "classification": (B, K) against labels (B,)."""
    from_data: Callable
    """``from_data(dataset) -> dict``: the config fields the data decide."""

    @property
    def record(self) -> BuiltinModel:
        """The model's record in the vocabulary: its builder, default data set, optimizers, score."""
        return MODELS[self.name]

    @property
    def data(self) -> str:
        """The default data set (a ``fpsim.sim.data.load_data`` spec)."""
        return self.record.data

    @property
    def build(self) -> Callable:
        """``build(config, generator) -> nn.Module``, the record's builder."""
        return self.record.build()

    def make_config(self, dataset, options: dict | None = None):
        """The model's config: ``options`` (checked against the dataclass's fields) plus what ``dataset`` decides."""
        options = dict(options or {})
        fields = {f.name for f in dataclasses.fields(self.config)}
        decided = self.from_data(dataset)
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ValueError(f"unknown model option(s) {', '.join(unknown)} for {self.config.__name__}: "
                             f"use {', '.join(sorted(fields - set(decided)))}")
        clashing = sorted(set(options) & set(decided))
        if clashing:
            raise ValueError(f"model option(s) {', '.join(clashing)} are set by the data set; leave them out")
        return self.config(**options, **decided)


SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("char-gpt", GPTConfig, "language-model", lambda data: {"vocab_size": data.vocab_size}),
    ModelSpec("cnn", CNNConfig, "classification", lambda data: {"length": data.inputs, "classes": data.outputs}),
)}
"""The torch engine's part of each torch model of ``fpsim.sim.vocabulary.MODELS``, by its name there."""


def get_model(name: str) -> ModelSpec:
    """The ``ModelSpec`` of the torch model called ``name`` (a name in ``fpsim.sim.vocabulary.MODELS``)."""
    record = model_named(name)
    if record.name not in SPECS:
        raise ValueError(f"{record.name} is the numpy engine's model: the torch models are {', '.join(SPECS)}")
    return SPECS[record.name]


def _check_size(name: str, parameters: int) -> None:
    """Refuse, before anything is built, a model of more than ``MAX_PARAMETERS`` weights (its leading terms)."""
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"a {name} of about {parameters:.3g} weights is beyond the {MAX_PARAMETERS} fpsim trains: "
                         "choose fewer or narrower layers")


