"""Every ``fpsim.`` name the documentation gives resolves, and every policy its examples name exists.

The documentation: every docstring of the package and of ``analyses/`` (modules, classes, functions and the
string under an attribute), README.md and the example grids (``analyses/grids``).  A dotted name ``fpsim.a.b.C.d`` resolves when its longest
importable prefix is a module and the rest are attributes (a dataclass field counts as one).  Names under
``fpsim.torch`` need PyTorch and are checked only where it is installed.
"""

import ast
import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

import fpsim

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "fpsim").rglob("*.py"), *(ROOT / "analyses").glob("*.py")])
NAME = re.compile(r"(?<![\w./-])fpsim(?:\.[A-Za-z_]\w*)+")
TORCH = importlib.util.find_spec("torch") is not None
POLICY_EXAMPLE = re.compile(r"""(?:fpsim\.train\(|Policy\.preset\(|["']?\b(?:policy|preset)["']?\s*[=:]\s*)"""
                            r"""(\[[^\]]*\]|["'][\w.-]+["'])""")
"""A policy named in an example: ``fpsim.train("x"``, ``Policy.preset("x")``, ``policy="x"``, ``"policy": "x"``,
``"policy": ["x", "y"]``, ``{"preset": "x"``."""


def docstrings(path: Path) -> list[str]:
    """The docstrings of a module: its own, its classes' and functions', and the strings under attributes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    texts = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        for statement in body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
                    and isinstance(statement.value.value, str):
                texts.append(statement.value.value)
    return texts


def documentation() -> dict[str, list[str]]:
    """Where each text comes from (a path relative to the repository) -> its texts."""
    texts = {str(path.relative_to(ROOT)): docstrings(path) for path in SOURCES}
    for path in [ROOT / "README.md", *(ROOT / "analyses" / "grids").glob("*.toml")]:
        texts[str(path.relative_to(ROOT))] = [path.read_text(encoding="utf-8")]
    return texts


def resolves(name: str) -> bool:
    """Whether ``name`` imports: its longest importable prefix, then attributes (or dataclass fields)."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            thing = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            if hasattr(thing, attribute):
                thing = getattr(thing, attribute)
            elif dataclasses.is_dataclass(thing) and attribute in {f.name for f in dataclasses.fields(thing)}:
                return attribute == parts[-1]
            else:
                return False
        return True
    return False


def named(texts: dict[str, list[str]]) -> dict[str, set[str]]:
    """Each dotted ``fpsim.`` name -> the files naming it."""
    out: dict[str, set[str]] = {}
    for where, strings in texts.items():
        for text in strings:
            for name in NAME.findall(text):
                out.setdefault(name.rstrip("."), set()).add(where)
    return out


NAMES = named(documentation())


def test_the_documentation_names_something():
    assert {"fpsim.train", "fpsim.quantize", "fpsim.POLICIES"} <= set(NAMES)


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_dotted_name_in_the_documentation_resolves(name):
    if name.split(".")[:2] == ["fpsim", "torch"] and not TORCH:
        pytest.skip("names under fpsim.torch need PyTorch")
    assert resolves(name), f"{name}, named in {', '.join(sorted(NAMES[name]))}, does not resolve"


def test_every_policy_an_example_names_is_a_preset():
    wrong = []
    for where, strings in documentation().items():
        for text in strings:
            for group in POLICY_EXAMPLE.findall(text):
                for policy in re.findall(r"""["']([\w.-]+)["']""", group):
                    if policy not in fpsim.POLICIES and not policy.endswith(".json"):
                        wrong.append(f"{policy} ({where})")
    assert not wrong, f"examples name policies that are no presets: {', '.join(sorted(set(wrong)))}"
