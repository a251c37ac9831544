"""A model of your own from the command line: ``--model path/to/file.py:build`` or ``--model package.module:build``.

``SPEC`` is ``WHERE:NAME``: ``WHERE`` a Python file (a path ending in ``.py`` or holding a ``/``; its folder is
on ``sys.path`` while it loads and builds, so that it may import its neighbours) or an importable module
(``package.module``, found from the current folder first, as ``python -m`` finds it), and ``NAME`` a function
in it.  ``build()`` returns one of:

* a ``torch.nn.Module``;
* ``(module, inputs)``: example inputs as ``fpsim.torch.inspect`` takes them (a tensor, a tuple of positional
  inputs, or a dict of keyword inputs such as ``{"input_ids": ..., "attention_mask": ...}``);
* ``(module, inputs, loss_fn)``: also ``loss_fn(output) -> scalar tensor`` for those inputs;
* a dict with the keys ``"model"`` (required), ``"inputs"`` and ``"loss_fn"``.

Everything that goes wrong is a ``ValueError`` of one line naming the spec: no such file or module, no such
function in it, a name that is not callable, a return of another kind.  When the user's own code raises (at
import or in ``build()``), ``UserCodeError`` carries that traceback trimmed to the user's frames
(``user_traceback``), for the command to show before its one line.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import sysconfig
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

import torch

_FPSIM = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LIBRARIES = {os.path.abspath(sysconfig.get_paths()[key]) for key in ("stdlib", "purelib", "platlib")}
KEYS = ("model", "inputs", "loss_fn")
"""The keys of a dict that ``build()`` returns (``"model"`` required)."""


class UserCodeError(ValueError):
    """The user's code raised: ``str()`` is one line naming the spec, ``user_traceback`` their traceback."""

    def __init__(self, message: str, user_traceback: str):
        super().__init__(message)
        self.user_traceback = user_traceback


@dataclass(frozen=True)
class Built:
    """What ``build()`` returned, in its parts (None where it gave none)."""

    model: "torch.nn.Module"
    inputs: object = None
    loss_fn: object = None


def is_spec(text: str) -> bool:
    """Whether ``text`` names a build function (``WHERE:NAME``) rather than a built-in model."""
    return ":" in text


def load(spec: str):
    """The function ``spec`` names (see the module docstring), its file or module imported."""
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ValueError(f"--model {spec}: give WHERE:FUNCTION, e.g. path/to/model.py:build or "
                         f"package.module:build")
    if where.endswith(".py") or "/" in where or os.sep in where:
        module = _import_file(spec, where)
    else:
        module = _import_module(spec, where)
    if not hasattr(module, name):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise ValueError(f"--model {spec}: {where} has no {name!r}"
                         + (f" (its functions: {', '.join(defined)})" if defined else ""))
    function = getattr(module, name)
    if not callable(function):
        raise ValueError(f"--model {spec}: {name} is not callable (type {type(function).__name__}): name the "
                         f"function that builds the model")
    return function


def build(spec: str, function, seed: int, **options) -> Built:
    """``function(**options)`` with torch's global generator seeded from ``seed`` (restored after), its return
    checked and split into its parts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        returned = _call(spec, function, **options)
    return parts(spec, returned)


def as_factory(spec: str, function):
    """A model factory (``fpsim.train(model=...)``) that calls ``function`` and keeps the module of what it
    returns; its signature is ``function``'s, so that it is told what the data decide."""
    @functools.wraps(function)
    def factory(**options):
        return parts(spec, _call(spec, function, **options)).model
    return factory


