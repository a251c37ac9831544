"""Training data: real data sets read from disk (never downloaded at run time) and a synthetic one.

``load_data(spec)`` returns a ``Dataset``; ``spec`` is JSON-able so that a run's
configuration records exactly which data it used:

* ``"digits"`` (the default): the UCI handwritten digits that scikit-learn ships
  inside its package (1797 images of 8x8 pixels, 10 classes), split once with a
  fixed seed into 1437 training and 360 test images, stratified by class;
* ``"mnist:PATH"`` or ``{"name": "mnist", "path": PATH}``: MNIST from a local
  ``.npz`` file in the Keras layout (``x_train, y_train, x_test, y_test``);
* ``"teacher"`` or ``{"name": "teacher", ...}``: a teacher-student regression,
  targets from a fixed random teacher network plus Gaussian noise.

Inputs are standardised per feature with the training set's mean and standard
deviation (features that are constant in the training set are only centred),
so every data set reaches the model with values of order 1, in float64.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DATA_SETS = ("digits", "mnist", "teacher")
"""Names ``load_data`` understands."""

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


def load_data(spec="digits") -> Dataset:
    """The data set named by ``spec`` (see the module docstring for the accepted forms)."""
    name, options = parse_data_spec(spec)
    if name == "digits":
        _no_options(name, options, allowed=())
        return load_digits()
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
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"teacher {key} must be a positive integer, got {value!r}")
    if not (isinstance(noise, (int, float)) and np.isfinite(noise) and noise >= 0):
        raise ValueError(f"teacher noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 1.0 / np.sqrt(inputs), size=(inputs, hidden))
    w2 = rng.normal(0.0, 1.0 / np.sqrt(hidden), size=(hidden, outputs))
    x = rng.normal(size=(train + test, inputs))
    y = np.tanh(x @ w1) @ w2 + noise * rng.normal(size=(train + test, outputs))
    x_train, x_test = standardise(x[:train], x[train:])
    return Dataset("teacher", x_train, y[:train], x_test, y[train:], "regression", outputs)
