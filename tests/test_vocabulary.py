"""The built-in models have one list of names: the vocabulary's, which every layer reads."""

import importlib.util

import pytest

from fpsim.cli import build_parser
from fpsim.sim.config import TrainConfig
from fpsim.sim.vocabulary import MODELS


def model_choices(command: str) -> list:
    parser = build_parser()
    subcommand = next(a for a in parser._subparsers._group_actions if a.choices).choices[command]
    return next(a.choices for a in subcommand._actions if "--model" in a.option_strings)


@pytest.mark.parametrize("name", MODELS)
def test_a_config_takes_engine_and_data_from_the_record(name):
    record = MODELS[name]
    config = TrainConfig(policy="fp32", model=name.upper())
    assert (config.model, config.engine, config.data) == (name, record.engine, record.data)


def test_the_commands_offer_the_built_in_models():
    assert list(model_choices("train")) == list(model_choices("inspect")) == list(MODELS)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_the_torch_engine_knows_every_torch_model_by_the_vocabulary_name():
    from fpsim.torch.models import SPECS, get_model

    assert set(SPECS) == {name for name, record in MODELS.items() if record.engine == "torch"}
    for name, spec in SPECS.items():
        assert get_model(name) is spec and spec.data == MODELS[name].data
        assert spec.build is MODELS[name].build()
    with pytest.raises(ValueError, match="numpy engine's model"):
        get_model("mlp")