def parts(spec: str, returned) -> Built:
    """``returned`` (a module, a tuple of 2 or 3, or a dict of ``KEYS``) as a ``Built``; ValueError, one line,
    for any other return."""
    forms = ("return a torch.nn.Module, (module, inputs), (module, inputs, loss_fn) or a dict with keys "
             "model, inputs, loss_fn")
    if isinstance(returned, torch.nn.Module):
        return Built(returned)
    if isinstance(returned, Mapping):
        unknown = sorted(set(map(str, returned)) - set(KEYS))
        if unknown or "model" not in returned:
            raise ValueError(f"--model {spec}: build() returned a dict with keys {', '.join(map(str, returned))}: "
                             f"{forms}")
        model, inputs, loss_fn = (returned.get(key) for key in KEYS)
    elif isinstance(returned, tuple) and len(returned) in (2, 3):
        model, inputs, loss_fn = (*returned, None)[:3]
    else:
        kind = f"a tuple of {len(returned)}" if isinstance(returned, tuple) else type(returned).__name__
        raise ValueError(f"--model {spec}: build() returned {kind}: {forms}")
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {spec}: build()'s model is a {type(model).__name__}, not a torch.nn.Module")
    if inputs is not None and not isinstance(inputs, (torch.Tensor, tuple, Mapping)):
        raise ValueError(f"--model {spec}: build()'s inputs are a {type(inputs).__name__}: give a tensor, a tuple "
                         f"of positional inputs or a dict of keyword inputs")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError(f"--model {spec}: build()'s loss_fn is a {type(loss_fn).__name__}, not a function")
    return Built(model, inputs, loss_fn)


def _call(spec: str, function, **options):
    """``function(**options)``; the user's exception as a ``UserCodeError``."""
    try:
        with _on_path(getattr(sys.modules.get(getattr(function, "__module__", "")), "__file__", None)):
            return function(**options)
    except Exception as error:  # the user's code: anything may go wrong in it
        raise user_error(spec, f"{getattr(function, '__name__', 'build')}() raised", error) from None


def _import_file(spec: str, path: str):
    absolute = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(absolute):
        raise ValueError(f"--model {spec}: {path} is a folder: name a Python file, e.g. {path}/model.py:build")
    if not os.path.isfile(absolute):
        raise ValueError(f"--model {spec}: no such file {path}")
    name = "_fpsim_user_" + "".join(c if c.isalnum() else "_" for c in os.path.splitext(absolute)[0])
    loader_spec = importlib.util.spec_from_file_location(name, absolute)
    if loader_spec is None:
        raise ValueError(f"--model {spec}: {path} cannot be imported as Python (name it .py)")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        with _on_path(absolute):
            loader_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise user_error(spec, f"importing {path} raised", error) from None
    return module


def _import_module(spec: str, name: str):
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is not None and (name == error.name or name.startswith(error.name + ".")):
            raise ValueError(f"--model {spec}: no module named {error.name!r} (run from the folder that holds "
                             f"it, or give a file: path/to/{name.split('.')[-1]}.py:"
                             f"{spec.rpartition(':')[2]})") from None
        raise user_error(spec, f"importing {name} raised", error) from None
    except Exception as error:
        raise user_error(spec, f"importing {name} raised", error) from None
    finally:
        sys.path.remove(os.getcwd())


class _on_path:
    """The folder of ``path`` first on ``sys.path`` for the duration (nothing for None)."""

    def __init__(self, path):
        self.folder = os.path.dirname(path) if path else None

    def __enter__(self):
        if self.folder:
            sys.path.insert(0, self.folder)

    def __exit__(self, *exc):
        if self.folder:
            sys.path.remove(self.folder)


def user_error(spec: str, what: str, error: BaseException) -> UserCodeError:
    """A ``UserCodeError``: ``--model SPEC: WHAT TYPE: MESSAGE``, and the traceback of the user's frames
    (fpsim's, importlib's and the installed libraries' left out; all but fpsim's and importlib's when that
    leaves none, as for a package installed among the libraries)."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith("<frozen") and not _inside(frame.filename, {_FPSIM})]
    own = [frame for frame in frames if not _inside(frame.filename, _LIBRARIES)]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(own or frames),
             *traceback.format_exception_only(type(error), error)]
    message = " ".join(str(error).split()) or "(no message)"
    return UserCodeError(f"--model {spec}: {what} {type(error).__name__}: {message}", "".join(lines))


def _inside(path: str, folders) -> bool:
    path = os.path.abspath(path)
    return any(path == folder or path.startswith(folder + os.sep) for folder in folders)
