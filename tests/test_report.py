"""`fpsim report`: the quick run produces every section and figure; bad names, failing analyses and
interruptions are handled (temporary folder, then rename)."""

import json
import os
import re
import signal
import textwrap
from pathlib import Path

import pytest

from fpsim import cli
from fpsim.report import runner as report

EXPECTED_FIGURES = {
    "formats": ["number_line.png"],
    "rounding_validation": ["double_rounding.png"],
    "gradient_underflow": ["histograms.png", "underflow_by_layer.png", "rescue_by_scale.png"],
    "loss_scaling": ["window.png", "dynamic_scale.png"],
    "master_weights": ["lost_vs_ratio.png", "lost_vs_lr.png", "training_curves.png"],
    "bf16_range": ["range_vs_precision.png"],
    "claims": ["recipe.png", "time_model.png", "training_memory.png", "accuracy_seeds.png"],
    "transformer_underflow": ["histograms.png", "flushed_by_module.png", "loss_scale_window.png", "trained.png"],
    "transformer_overflow": ["headroom.png", "forced.png"],
    "claims_models": ["paired_differences.png"],
    "fp8": ["unscaled.png", "delayed_lag.png", "against_bf16.png"],
}
CLAIMS = ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)"]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "reports"
    status = cli.main(["report", "--quick", "--out", str(out), "--no-progress"])
    return status, out


def test_quick_report_has_every_section_and_figure(quick_report):
    status, out = quick_report
    text = (out / "REPORT.md").read_text()
    assert status == 0, text[:2000]
    meta = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in meta["analyses"] if not a["ok"]] == []
    assert sorted(a["name"] for a in meta["analyses"]) == sorted(EXPECTED_FIGURES)
    assert text.index("## Summary") < text.index("## Contents")
    for name, figures in EXPECTED_FIGURES.items():
        section = json.loads((out / name / "section.json").read_text())
        assert f"## {section['title']}" in text
        assert "**What was run.**" in "\n".join(section["parts"]), name
        written = [f["path"] for f in section["figures"]]
        for figure in figures:
            assert figure in written, (name, figure)
        for figure in written:
            png = out / name / figure
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
            assert f"]({name}/{figure})" in text
        for data in section["data_files"]:
            assert (out / name / data).stat().st_size > 0
    summary = text[text.index("## Summary"):text.index("## Contents")]
    for claim in CLAIMS:
        assert re.search(rf"^\| {re.escape(claim)} .* \| \*\*(holds|holds under conditions|not supported by the "
                         rf"evidence)\*\* \|", summary, re.M), claim
    for claim in ("(a)", "(e)", "(f)", "(g)", "(h)"):  # an overall verdict, then one per model
        assert re.search(rf"^\| {re.escape(claim)} [^|]* \| overall \| \*\*", summary, re.M), claim
    for model, judged in zip(report.MODELS, (3, 5, 5)):  # (g), (h): the conv net and the transformer only
        assert summary.count(f"| | {model} | **") == judged, model
    assert summary.count("![") >= 3
    assert not list(out.parent.glob(".reports.*")), "temporary folders left behind"


def _write_analyses(folder: Path, scripts: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return folder


GOOD = """
    from fpsim.report.runner import new_section
    ORDER = 1
    def run(ctx):
        section = new_section(ctx, globals(), "Good analysis")
        section.what_was_run("nothing")
        section.text("the number is 42")
        return section
"""
BAD = """
    ORDER = 2
    def run(ctx):
        raise RuntimeError("deliberate failure for the test")
"""
INTERRUPTED = """
    ORDER = 3
    def run(ctx):
        (ctx.out / "half-written.txt").write_text("partial")
        raise KeyboardInterrupt
"""


def test_unknown_analysis_is_an_error_listing_the_names(capsys):
    assert cli.main(["report", "--only", "formats", "no_such_analysis", "--out", "unused"]) == 2
    error = capsys.readouterr().err
    assert "no_such_analysis" in error
    for name in EXPECTED_FIGURES:
        assert name in error


def test_failing_analysis_is_reported_and_others_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "ANALYSES_DIR", _write_analyses(tmp_path / "a", {"good": GOOD, "bad": BAD}))
    out = tmp_path / "out"
    assert cli.main(["report", "--out", str(out), "--no-progress"]) == 1
    assert "bad" in capsys.readouterr().out
    text = (out / "REPORT.md").read_text()
    assert "the number is 42" in text
    assert "deliberate failure for the test" in text
    assert "**Failed analyses:** bad" in text
    assert "RuntimeError" in (out / "bad" / "error.txt").read_text()


