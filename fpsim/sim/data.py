"""Training data: real data sets read from disk (never downloaded at run time) and a synthetic one.

``load_data(spec)`` returns a ``Dataset``; ``spec`` is JSON-able so that a run's
configuration records exactly which data it used:

* ``"digits"`` (the default): the UCI handwritten digits that scikit-learn ships
  inside its package (1797 images of 8x8 pixels, 10 classes), split once with a
  fixed seed into 1437 training and 360 test images, stratified by class;
* ``"mnist:PATH"`` or ``{"name": "mnist", "path": PATH}``: MNIST from a local
  ``.npz`` file in the Keras layout (``x_train, y_train, x_test, y_test``);
* ``"teacher"`` or ``{"name": "teacher", ...}``: a teacher-student regression,
  targets from a fixed random teacher network plus Gaussian noise;
* ``"mnist1d"``: MNIST-1D (Greydanus and Kobak, 2020), 10 classes of 1-D signals
  of 40 samples, generated locally by the ``mnist1d`` package's ``make_dataset``
  with its default settings and seed (4000 training and 1000 test signals;
  its download path is never used);
* ``"pydoc"`` or ``{"name": "pydoc", "validation": 0.1}``: a character-level text
  (``TextDataset``, for language models, not a ``Dataset``): Python's own
  documentation topics, the module ``pydoc_data.topics`` that every CPython
  ships, its values joined in sorted key order; the last ``validation`` share of
  the characters is held out.

Inputs of the digits, MNIST and the teacher are standardised per feature with
the training set's mean and standard deviation (features that are constant in
the training set are only centred); MNIST-1D comes standardised as a whole by
its generator (per-position statistics would blur what a convolution sees).
Every data set reaches the model with values of order 1, in float64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..numerics.checks import is_finite_number, is_integer

DATA_SETS = ("digits", "mnist", "teacher", "mnist1d", "pydoc")
"""Names ``load_data`` understands."""

TEXT_DATA_SETS = ("pydoc",)
"""The data sets that are text (a ``TextDataset``, for character models); the others are (x, y) examples."""

DIGITS_SPLIT_SEED = 0
"""Seed of the fixed digits train/test split: the same test set for every run and every training seed."""

DIGITS_TEST_FRACTION = 0.2
"""Share of the digits held out for testing (360 of 1797 images)."""

TEACHER_DEFAULTS = {"inputs": 32, "hidden": 64, "outputs": 4, "train": 4096, "test": 1024,
                    "noise": 0.1, "seed": 0}
"""Teacher-student defaults: input width, teacher hidden width, outputs, sample counts, noise std, data seed."""


@dataclass(frozen=True)
class Dataset:
    """A supervised data set, standardised and split.

    ``task`` is ``"classification"`` (integer labels ``0..outputs-1`` in ``y``)
    or ``"regression"`` (``y`` of shape ``(n, outputs)``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    outputs: int
    """Number of classes (classification) or of regression targets."""

    @property
    def inputs(self) -> int:
        """Number of input features."""
        return self.x_train.shape[1]

    def batches(self, rng: np.random.Generator, batch_size: int):
        """Training batch indices, forever: each epoch a fresh permutation from ``rng``, cut into full
        batches (the remainder is dropped): ``epoch_batches``."""
        return epoch_batches(rng, len(self.y_train), batch_size)


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int):
    """Batch indices into ``n`` examples, forever: each epoch a fresh permutation from ``rng``, cut into full
    batches of ``batch_size`` (the remainder is dropped)."""
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def load_data(spec="digits") -> "Dataset | TextDataset":
    """The data set named by ``spec`` (see the module docstring for the accepted forms)."""
    name, options = parse_data_spec(spec)
    if name in ("digits", "mnist1d"):
        _no_options(name, options, allowed=())
        return load_digits() if name == "digits" else load_mnist1d()
    if name == "pydoc":
        _no_options(name, options, allowed=("validation",))
        return load_pydoc(**options)
    if name == "mnist":
        _no_options(name, options, allowed=("path",))
        if "path" not in options:
            raise ValueError("MNIST needs the path of a local mnist.npz: use 'mnist:PATH' "
                             "or {'name': 'mnist', 'path': PATH}")
        return load_mnist(options["path"])
    _no_options(name, options, allowed=tuple(TEACHER_DEFAULTS))
    return teacher_student(**options)


