"""Hardening (issue 11): huge or long numbers answer at once and round correctly, and the other defect classes."""

import math
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

import fpsim
from fpsim.cli import main
from fpsim.numerics.exact import (BINADE_LIMIT, DETERMINISTIC_MODES, MAX_DIGITS, format_real, overflow_result,
                                  parse_real, round_exact)
from fpsim.ops.calc import evaluate

FORMATS = ["fp16", "bf16", "e4m3", "e5m2", "fp32", "fp64", "e3m2"]


def _exact(mantissa: int, exponent: int) -> Fraction:
    return Fraction(mantissa) * Fraction(10) ** exponent


@settings(max_examples=300, deadline=None)
@given(st.integers(-10**30, 10**30), st.integers(-1200, 1200), st.sampled_from(FORMATS),
       st.sampled_from(DETERMINISTIC_MODES))
def test_text_rounds_as_the_exact_fraction_for_moderate_exponents(mantissa, exponent, fmt, mode):
    text = f"{mantissa}e{exponent}"
    expected = round_exact(_exact(mantissa, exponent), fmt, mode) if mantissa else 0.0
    got = float(fpsim.round(parse_real(text), fmt, mode))
    assert got == expected or (math.isnan(got) and math.isnan(expected))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.integers(BINADE_LIMIT // 3 + 10, 10**18), st.booleans(),
       st.sampled_from(FORMATS), st.sampled_from(DETERMINISTIC_MODES), st.booleans())
def test_text_beyond_every_range_follows_the_modes_rule(mantissa, exponent, negative, fmt, mode, tiny):
    text = f"{'-' if negative else ''}{mantissa}e{'-' if tiny else ''}{exponent}"
    got = float(fpsim.round(parse_real(text), fmt, mode))
    f = fpsim.get_format(fmt)
    if not tiny:
        expected = overflow_result(negative, f, mode, False)
    else:  # below half the smallest subnormal: zero of the input's sign, or the smallest subnormal toward +-inf
        away = (mode == "up" and not negative) or (mode == "down" and negative)
        expected = (f.smallest_subnormal if away and f.subnormals else 0.0) * (-1 if negative else 1)
        expected = math.copysign(expected, -1 if negative else 1)
    assert got == expected or (math.isnan(got) and math.isnan(expected))
    assert math.copysign(1, got) == math.copysign(1, expected) or math.isnan(expected)


def test_stochastic_rounding_of_a_tiny_text_rounds_up_only_below_every_uniform_step():
    tiny = parse_real("1e-999999999")
    assert round_exact(tiny, "fp16", "stochastic", uniform=Fraction(0)) == fpsim.FP16.smallest_subnormal
    assert round_exact(tiny, "fp16", "stochastic", uniform=Fraction(1, 2**63)) == 0.0


@pytest.mark.parametrize("fmt", ["fp64", "fp16", "bf16"])
@pytest.mark.parametrize("side", [-1, 0, 1])
def test_digits_beyond_max_digits_round_as_the_full_number(fmt, side):
    # a tie between two neighbours of the format, written out in full, then nudged by 10^-(3 MAX_DIGITS)
    midpoint = Fraction(1) + Fraction(1, 2 ** (fpsim.get_format(fmt).mantissa_bits + 1))
    places = 3 * MAX_DIGITS
    scaled = midpoint * 10 ** places + side
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        digits = str(scaled.numerator)
    finally:
        sys.set_int_max_str_digits(limit)
    text = f"{digits[:-places]}.{digits[-places:]}"
    assert len(text) > MAX_DIGITS
    exact = scaled / 10 ** places
    for mode in DETERMINISTIC_MODES:
        assert float(fpsim.round(parse_real(text), fmt, mode)) == round_exact(exact, fmt, mode)


def test_a_5000_digit_number_is_a_number():
    text = "7" * 5000
    assert fpsim.round(parse_real(text), "fp64") == math.inf
    assert "from 0.7777" in fpsim.describe("0." + text, "fp16")
    assert main(["bits", "0." + "3" * 5000, "-f", "fp16"]) == 0


def test_round_takes_python_ints_of_any_size_in_lists():
    assert list(fpsim.round([10**400, 1], "fp64")) == [math.inf, 1.0]
    assert list(fpsim.round([2**70 + 1, Fraction(1, 3), Decimal("0.1")], "bf16", "up")) == \
        [round_exact(2**70 + 1, "bf16", "up"), round_exact(Fraction(1, 3), "bf16", "up"),
         round_exact(Fraction(1, 10), "bf16", "up")]
    with pytest.raises(TypeError, match="real numbers"):
        fpsim.round([1, "a"], "fp16")