def test_interrupted_run_leaves_the_previous_report_intact(tmp_path, monkeypatch):
    analyses = _write_analyses(tmp_path / "a", {"good": GOOD, "stop": INTERRUPTED})
    monkeypatch.setattr(report, "ANALYSES_DIR", analyses)
    out = _fake_report(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        report.run_report(out, progress=False)
    assert (out / "REPORT.md").read_text() == "previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]
    assert cli.main(["report", "--out", str(out), "--only", "stop", "--no-progress"]) == 130
    assert (out / "REPORT.md").read_text() == "previous report\n"


def test_completed_run_replaces_the_report_and_only_keeps_other_sections(tmp_path, monkeypatch):
    other = GOOD.replace("Good analysis", "Other analysis").replace("42", "43")
    monkeypatch.setattr(report, "ANALYSES_DIR", _write_analyses(tmp_path / "a", {"good": GOOD, "other": other}))
    out = _fake_report(tmp_path / "out")
    assert cli.main(["report", "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]
    assert cli.main(["report", "--out", str(out), "--only", "good", "--no-progress"]) == 0
    text = (out / "REPORT.md").read_text()
    assert "the number is 42" in text and "the number is 43" in text
    assert "Carried over unchanged from the previous report (not run now): other" in text


def _previous_report(tmp_path, monkeypatch) -> Path:
    """A folder with one analysis (GOOD) and ``out`` holding a previous report."""
    monkeypatch.setattr(report, "ANALYSES_DIR", _write_analyses(tmp_path / "a", {"good": GOOD}))
    return _fake_report(tmp_path / "out")


def _fake_report(out: Path) -> Path:
    """A folder holding a previous report: REPORT.md and its manifest."""
    out.mkdir()
    (out / "REPORT.md").write_text("previous report\n")
    (out / "report.json").write_text(json.dumps({"analyses": [], "files": ["REPORT.md"]}))
    return out


def _renames_failing(monkeypatch, failing: set) -> list:
    """Make the ``failing`` calls of ``os.rename`` (counted from 1) raise PermissionError; returns the calls made."""
    real_rename, calls = os.rename, []

    def rename(source, target):
        calls.append((Path(source).name, Path(target).name))
        if len(calls) in failing:
            raise PermissionError(13, "Permission denied (simulated)", str(target))
        real_rename(source, target)
    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_a_failed_swap_puts_the_previous_report_back(tmp_path, monkeypatch):
    out = _previous_report(tmp_path, monkeypatch)
    calls = _renames_failing(monkeypatch, {2})
    with pytest.raises(OSError, match=r"could not move the new report into .*out .*Permission denied \(simulated\).*"
                                      r"the previous report is back in place"):
        report.run_report(out, progress=False)
    assert [call[0] for call in calls[:2]] == ["out", calls[1][0]] and calls[1][1] == "out"  # aside, new in
    assert calls[2] == (calls[0][1], "out")  # and the old one back
    assert (out / "REPORT.md").read_text() == "previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]


def test_a_failed_restore_says_where_the_previous_report_is(tmp_path, monkeypatch):
    out = _previous_report(tmp_path, monkeypatch)
    calls = _renames_failing(monkeypatch, {2, 3})
    with pytest.raises(OSError, match="nor the previous report back") as raised:
        report.run_report(out, progress=False)
    aside = tmp_path / calls[0][1]
    assert str(aside) in str(raised.value) and (aside / "REPORT.md").read_text() == "previous report\n"


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler for the test, whatever the process inherited: a shell starts a background
    job with SIGINT ignored, and Python then installs no handler of its own (a CI run started with & failed
    the swap test for that reason)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_during_the_swap_waits_for_its_end(tmp_path, monkeypatch, python_sigint_handler):
    """Ctrl-C just after the old report is renamed aside: the new one still moves in, then the interrupt is raised."""
    out = _previous_report(tmp_path, monkeypatch)
    real_rename = os.rename

    def rename(source, target):
        real_rename(source, target)
        if Path(source) == out:
            signal.raise_signal(signal.SIGINT)
    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        report.run_report(out, progress=False)
    assert "the number is 42" in (out / "REPORT.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "out"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


NEEDS_MISSING = """
    ORDER = 4
    NEEDS = ("fpsim_no_such_module",)
    def run(ctx):
        raise AssertionError("an analysis whose NEEDS are missing must not run")
"""


def test_an_analysis_whose_needs_are_missing_is_skipped_and_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "ANALYSES_DIR", _write_analyses(tmp_path / "a", {"good": GOOD,
                                                                                  "optional": NEEDS_MISSING}))
    out = tmp_path / "out"
    assert cli.main(["report", "--out", str(out), "--no-progress"]) == 0
    text = (out / "REPORT.md").read_text()
    assert "the number is 42" in text
    assert "**Skipped analyses:** optional (needs fpsim_no_such_module, which is not installed" in text
    assert "| skipped: needs fpsim_no_such_module" in text
    assert [a["skipped"] != "" for a in json.loads((out / "report.json").read_text())["analyses"]] == [False, True]


BLOCK_TORCH = textwrap.dedent("""
    import sys

    class NoTorch:  # as if torch were not installed (sys.modules['torch'] = None would break scipy.stats' import)
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "torch":
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoTorch())
    from fpsim.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")


def test_without_torch_the_torch_analyses_are_skipped_and_the_others_run(tmp_path):
    """A report in a Python where torch cannot be imported: the numpy analyses run, the torch ones are skipped."""
    import subprocess
    import sys

    root = Path(report.__file__).resolve().parents[2]
    needs_torch = [name for name in report.available_analyses()
                   if "torch" in getattr(report.load_analysis(name), "NEEDS", ())]
    assert needs_torch, "no analysis declares NEEDS = ('torch',)"
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "report", "--quick", "--no-progress", "--out",
                           str(tmp_path / "r"), "--only", "formats", *needs_torch],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    text = (tmp_path / "r" / "REPORT.md").read_text()
    assert "## Formats: range and precision" in text
    for name in needs_torch:
        assert f"{name} (needs torch, which is not installed (pip install fpsim[torch]))" in text


def test_the_overall_verdict_combines_the_models():
    def v(model, verdict, condition=""):
        return report.Verdict("(x) claim", verdict, "evidence", model=model, condition=condition)

    assert report.overall_verdict([v("MLP", "holds"), v("conv net", "holds")], skipped=["claims_models"]) == (
        "holds", "Holds on the MLP and conv net. Not judged on the transformer (skipped: claims_models).")
    verdict, text = report.overall_verdict([v("MLP", "holds"), v("conv net", "not supported by the evidence"),
                                            v("transformer", "holds under conditions", "master weights")])
    assert verdict == "holds under conditions"
    assert text == ("Holds on the MLP; holds under conditions on the transformer (master weights); "
                    "not supported by the evidence on the conv net.")
    assert report.overall_verdict([v("MLP", "not supported by the evidence"),
                                   v("transformer", "not supported by the evidence")])[0] == \
        "not supported by the evidence"
    with pytest.raises(ValueError, match="model"):
        v("resnet", "holds")


def test_an_analysis_runs_on_its_own_as_a_script(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(report.__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(root / "analyses" / "formats.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "number_line.png").exists() and (tmp_path / "formats.csv").exists()
    assert "# Formats" in (tmp_path / "section.md").read_text()


# --- the machinery the analyses use ------------------------------------------------------------

def test_lost_update_share_matches_the_theory():
    import numpy as np

    from fpsim.report.lost_updates import measured_lost_share, theoretical_lost_share

    ratios = 2.0 ** np.arange(4, 14, 0.25)
    for fmt, p in (("fp16", 11), ("bf16", 8)):
        measured, theory = measured_lost_share(fmt, ratios, n=4000), theoretical_lost_share(fmt, ratios)
        assert np.all(measured[ratios < 2.0 ** p] == 0) and np.all(measured[ratios > 2.0 ** (p + 1)] == 1)
        assert np.max(np.abs(measured - theory)) < 0.05


def test_memory_model_bytes_per_parameter_and_measured_step():
    from fpsim.report import memory

    per_param = {name: sum(p.bytes_per_param().values()) for name, p in memory.MEMORY_POLICIES.items()}
    assert per_param == {"fp32": 16, "fp16-autocast": 18, "fp16-mixed": 16, "bf16-pure": 8}
    widths = (64, 256, 10)
    for name in ("fp32", "fp16-mixed"):
        measured = memory.measure_training_step(widths, 256, name)
        model = memory.modelled_bytes(memory.MEMORY_POLICIES[name], memory.mlp_params(widths),
                                      memory.mlp_saved_elements(widths, 256), memory.mlp_working_elements(widths, 256))
        assert 0.9 < measured["held bytes"] / model["state bytes"] < 1.3
        assert 0.8 < measured["peak bytes"] / model["peak bytes"] < 1.6
    fp32, bf16 = (memory.measure_inference((64, 256, 256, 10), 1, d) for d in ("fp32", "bf16"))
    assert bf16["weight bytes"] * 2 == fp32["weight bytes"]


def test_roofline_prices_operations_by_their_bound():
    from fpsim.report import roofline

    gpu = roofline.A100_80GB
    big = roofline.mlp_workload((4096, 4096, 4096), 4096)
    matmul = next(op for op in big.ops if op.kind == "matmul")
    assert roofline.op_seconds(matmul, roofline.PRECISIONS["fp32"], gpu) == pytest.approx(matmul.flops / 19.5e12)
    assert roofline.op_seconds(matmul, roofline.PRECISIONS["16-mixed"], gpu) == pytest.approx(matmul.flops / 312e12)
    times = roofline.speedups(big, gpu)["times"]
    assert times["fp32"] > times["tf32"] > times["16-mixed"]
    assert roofline.encoder_workload().params == pytest.approx(66e6, rel=0.02)  # DistilBERT: 66M parameters


def test_paired_comparison_detects_a_shift_and_not_noise():
    import numpy as np

    from fpsim.report.stats import mean_ci, paired_comparison

    rng = np.random.default_rng(0)
    base = rng.normal(0.9, 0.01, 20)
    assert paired_comparison(base + 0.005 + rng.normal(0, 1e-4, 20), base)["t_test_p"] < 1e-6
    assert paired_comparison(base + rng.normal(0, 1e-4, 20), base)["t_test_p"] > 0.01
    ci = mean_ci(base)
    assert ci["low"] < 0.9 < ci["high"]


def test_the_commit_line_ignores_changes_to_the_report_folder_only(tmp_path):
    import subprocess

    from fpsim.report.runner import _git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "REPORT.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "reports" / "REPORT.md").write_text("new\n")
    assert not _git_commit(tmp_path / "reports", checkout=tmp_path).endswith("uncommitted changes")
    assert _git_commit(None, checkout=tmp_path).endswith("with uncommitted changes")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert _git_commit(tmp_path / "reports", checkout=tmp_path).endswith("with uncommitted changes")


def test_module_kinds_and_largest_binade_of_the_transformer_analyses():
    from fpsim.report.experiments import max_binade, module_kind, modules_by_kind

    assert [module_kind(p) for p in ("transformer.wte", "transformer.h.0.attn.c_attn", "transformer.h.1.attn",
                                     "transformer.h.0.mlp.gelu", "transformer.h.0.ln_2", "transformer.ln_f",
                                     "lm_head", "transformer.h.0", "model", "(outside)")] == \
        ["embedding", "attention", "attention", "MLP", "LayerNorm", "LayerNorm", "head", "residual stream",
         "residual stream", "loss"]
    result = {"histograms": [
        {"kind": "activations", "module": "lm_head", "step": 0, "min_exponent": -3, "counts": [1, 0, 2]},
        {"kind": "activations", "module": "transformer.h.0.ln_1", "step": 5, "min_exponent": 4, "counts": [7]},
        {"kind": "weight_grads", "module": "lm_head", "step": 0, "min_exponent": -20, "counts": []}]}
    assert max_binade(result, "activations") == 4
    assert max_binade(result, "activations", step=0) == -1
    assert max_binade(result, "activations", module="lm_head") == -1
    assert max_binade(result, "weight_grads") is None
    assert modules_by_kind(result) == {"LayerNorm": ["transformer.h.0.ln_1"], "head": ["lm_head"]}