def parse_data_spec(spec) -> tuple[str, dict]:
    """The name (case-folded) and options of a data-set ``spec``; refuses unknown names and misplaced options."""
    if isinstance(spec, str):
        name, _, rest = spec.partition(":")
        name = name.strip().lower()
        options = {"path": rest} if rest else {}
    elif isinstance(spec, dict):
        options = dict(spec)
        name = str(options.pop("name", "")).strip().lower()
    else:
        raise TypeError(f"data must be a name such as 'digits', 'mnist:PATH' or a dict with a 'name'; "
                        f"got {type(spec).__name__}")
    if name not in DATA_SETS:
        raise ValueError(f"unknown data set {name!r}: use one of {', '.join(DATA_SETS)} "
                         f"(MNIST as 'mnist:PATH' with a local Keras-layout mnist.npz)")
    if name != "mnist" and isinstance(spec, str) and options:
        raise ValueError(f"data set {name!r} takes no path; only 'mnist:PATH' does")
    return name, options


def _no_options(name, options, allowed):
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for data set {name!r}; "
                         f"it accepts {', '.join(allowed) or 'none'}")


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x - mean) / std per feature, both from the training set; constant features are only centred."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return (x_train - mean) / std, (x_test - mean) / std


def load_digits() -> Dataset:
    """The scikit-learn digits, split with ``DIGITS_SPLIT_SEED`` (stratified) and standardised."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float64), digits.target.astype(np.int64), test_size=DIGITS_TEST_FRACTION,
        random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    x_train, x_test = standardise(x_train, x_test)
    return Dataset("digits", x_train, y_train, x_test, y_test, "classification", 10)


MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_mnist(path) -> Dataset:
    """MNIST from a Keras-layout ``.npz``: images (n, 28, 28) or (n, 784) of 0..255, labels 0..9.

    Pixels are divided by 255 and standardised.  A missing file, missing keys,
    mismatched lengths or labels outside 0..9 raise ValueError saying which.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"MNIST file not found: {path!r} (fpsim never downloads; give the path of a "
                         f"local mnist.npz with arrays {', '.join(MNIST_KEYS)})")
    try:
        with open(path, "rb") as file:
            head = file.read(6)
    except OSError as error:
        raise ValueError(f"cannot read {path!r}: {error.strerror}") from None
    if not head.startswith(b"PK"):  # np.load would try a pickle, and blame pickling for a text file
        kind = "a single .npy array" if head == b"\x93NUMPY" else "not a zip file"
        raise ValueError(f"cannot read {path!r} as an .npz archive of arrays: it is {kind} (an .npz is a zip "
                         f"of {', '.join(MNIST_KEYS)}, as numpy.savez writes it)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:  # not a zip, pickled objects, a bare .npy ...
        raise ValueError(f"cannot read {path!r} as an .npz archive of arrays: {error}") from error
    missing = [key for key in MNIST_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{path!r} lacks {', '.join(missing)}: an MNIST npz in the Keras layout "
                         f"holds {', '.join(MNIST_KEYS)} (it has {', '.join(arrays) or 'nothing'})")
    parts = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (2, 3) or x.shape[0] == 0:
            raise ValueError(f"{path!r}: x_{split} must be images (n, h, w) or rows (n, features), "
                             f"got shape {x.shape}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{path!r}: y_{split} must hold one label per image ({x.shape[0]}), "
                             f"got shape {y.shape}")
        if y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
            raise ValueError(f"{path!r}: y_{split} must be integer labels 0..9")
        parts[split] = (x.reshape(x.shape[0], -1).astype(np.float64) / 255.0, y.astype(np.int64))
    if parts["train"][0].shape[1] != parts["test"][0].shape[1]:
        raise ValueError(f"{path!r}: x_train and x_test have different image sizes")
    x_train, x_test = standardise(parts["train"][0], parts["test"][0])
    return Dataset("mnist", x_train, parts["train"][1], x_test, parts["test"][1], "classification", 10)


def teacher_student(inputs=32, hidden=64, outputs=4, train=4096, test=1024, noise=0.1, seed=0) -> Dataset:
    """A regression whose truth is known: ``y = W2 tanh(W1 x) + noise``.

    ``x`` ~ N(0, I) of width ``inputs``; the teacher's weights are N(0, 1/fan_in),
    so its outputs have variance of order 1; ``noise`` is the standard deviation
    of the Gaussian noise added to the targets, the lowest test mean squared
    error a student can reach is ``noise**2``.  Everything is drawn from ``seed``.
    """
    for key, value in (("inputs", inputs), ("hidden", hidden), ("outputs", outputs), ("train", train),
                       ("test", test)):
        if not is_integer(value) or value < 1:
            raise ValueError(f"teacher {key} must be a positive integer, got {value!r}")
    if not (is_finite_number(noise) and noise >= 0):
        raise ValueError(f"teacher noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 1.0 / np.sqrt(inputs), size=(inputs, hidden))
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, outputs))
    x = rng.normal(size=(train + test, inputs))
    y = np.tanh(x @ w1) @ w2 + noise * rng.normal(size=(train + test, outputs))
    x_train, x_test = standardise(x[:train], x[train:])
    return Dataset("teacher", x_train, y[:train], x_test, y[train:], "regression", outputs)


