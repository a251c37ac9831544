"""``fpsim inspect`` and ``fpsim train`` with ``--model path/to/file.py:build`` and ``--model package.module:build``
(issue 20, item 5): every form of build()'s return, and one clear line (exit status 2) for every mistake."""

import re
import sys
import textwrap

import pytest

pytest.importorskip("torch")

from fpsim.cli import main  # noqa: E402


HEADER = "import torch\n\n\ndef _model():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(" \
         "torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))\n\n\n"


def cli(argv, capsys, allowed=(0, 2)):
    """(status, out, err) of ``fpsim ARGV``, checked as ``test_hostile_cli.run_cli`` checks: an allowed status,
    no traceback of fpsim's, one line for status 2 (``traceback=True``: the user's own traceback before it)."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status in allowed, (argv, status, err)
    if status == 2:
        assert err.strip().splitlines()[-1].startswith("fpsim: error: "), err
    return status, out, err


def model_file(folder, body: str, name: str = "mymodel.py"):
    path = folder / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


@pytest.mark.parametrize("body, rows", [
    ("def build():\n    return _model(), torch.randn(5, 6)\n", "0"),
    ("def build():\n    y = torch.tensor([0, 1, 2, 0, 1])\n"
     "    return _model(), torch.randn(5, 6), lambda out: torch.nn.functional.cross_entropy(out, y)\n", "0"),
    ("def build():\n    return {'model': _model(), 'inputs': (torch.randn(5, 6),)}\n", "0"),
    ("class Keyword(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.body = _model()\n\n    def forward(self, features, scale):\n"
     "        return {'logits': self.body(features) * scale}\n\n\n"
     "def build():\n    return Keyword(), {'features': torch.randn(5, 6), 'scale': torch.tensor(2.0)}\n", "body.0"),
])
def test_inspect_takes_every_form_of_a_builds_return(tmp_path, capsys, body, rows):
    path = model_file(tmp_path, body)
    out = cli(["inspect", "--model", f"{path}:build", "--formats", "fp16"], capsys, allowed=(0,))[1]
    assert "on its build's inputs, seed 0" in out and "weight_grads" in out
    assert any(line.split()[:2] == [rows, "activations"] for line in out.splitlines())


def test_a_package_module_is_found_from_the_current_folder_and_the_seed_seeds_the_build(tmp_path, capsys,
                                                                                         monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "helpers.py").write_text("WIDTH = 6\n")
    model_file(tmp_path / "pkg", "from pkg.helpers import WIDTH\n\n\ndef build():\n"
                                 "    return torch.nn.Linear(WIDTH, 3), torch.randn(4, WIDTH)\n", "models.py")
    monkeypatch.chdir(tmp_path)
    outputs = []
    for seed in (0, 0, 1):
        out = cli(["inspect", "--model", "pkg.models:build", "--seed", seed], capsys, (0,))[1]
        outputs.append(out.split("\n", 1)[1])
    assert outputs[0] == outputs[1] != outputs[2]
    assert str(tmp_path) not in sys.path  # the folder was on it only while importing


@pytest.mark.parametrize("spec, body, message", [
    ("{folder}/missing.py:build", None, "no such file .*missing.py"),
    ("{folder}:build", None, "is a folder"),
    ("no_such_package_x.models:build", None, "no module named 'no_such_package_x'"),
    ("{path}:nothing", "def build():\n    return _model()\n", "has no 'nothing' \\(its functions: build\\)"),
    ("{path}:WIDTH", "WIDTH = 3\n", "WIDTH is not callable \\(type int\\)"),
    ("{path}:build", "def build():\n    return 'a model'\n", "build\\(\\) returned str: return a torch.nn.Module"),
    ("{path}:build", "def build():\n    return _model(), 1, 2, 3\n", "returned a tuple of 4"),
    ("{path}:build", "def build():\n    return {'model': _model(), 'data': 1}\n", "a dict with keys model, data"),
    ("{path}:build", "def build():\n    return 'x', torch.zeros(1)\n", "model is a str, not a torch.nn.Module"),
    ("{path}:build", "def build():\n    return _model(), [1.0]\n", "inputs are a list"),
    ("{path}:build", "def build():\n    return _model()\n", "returned only a module; fpsim inspect needs"),
    ("{path}:build", "def build():\n    return _model(), torch.zeros(2, 6), 'loss'\n", "loss_fn is a str"),
    ("{path}", "def build():\n    return _model()\n", "invalid choice"),
    ("{path}:not-a-name", "def build():\n    return _model()\n", "give WHERE:FUNCTION"),
])
def test_each_mistake_is_one_line_and_exit_status_2(tmp_path, capsys, spec, body, message):
    path = model_file(tmp_path, body) if body is not None else tmp_path / "mymodel.py"
    argv = ["inspect", "--model", spec.format(folder=tmp_path, path=path)]
    err = cli(argv, capsys, allowed=(2,))[2]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("body, where, raised", [
    ("def build():\n    return _helper()\n\n\ndef _helper():\n    return 1 / 0\n", "build() raised",
     "ZeroDivisionError: division by zero"),
    ("raise RuntimeError('broken at import')\n", "importing", "RuntimeError: broken at import"),
    ("def build(:\n", "importing", "SyntaxError"),
    ("import no_such_dependency_y\n", "importing", "ModuleNotFoundError: No module named 'no_such_dependency_y'"),
    ("class Bad(torch.nn.Module):\n    def forward(self, x):\n        return x @ torch.zeros(5, 3)\n\n\n"
     "def build():\n    return Bad(), torch.zeros(2, 6)\n", "running the model raised", "RuntimeError"),
])
def test_the_users_own_error_shows_their_traceback_then_one_line(tmp_path, capsys, body, where, raised):
    path = model_file(tmp_path, body)
    err = cli(["inspect", "--model", f"{path}:build"], capsys, allowed=(2,))[2].strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" or "SyntaxError" in raised
    assert err[-1].startswith(f"fpsim: error: --model {path}:build: {where}") and raised.split(":")[0] in err[-1]
    shown = "\n".join(err[:-1])
    assert raised in shown and str(path) in shown
    assert "fpsim/" not in shown and "importlib" not in shown and "site-packages" not in shown


def test_inspect_refuses_a_batch_size_for_a_builds_inputs(tmp_path, capsys):
    path = model_file(tmp_path, "def build():\n    return _model(), torch.zeros(2, 6)\n")
    err = cli(["inspect", "--model", f"{path}:build", "--batch-size", "8"], capsys, allowed=(2,))[2]
    assert "--batch-size is for a built-in model" in err and len(err.splitlines()) == 1


def test_train_builds_a_factory_told_the_data_sizes_for_a_named_data_set(tmp_path, capsys):
    path = model_file(tmp_path, "def build(inputs, classes, width=4):\n    print('told', inputs, classes, width)\n"
                                "    return torch.nn.Sequential(torch.nn.Linear(inputs, width), torch.nn.Tanh(),"
                                " torch.nn.Linear(width, classes))\n")
    argv = ["train", "--model", f"{path}:build", "--data", "digits", "--model-options", '{"width": 5}',
            "--policy", "bf16-mixed", "--steps", "3", "--batch-size", "8", "--no-progress", "--shadow-every", "0"]
    out = cli(argv, capsys, allowed=(0,))[1]
    assert "told 64 10 5" in out and "test_accuracy" in out


def test_train_without_data_trains_on_the_builds_inputs_with_its_loss(tmp_path, capsys):
    path = model_file(tmp_path, """
        class WithLoss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.body = _model()

            def forward(self, features, labels):
                logits = self.body(features)
                return {"logits": logits, "loss": torch.nn.functional.cross_entropy(logits, labels)}


        def build():
            return WithLoss(), {"features": torch.randn(8, 6), "labels": torch.randint(0, 3, (8,))}


        def tensor():
            y = torch.randint(0, 3, (8,))
            return _model(), torch.randn(8, 6), lambda out: torch.nn.functional.cross_entropy(out, y)


        def positional():
            return _model(), (torch.randn(8, 6), torch.randn(8, 6))
        """)
    for name in ("build", "tensor"):
        argv = ["train", "--model", f"{path}:{name}", "--policy", "fp16-mixed", "--steps", "30", "--optimizer",
                "adam", "--lr", "0.03", "--no-progress", "--shadow-every", "0"]
        out = cli(argv, capsys, allowed=(0,))[1]
        rows = dict(line.split(None, 1) for line in out.splitlines()[2:] if line.strip())
        assert rows["test_loss"].strip() == "-" and float(rows["final_loss"]) < 1.0  # ln 3 = 1.1 at chance
    err = cli(["train", "--model", f"{path}:positional", "--policy", "fp32", "--no-progress"], capsys, (2,))[2]
    assert "not 2 positional ones" in err and len(err.splitlines()) == 1


def test_train_reports_a_build_that_raises_as_a_factory_and_a_module_without_data(tmp_path, capsys):
    path = model_file(tmp_path, "def broken(inputs):\n    raise KeyError(inputs)\n\n\n"
                                "def bare():\n    return _model()\n")
    err = cli(["train", "--model", f"{path}:broken", "--data", "digits", "--policy", "fp32", "--steps", "1",
               "--no-progress"], capsys, allowed=(2,))[2].strip().splitlines()
    assert err[0] == "Traceback (most recent call last):" and "fpsim/" not in "\n".join(err[:-1])
    assert err[-2] == "KeyError: 64" and err[-1] == f"fpsim: error: --model {path}:broken: broken() raised KeyError: 64"
    err = cli(["train", "--model", f"{path}:bare", "--policy", "fp32", "--no-progress"], capsys, allowed=(2,))[2]
    assert "returned only a module, and there is no --data" in err and len(err.splitlines()) == 1


def test_help_shows_the_forms_and_an_example(capsys):
    for command in ("inspect", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "path/to/file.py:build" in out and "package.module:build" in out and "(module, inputs, loss_fn)" in out
