"""fpsim.torch.inspect, ``fpsim inspect``, and the torch extra's import guard."""

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from fpsim.cli import main  # noqa: E402
from fpsim.torch import inspect  # noqa: E402
from fpsim.torch.inspect import loss_scale_window  # noqa: E402

FP16_MAX = 65504.0


def fixed_output_model(values):
    """A Linear(1, n) without bias whose output on input [[1]] is ``values`` exactly."""
    linear = nn.Linear(1, len(values), bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(values, dtype=torch.float32).reshape(-1, 1))
    return linear


def test_statistics_of_a_hand_built_tensor():
    values = [70000.0, 1.0, 2.0 ** -26, 2.0 ** -20, 0.0]  # overflows, fits, flushes, subnormal, zero (in FP16)
    result = inspect(fixed_output_model(values), torch.ones(1, 1), formats=("fp16", "bf16"))
    row = next(r for r in result.rows if r["kind"] == "activations")
    assert row["module"] == "model" and row["values"] == 5 and row["nonzero"] == 4
    assert row["max_abs"] == 70000.0 and row["min_abs"] == 2.0 ** -26
    assert row["fp16"] == {"underflow": 0.25, "subnormal": 0.25, "overflow": 0.2,
                           "headroom": math.log2(FP16_MAX / 70000.0)}
    assert (row["bf16"]["underflow"], row["bf16"]["subnormal"], row["bf16"]["overflow"]) == (0, 0, 0)
    # loss = sum of outputs: every output's gradient is 1, the weight gradient is the input, 1
    grads = {r["kind"]: r for r in result.rows if r["kind"] != "activations"}
    assert grads["activation_grads"]["max_abs"] == grads["activation_grads"]["min_abs"] == 1.0
    assert grads["weight_grads"]["values"] == 5
    assert "fp16 uf/sub/of % hr" in result.table()


@pytest.mark.parametrize("gradients, expected", [
    ([2.0 ** -30, 1.0], {"k_min": 6, "k_max": 15, "flushed": 0.0}),  # 2^-30 * 2^6 = 2^-24, FP16's least
    ([2.0 ** -45, 1.0], {"k_min": -24, "k_max": 15, "flushed": 0.5}),  # 2^-45 flushes below 2^16 anyway
    ([65504.0, 1.0], {"k_min": -24, "k_max": 0, "flushed": 0.0}),
    ([65520.0], {"k_min": -40, "k_max": -1, "flushed": 0.0}),  # 65520 rounds to inf in FP16
])
def test_loss_scale_window(gradients, expected):
    assert loss_scale_window(np.array(gradients)) == expected


def test_loss_scale_window_of_a_model_brackets_its_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    result = inspect(model, torch.randn(32, 8), loss_fn=lambda out: (out ** 2).mean() * 1e-6)
    window = result.loss_scale_window
    gradients = np.concatenate([v for (m, kind), v in result.values.items() if kind != "activations"])
    largest = np.abs(gradients).max()
    assert largest * 2.0 ** window["k_max"] <= FP16_MAX < largest * 2.0 ** (window["k_max"] + 1)
    assert window["k_min"] <= window["k_max"]


def test_cli_inspect_prints_a_table_and_writes_a_figure(tmp_path, capsys):
    figure = tmp_path / "mlp.png"
    assert main(["inspect", "--model", "mlp", "--batch-size", "16", "--formats", "fp16,e4m3",
                 "--plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "layers.3" in out and "weight_grads" in out and "FP16 loss scales 2^k" in out
    assert figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv", [["--model", "mlp", "--formats", "fp99"], ["--model", "mlp", "--batch-size", "0"],
                                  ["--model", "resnet"]])
def test_cli_inspect_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fpsim") and "\n" not in err


def test_import_fpsim_never_imports_torch_and_fpsim_torch_says_what_to_install():
    code = ("import sys\n"
            "import fpsim\n"
            "assert 'torch' not in sys.modules, 'import fpsim imported torch'\n"
            "sys.modules['torch'] = None\n"
            "try:\n"
            "    import fpsim.torch\n"
            "except ImportError as error:\n"
            "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'fpsim\'s torch engine needs PyTorch: pip install "fpsim[torch]"'


def test_a_bad_plot_path_is_refused_before_the_model_runs(tmp_path, capsys):
    from fpsim.cli import main
    assert main(["inspect", "--model", "cnn", "--plot", str(tmp_path / "missing" / "x.png")]) == 2
    captured = capsys.readouterr()
    assert "give a file in an existing folder" in captured.err and "module" not in captured.out
