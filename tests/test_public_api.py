"""``fpsim``'s public names: ``__all__`` lists what the top level holds, each the object of its home module."""

import subprocess
import sys
import types

import fpsim
from fpsim.sim.recorder import Recorder
from fpsim.sim.scaling import Scaling
from fpsim.sim.vocabulary import OPERAND_KINDS, RECORDED_KINDS, Kind


def test_all_lists_every_public_name_and_nothing_else():
    assert len(set(fpsim.__all__)) == len(fpsim.__all__)
    assert all(hasattr(fpsim, name) for name in fpsim.__all__)
    others = {name for name in dir(fpsim) if not name.startswith("_")} - set(fpsim.__all__)
    assert all(isinstance(getattr(fpsim, name), types.ModuleType) for name in others)  # subpackages imported


def test_the_top_level_names_are_their_modules_objects():
    assert fpsim.Recorder is Recorder and fpsim.Scaling is Scaling and fpsim.Kind is Kind
    assert fpsim.load_data("digits").name == "digits"


def test_import_fpsim_star_does_not_import_torch():
    code = "import sys\nfrom fpsim import *\nassert 'torch' not in sys.modules, 'import fpsim imported torch'\n"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_kind_is_its_name_and_names_its_format():
    policy = fpsim.POLICIES["fp16-mixed"]
    assert Kind.ACTIVATION_GRADS == "activation_grads" and f"{Kind.UPDATES}" == str(Kind.UPDATES) == "updates"
    assert {"activations": 1}[Kind.ACTIVATIONS] == 1 and Kind("weight_grads") is Kind.WEIGHT_GRADS
    assert [kind.format_of(policy) for kind in Kind] == [fpsim.FP16] * 5 + [fpsim.FP32]  # updates: the master
    assert [kind.recorded_as for kind in OPERAND_KINDS] == [None, Kind.ACTIVATIONS, Kind.ACTIVATION_GRADS]
    assert all(kind.recorded_as is kind for kind in RECORDED_KINDS)
    assert set(OPERAND_KINDS) | set(RECORDED_KINDS) == set(Kind)