MNIST1D_DEFAULTS = {"num_samples": 5000, "train_split": 0.8, "seed": 42}
"""The MNIST-1D settings fpsim relies on (the package's defaults, checked when it is generated)."""

_MNIST1D_CACHE: dict = {}


def load_mnist1d() -> Dataset:
    """MNIST-1D generated locally (``mnist1d.data.make_dataset`` with its default arguments).

    The generator seeds numpy's and Python's global random state (seed 42);
    both are saved and restored around it, so loading the data changes no other
    stream.  The package standardises the whole set to mean 0 and standard
    deviation 1; the split is the package's (4000 / 1000).  The result is
    cached for the process (generating takes about a second).
    """
    if "data" not in _MNIST1D_CACHE:
        try:
            from mnist1d.data import get_dataset_args, make_dataset
        except ImportError as error:
            raise ValueError("the mnist1d data set needs the mnist1d package: pip install mnist1d "
                             "(or fpsim[torch])") from error
        import random

        args = get_dataset_args()
        settings = {key: getattr(args, key) for key in MNIST1D_DEFAULTS}
        if settings != MNIST1D_DEFAULTS:
            raise ValueError(f"this mnist1d package's default settings {settings} differ from the "
                             f"{MNIST1D_DEFAULTS} fpsim was written against")
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            made = make_dataset(args)
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
        _MNIST1D_CACHE["data"] = Dataset("mnist1d", made["x"].astype(np.float64), made["y"].astype(np.int64),
                                         made["x_test"].astype(np.float64), made["y_test"].astype(np.int64),
                                         "classification", 10)
    return _MNIST1D_CACHE["data"]


PYDOC_VALIDATION = 0.1
"""Default share of the pydoc text (its end) held out for validation."""


@dataclass(frozen=True)
class TextDataset:
    """A character-level text, its vocabulary, and a fixed split into training and validation text.

    Characters are encoded as their index in ``vocabulary`` (the text's distinct
    characters in code-point order); ``train`` is the first part of the text,
    ``validation`` the rest, both as int64 token arrays.
    """

    name: str
    vocabulary: str
    train: np.ndarray
    validation: np.ndarray
    task: str = "language-model"

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.vocabulary)

    def encode(self, text: str) -> np.ndarray:
        """Token indices of ``text`` (every character must be in the vocabulary)."""
        return _encode(text, self.vocabulary)

    def decode(self, tokens) -> str:
        """The text of token indices."""
        return "".join(self.vocabulary[int(t)] for t in tokens)

    def batch(self, rng: np.random.Generator, batch_size: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """``batch_size`` windows of the training text at uniformly random starts drawn from ``rng``.

        Returns inputs ``x`` and targets ``y``, both (batch_size, block_size) int64,
        ``y`` being ``x`` shifted by one character (the next character at every position).
        """
        if block_size + 1 > len(self.train):
            raise ValueError(f"block_size {block_size} does not fit the {len(self.train)} training characters")
        starts = rng.integers(0, len(self.train) - block_size, size=batch_size)
        windows = np.lib.stride_tricks.sliding_window_view(self.train, block_size + 1)[starts]
        return windows[:, :-1], windows[:, 1:]

    def validation_windows(self, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole validation text as consecutive windows (the same for every run), inputs and targets.

        Windows start every ``block_size`` characters; the characters after the
        last full window are left out.  Shapes (n, block_size), n = (len - 1) // block_size.
        """
        n = (len(self.validation) - 1) // block_size
        if n == 0:
            raise ValueError(f"block_size {block_size} is longer than the validation text")
        windows = np.lib.stride_tricks.sliding_window_view(self.validation, block_size + 1)[::block_size][:n]
        return windows[:, :-1].copy(), windows[:, 1:].copy()


def pydoc_text() -> str:
    """The values of ``pydoc_data.topics.topics`` joined in sorted key order (464,970 characters and 103
    distinct ones on CPython 3.11.7; the text changes with the Python version)."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def load_pydoc(validation: float = PYDOC_VALIDATION) -> TextDataset:
    """The pydoc text (see ``pydoc_text``), its last ``validation`` share held out (at least one character
    on each side)."""
    if not (is_finite_number(validation) and 0 < validation < 1):
        raise ValueError(f"pydoc validation share must be a number in (0, 1), got {validation!r}")
    text = pydoc_text()
    vocabulary = "".join(sorted(set(text)))
    tokens = _encode(text, vocabulary)
    cut = min(max(len(tokens) - int(round(validation * len(tokens))), 1), len(tokens) - 1)
    return TextDataset("pydoc", vocabulary, tokens[:cut], tokens[cut:])


def _encode(text: str, vocabulary: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocabulary)}
    missing = sorted(set(text) - set(index))
    if missing:
        raise ValueError(f"characters {''.join(missing)!r} are not in the vocabulary")
    return np.array([index[c] for c in text], dtype=np.int64)