def test_tiny_errors_keep_their_magnitude():
    text = fpsim.describe("1e-400", "fp16")
    assert "error -1e-400 from 1e-400, relative -1" in text
    assert format_real(Fraction(-1, 10**400)) == "-1e-400"
    assert format_real(Fraction(10**400), "+.3g") == "+1e+400"


@pytest.mark.parametrize("command", [["bits", "1e999999999", "-f", "fp16"], ["bits", "-f", "fp16", "--", "-1e-999999999"],
                                     ["calc", "1e999999999"], ["calc", "1e-999999999"],
                                     ["calc", "2**1e999999999"], ["calc", "1e9999999999999999999999999"]])
def test_huge_exponents_answer_at_once(command):
    done = subprocess.run([sys.executable, "-m", "fpsim", *command], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 2) and "Traceback" not in done.stderr


def test_describe_huge_text():
    assert "= inf" in fpsim.describe("1e999999999", "fp16")
    assert "= 65504.0" in fpsim.describe("1e999999999", "fp16", "toward_zero")


def test_a_flat_sum_of_1000_terms_is_evaluated():
    evaluation = evaluate("+".join(["1"] * 1000), "fp32")
    assert evaluation.result == 1000.0 and len(evaluation.steps) == 1999


def test_calc_reads_long_integer_literals():
    assert evaluate("1" + "0" * 5000, "fp32").result == math.inf
    assert evaluate("0x10 + 0b11", "fp32").result == 19.0


# --- fpsim report never removes what it did not write ---------------------------------------------------------

GOOD = '''
from fpsim.report.section import new_section
ORDER = 1
def run(ctx):
    section = new_section(ctx, globals(), "Good analysis")
    section.text("the number is 42")
    return section
'''
FAILING = "def run(ctx):\n    raise RuntimeError('deliberate')\n"
SLOW = "import time\ndef run(ctx):\n    (ctx.out / 'started').write_text('x')\n    time.sleep(60)\n"


@pytest.fixture
def analyses(tmp_path):
    """A folder of analysis scripts for the report (write NAME.py into it; ``report(...)`` runs them)."""
    folder = tmp_path / "analyses"
    folder.mkdir()
    (folder / "good.py").write_text(GOOD)
    return folder


