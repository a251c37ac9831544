"""The core commands: formats, bits, validate; bad flags give one line and exit status 2."""

import subprocess
import sys

import pytest

from fpsim.cli import main


def test_formats_table(capsys):
    assert main(["formats"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["format", "bits", "exp", "mant"]
    fp16 = next(line for line in lines if line.startswith("fp16"))
    assert "65504" in fp16 and "6.10352e-05" in fp16 and "5.96046e-08" in fp16
    assert any(line.startswith("e4m3") and " 448 " in line for line in lines)


def test_bits_shows_three_formats_side_by_side(capsys):
    assert main(["bits", "0.1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["fp32", "fp16", "bf16"]
    assert "0 | 01011 | 1001100110  = 0.0999755859375" in out[1]


def test_bits_with_format_and_mode(capsys):
    assert main(["bits", "1e-8", "--format", "fp16", "--mode", "up"]) == 0
    assert "= 5.960464477539063e-08  (subnormal" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["bits", "abc"], "not a number"),
    (["bits", "1", "--format", "fp99"], "unknown format"),
    (["bits", "1", "--mode", "sideways"], "invalid choice"),
    (["validate", "--inputs", "10"], "at least 1000"),
    (["nosuchcommand"], "invalid choice"),
    ([], "required"),
])
def test_bad_input_is_one_line_and_exit_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fpsim: error:") and message in err


def test_validate_prints_the_table_and_zero_mismatches(capsys):
    assert main(["validate", "--inputs", "20000", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "hardware" in out and "exact" in out
    assert out.strip().splitlines()[-1].startswith("0 mismatches in ")


def test_console_script_runs_without_traceback():
    result = subprocess.run([sys.executable, "-m", "fpsim", "bits", "--format", "nope", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bits_reads_decimals_exactly_and_negative_zero(capsys):
    assert main(["bits", "1.00048828125000000000001", "-f", "fp16"]) == 0
    assert "= 1.0009765625" in capsys.readouterr().out
    assert main(["bits", "-0.0", "-f", "bf16"]) == 0
    assert "= -0.0" in capsys.readouterr().out
    assert main(["bits", "-f", "fp16", "-m", "down", "--", "-1e-50"]) == 0
    assert "(subnormal, 2^-14 x 0.0000000001b)" in capsys.readouterr().out