def _tree(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("out", [".", "", "..", "{cwd}"])
def test_report_refuses_the_folder_it_stands_in(out, analyses, tmp_path, monkeypatch, capsys):
    here = tmp_path / "work" / "p"
    (here / "src").mkdir(parents=True)
    (here / "notes.txt").write_text("notes")
    monkeypatch.chdir(here)
    before = _tree(tmp_path)
    assert main(["report", "--analyses", str(analyses), "--out", out.format(cwd=here), "--no-progress"]) == 2
    assert _tree(tmp_path) == before
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_report_refuses_a_file_and_a_folder_holding_other_files(analyses, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "thesis.tex").write_text("mine")
    before = _tree(tmp_path)
    assert main(["report", "--analyses", str(analyses), "--out", str(notes), "--no-progress"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["report", "--analyses", str(analyses), "--out", str(mixed), "--no-progress"]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def test_report_replaces_only_its_own_report(analyses, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--no-progress"]) == 0  # its own report: replaced
    (out / "good" / "my-notes.txt").write_text("added by hand")
    before = _tree(tmp_path)
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--no-progress"]) == 2
    assert "good/my-notes.txt" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def test_a_failing_analysis_under_only_keeps_the_previous_section(analyses, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--no-progress"]) == 0
    (analyses / "good.py").write_text(FAILING)
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--only", "good", "--no-progress"]) == 1
    assert "previous section is kept" in capsys.readouterr().out
    assert "the number is 42" in (out / "REPORT.md").read_text()


def test_a_bad_store_is_refused_before_anything_runs(analyses, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--no-progress"]) == 0
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    before = _tree(tmp_path)
    for store in (str(bad), str(tmp_path / "missing" / "x.sqlite"), str(out / "runs.sqlite")):
        assert main(["report", "--analyses", str(analyses), "--out", str(out), "--only", "good", "--store", store, "--no-progress"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before


def test_sigterm_leaves_the_previous_report_and_no_temporary_folder(analyses, tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "out"
    assert main(["report", "--analyses", str(analyses), "--out", str(out), "--no-progress"]) == 0
    before = _tree(tmp_path)
    (analyses / "slow.py").write_text(SLOW)
    script = (f"import sys; from fpsim.cli import main; sys.exit(main(['report', '--analyses', {str(analyses)!r}, "
              f"'--out', {str(out)!r}, '--only', 'slow', '--no-progress']))")
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.partial-*/slow/started")) and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0 and "Traceback" not in err
    (analyses / "slow.py").unlink()
    assert _tree(tmp_path) == before


def test_a_killed_reports_temporary_folder_is_removed_by_the_next(analyses, tmp_path):
    abandoned = tmp_path / ".out.partial-999999999-abc"
    abandoned.mkdir()
    mine = tmp_path / ".out.partial-notapid"
    mine.mkdir()
    assert main(["report", "--analyses", str(analyses), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert not abandoned.exists() and mine.exists()


# --- fpsim train: the output path, the run's status, sizes and messages ------------------------------------------

TINY = ["train", "--policy", "fp32", "--steps", "3", "--hidden", "4", "--no-progress", "--shadow-every", "0"]


def test_train_refuses_an_unusable_out_before_training(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    before = _tree(tmp_path)
    for out in (str(tmp_path / "folder"), str(tmp_path / "missing" / "r.json")):
        assert main([*TINY, "--out", out]) == 2
        assert "measure" not in capsys.readouterr().out  # refused before training
    assert _tree(tmp_path) == before


def test_train_keeps_the_result_when_writing_fails_at_the_end(tmp_path, monkeypatch, capsys):
    import tempfile

    from fpsim.sim import result as result_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "kept"))
    (tmp_path / "kept").mkdir()
    real_dump = result_module.json.dump

    def failing_dump(data, file, **options):  # the disk fills up while writing --out
        if not file.name.startswith(str(tmp_path / "kept")):
            file.write("{half")
            raise OSError(28, "No space left on device")
        real_dump(data, file, **options)
    monkeypatch.setattr(result_module.json, "dump", failing_dump)
    out = tmp_path / "out" / "result.json"
    out.parent.mkdir()
    assert main([*TINY, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    kept = list((tmp_path / "kept").glob("fpsim-train-*.json"))
    assert len(kept) == 1 and str(kept[0]) in err and "No space left" in err
    assert fpsim.TrainResult.load(kept[0]).status == "ok"
    assert list(out.parent.iterdir()) == []  # no stray temporary file


def test_a_run_that_never_updates_says_so():
    result = fpsim.train("fp16-amp", grad_scale=2.0**200, steps=30, hidden=[4], progress=False, shadow_every=0)
    assert result.status == "no updates" and result.summary()["status"] == "no updates"
    assert fpsim.TrainResult.from_dict(result.to_dict()) == result
    assert main(["train", "--policy", "fp16-amp", "--grad-scale", "2**200", "--steps", "30", "--hidden", "4",
                 "--no-progress", "--shadow-every", "0"]) == 3


def test_statuses_of_ordinary_diverged_and_floor_runs():
    assert fpsim.train("fp32", steps=5, hidden=[4], progress=False).status == "ok"
    assert fpsim.train("fp16-pure", lr=1e4, steps=5, hidden=[4], progress=False).status == "diverged"
    floor = fpsim.train("fp16-amp", grad_scale=2.0**40, steps=40, hidden=[4], progress=False, shadow_every=0,
                        scaler={"init_scale": 1.0, "min_scale": 1.0})
    assert floor.min_scale_hits > 0 and floor.status in ("loss-scale floor", "no updates")


def test_diverging_runs_raise_no_numpy_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fpsim.train("fp32", optimizer="adam", lr=1e30, steps=10, hidden=[8], data="teacher",
                             progress=False, shadow_every=5)
    assert result.status == "diverged"


@pytest.mark.parametrize("options, message", [
    (["--hidden", "100000000"], "weights"), (["--steps", "100000000000"], "at most"),
    (["--lr", "2**10000"], "beyond the range"), (["--lr", "1" * 5000], "beyond the range"),
    (["--lr", "2**-10000"], "below the range"), (["--policy", '{"a":' * 5000 + "1" + "}" * 5000], "nested too deeply"),
    (["--data", "mnist:{text}"], "not a zip")])
def test_train_mistakes_get_one_line_that_says_what_to_change(options, message, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not mnist")
    argv = [*TINY, *[o.replace("{text}", str(text)) for o in options]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_train_takes_numpy_scalars_and_refuses_a_bad_scaler_clearly():
    import numpy as np

    assert fpsim.train("fp32", lr=np.float32(0.1), steps=2, hidden=[4], progress=False).status == "ok"
    with pytest.raises(TypeError, match="scaler must be a dict"):
        fpsim.train("fp16-amp", scaler=5, steps=2, hidden=[4], progress=False)


def test_full_disk_and_deep_grids_are_one_line(tmp_path):
    done = subprocess.run(f"{sys.executable} -m fpsim formats > /dev/full", shell=True, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "No space left" in done.stderr
    grid = tmp_path / "grid.toml"
    for content in (b"a = " + b"[" * 3000 + b"]" * 3000, b"\xff\xfe\x00binary"):
        grid.write_bytes(content)
        done = subprocess.run([sys.executable, "-m", "fpsim", "sweep", str(grid), "--store",
                               str(tmp_path / "s.sqlite")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and str(grid) in done.stderr and done.stderr.count("\n") == 1


# --- sweeps: a locked store, a killed worker, a corrupt row ------------------------------------------------------

def _record(key="k1"):
    return {"key": key, "config": {"policy": "fp32"}, "status": "ok", "error": None, "result": {"x": 1}}


def test_a_store_locked_for_seconds_is_waited_for(tmp_path):
    import sqlite3
    import threading
    import time

    from fpsim.runs.store import RunStore

    path = tmp_path / "runs.sqlite"
    RunStore(path).close()
    locked = threading.Event()

    def hold_the_lock():
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(7)  # longer than sqlite's own busy timeout (5 s)
        other.execute("COMMIT")
        other.close()
    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    locked.wait()
    with RunStore(path) as store:
        store.write(_record())
    holder.join()
    assert [r["key"] for r in fpsim.load_sweep(path)] == ["k1"]


def _kill_a_worker_when_busy(pool, started):
    import os
    import signal
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (started.exists() and getattr(pool, "_processes", None)):
        time.sleep(0.05)
    time.sleep(0.5)  # the worker is importing fpsim or training
    os.kill(next(iter(pool._processes)), signal.SIGKILL)


def test_a_killed_worker_does_not_fail_the_other_runs(tmp_path):
    import threading

    from fpsim.runs.sweep import local_pool

    store = tmp_path / "runs.sqlite"
    configs = [{"policy": "fp32", "steps": 150, "hidden": [32], "seed": seed, "shadow_every": 0}
               for seed in range(4)]
    pool = local_pool(2)
    started = tmp_path / "started"
    # the pool's workers exist once the first run is submitted; kill one of them while it trains
    real_submit = pool.submit

    def submit(*args, **kwargs):
        future = real_submit(*args, **kwargs)
        started.touch()
        return future
    pool.submit = submit
    killer = threading.Thread(target=_kill_a_worker_when_busy, args=(pool, started))
    killer.start()
    try:
        records = fpsim.sweep(configs, store=store, executor=pool, progress=False)
    finally:
        killer.join()
        pool.shutdown(wait=False, cancel_futures=True)
    assert [r["status"] for r in records] == ["ok"] * 4, [r["error"] for r in records]


def test_a_corrupt_row_is_one_line_in_sweep_and_load_sweep(tmp_path, capsys):
    import sqlite3

    from fpsim.runs.store import RunStore
    from fpsim.runs.sweep import config_key

    config = {"policy": "fp32", "steps": 2, "hidden": [4]}
    store = tmp_path / "runs.sqlite"
    with RunStore(store) as runs:
        runs.write(dict(_record(config_key(config)), config=config))
    connection = sqlite3.connect(store)
    with connection:
        connection.execute("UPDATE runs SET result = '{'")
    connection.close()
    grid = tmp_path / "grid.toml"
    grid.write_text('policy = ["fp32"]\nsteps = [2]\nhidden = [[4]]\n')
    assert main(["sweep", str(grid), "--store", str(store), "--workers", "1", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1
    with pytest.raises(ValueError, match="corrupt"):
        fpsim.load_sweep(store)


@pytest.mark.parametrize("address", ["garbage", "tcp://127.0.0.1:99999", "foo://host:1"])
def test_a_bad_scheduler_address_is_one_line_and_nothing_after(address, tmp_path):
    pytest.importorskip("distributed")
    grid = tmp_path / "grid.toml"
    grid.write_text('policy = ["fp32"]\nsteps = [2]\n')
    done = subprocess.run([sys.executable, "-m", "fpsim", "sweep", str(grid), "--store", str(tmp_path / "s.sqlite"),
                           "--scheduler", address, "--connect-timeout", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "scheduler address" in done.stderr
