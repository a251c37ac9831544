"""Your own data, loss and model output on the torch engine, and keyword inputs to ``inspect`` (issue 20, items 3-4)."""

from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fpsim  # noqa: E402
from fpsim.sim.config import TrainConfig  # noqa: E402
from fpsim.torch import inspect  # noqa: E402
from fpsim.torch.user_data import DataInfo, UserData, call_factory  # noqa: E402

RUN = {"optimizer": "adam", "lr": 1e-2, "steps": 4, "batch_size": 8, "shadow_every": 0, "record_every": 0,
       "progress": False}


class Output(OrderedDict):
    """A stand-in for a Hugging Face ``ModelOutput``: an OrderedDict whose fields are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _classes(n=64, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64) * (classes - 2)


def _mlp(inputs, classes, width=8):
    return torch.nn.Sequential(torch.nn.Linear(inputs, width), torch.nn.Tanh(), torch.nn.Linear(width, classes))


def _bits(model):
    return [p.detach().numpy().tobytes() for p in model.parameters()]


def test_arrays_tell_the_factory_its_sizes_and_the_same_seed_gives_the_same_bits():
    x, y = _classes()
    told = {}

    def factory(inputs, classes, width=8):
        told.update(inputs=inputs, classes=classes, width=width)
        return _mlp(inputs, classes, width)

    state = torch.random.get_rng_state()
    first = fpsim.train("bf16-mixed", model=factory, model_options={"width": 5}, data=(x, y), **RUN)
    assert told == {"inputs": 6, "classes": 3, "width": 5}
    second = fpsim.train("bf16-mixed", model=factory, model_options={"width": 5}, data=(x, y), **RUN)
    other = fpsim.train("bf16-mixed", model=factory, model_options={"width": 5}, data=(x, y), **{**RUN, "seed": 1})
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first.to_dict() == second.to_dict() and first.history != other.history
    assert first.test_loss is None and first.test_accuracy is None and first.config["validation"] is None
    assert first.config["data"] == "<data (x, y): x (64, 6) float64, y (64,) int64>"
    assert first.config["model"].startswith("<factory ") and first.config["loss_fn"] is None


def test_validation_is_measured_and_a_dataset_gives_the_bits_of_its_arrays():
    x, y = _classes()
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x).float(), torch.from_numpy(y))
    arrays = fpsim.train("fp16-mixed", model=_mlp, data=(x, y),
                         validation=(x[:20], y[:20]), **RUN)
    from_dataset = fpsim.train("fp16-mixed", model=_mlp, model_options={"inputs": 6, "classes": 3},
                               data=dataset, validation=dataset, **RUN)  # a Dataset tells no sizes
    assert arrays.history == from_dataset.history
    assert 0 <= arrays.test_accuracy <= 1 and arrays.test_loss > 0 and from_dataset.test_loss > 0
    assert from_dataset.config["data"] == "<data: a torch.utils.data.dataset.TensorDataset>"


def test_a_shuffling_loader_is_seeded_from_the_run_and_leaves_torch_global_generator_alone():
    x, y = _classes()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x).float(),
                                                                        torch.from_numpy(y)),
                                         batch_size=8, shuffle=True)
    model = _mlp(6, 3)
    before = _bits(model)
    state = torch.random.get_rng_state()
    runs = [fpsim.train("bf16-mixed", model=model, data=loader, **{**RUN, "steps": 10, "seed": seed})
            for seed in (0, 0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0].history == runs[1].history != runs[2].history
    assert _bits(model) == before  # the module given is trained as a copy
    assert runs[0].config["model"] == "<module: a torch.nn.modules.container.Sequential>"


def test_dropout_draws_from_the_runs_seed_and_is_off_in_the_evaluation():
    x, y = _classes()

    def factory(inputs, classes):
        return torch.nn.Sequential(torch.nn.Linear(inputs, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, classes))

    state = torch.random.get_rng_state()
    runs = [fpsim.train("fp32", model=factory, data=(x, y), validation=(x, y), **{**RUN, "seed": seed})
            for seed in (0, 0, 1)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0].to_dict() == runs[1].to_dict() and runs[0].history != runs[2].history
    model = fpsim.torch.engine.train_model(TrainConfig(policy="fp32", model=factory, data=(x, y), validation=(x, y),
                                                       **{k: v for k, v in RUN.items() if k != "progress"}))[1]
    assert model.training  # back in its training mode after the evaluation ran in eval mode
    with torch.no_grad():
        model.eval()
        logits = model(torch.from_numpy(x).float())
    assert runs[0].test_loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))),
                                              rel=1e-6)


def test_a_tuple_output_trains_on_a_built_in_data_set_by_its_first_element():
    class Pair(torch.nn.Module):
        def __init__(self, inputs, classes):
            super().__init__()
            self.linear = torch.nn.Linear(inputs, classes)

        def forward(self, x):
            logits = self.linear(x)
            return logits, logits.detach() * 0  # (logits, something else), as many models return

    result = fpsim.train("bf16-mixed", model=Pair, data="digits", **RUN)
    assert result.status == "ok" and 0 <= result.test_accuracy <= 1 and result.test_loss > 0


def _batches(n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [{"features": torch.randn(4, 6, generator=generator), "labels": torch.randint(0, 3, (4,),
                                                                                      generator=generator)}
            for _ in range(n)]


class KeywordModel(torch.nn.Module):
    """Called model(**batch) as a Hugging Face model is; returns an Output with .loss when given labels (twice
    the cross-entropy, so that the rule that chose it shows)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, features, labels=None):
        logits = self.linear(features)
        out = Output(logits=logits)
        if labels is not None and self.own_loss:
            out["loss"] = 2 * torch.nn.functional.cross_entropy(logits, labels)
        return out

    own_loss = True


@pytest.mark.parametrize("own_loss, loss_fn, factor", [
    (True, None, 2.0),  # the model's own output.loss
    (False, None, 1.0),  # the engine's cross-entropy on output.logits against batch["labels"]
    (True, lambda output, batch: 3 * torch.nn.functional.cross_entropy(output["logits"], batch["labels"]), 3.0),
])
def test_the_loss_is_loss_fn_else_the_models_own_else_cross_entropy_on_the_logits(own_loss, loss_fn, factor):
    torch.manual_seed(0)
    model = KeywordModel()
    model.own_loss = own_loss
    batches = _batches()
    with torch.no_grad():
        expected = factor * float(torch.nn.functional.cross_entropy(model.linear(batches[0]["features"]),
                                                                    batches[0]["labels"]))
    result = fpsim.train("fp32", model=model, data=batches, loss_fn=loss_fn, **{**RUN, "steps": 5},
                         validation=batches)
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-6)
    assert result.config["data"] == "<data: a list of 3 batches>"
    assert (result.test_accuracy is None) == (factor != 1.0)  # accuracy only with the engine's cross-entropy
    assert result.config["loss_fn"] is None if loss_fn is None else result.config["loss_fn"].startswith("<loss_fn ")


def test_token_arrays_give_vocabulary_and_context_length_and_no_block_size_is_needed():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, size=(32, 9))
    told = {}

    class Bigram(torch.nn.Module):  # no .config.block_size
        def __init__(self, vocab_size, block_size):
            super().__init__()
            told.update(vocab_size=vocab_size, block_size=block_size)
            self.embed = torch.nn.Embedding(vocab_size, vocab_size)

        def forward(self, idx):
            return self.embed(idx)  # (B, T, V)

    result = fpsim.train("bf16-mixed", model=Bigram, data=(tokens[:, :-1], tokens[:, 1:]), **RUN,
                         validation=(tokens[:4, :-1], tokens[:4, 1:]))
    assert told == {"vocab_size": 11, "block_size": 8}
    assert result.status == "ok" and result.test_loss > 0


def test_a_generator_that_runs_out_says_so_and_bad_data_is_one_line():
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        fpsim.train("fp32", model=KeywordModel(), data=iter(_batches()), **{**RUN, "steps": 5})
    x, y = _classes()
    with pytest.raises(ValueError, match="integer targets .*give loss_fn"):
        fpsim.train("fp32", model=_mlp(6, 3), data=(x, y.astype(np.float64)), **RUN)
    regression = fpsim.train("fp32", model=_mlp(6, 1), data=(x, x[:, :1]), **RUN,
                             loss_fn=lambda output, target: ((output - target) ** 2).mean())
    assert regression.status == "ok"

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([])

    with pytest.raises(TypeError, match="wrap it in torch.utils.data.DataLoader"):
        fpsim.train("fp32", model=_mlp(6, 3), data=Stream(), **RUN)
    with pytest.raises(TypeError, match="a batch of data must be"):
        fpsim.train("fp32", model=_mlp(6, 3), data=[torch.zeros(4, 6)], **RUN)
    with pytest.raises(ValueError, match="is for a model factory or module"):
        TrainConfig(policy="fp32", model="cnn", data=(x, y))
    with pytest.raises(ValueError, match="holds out its own test set"):
        TrainConfig(policy="fp32", model=_mlp, data="digits", validation=(x, y))
    with pytest.raises(ValueError, match="loss_fn is for a model factory or module"):
        TrainConfig(policy="fp32", model="char-gpt", loss_fn=torch.nn.functional.cross_entropy)
    assert "loss_fn" not in TrainConfig(policy="fp32").to_dict()  # a built-in model's JSON form is as it was
    with pytest.raises(TypeError, match="loss_fn must be a function"):
        TrainConfig(policy="fp32", model=_mlp, data=(x, y), loss_fn=3)
    with pytest.raises(ValueError, match="set by the data"):
        call_factory(_mlp, {"inputs": 6}, DataInfo(inputs=6, classes=3))


def test_a_config_holding_python_objects_says_it_cannot_be_rerun_from_json():
    x, y = _classes()
    written = TrainConfig(policy="fp32", model=_mlp, data=(x, y), validation=(x, y),
                          loss_fn=torch.nn.functional.cross_entropy).to_dict()
    assert written["validation"].startswith("<validation (x, y)") and written["loss_fn"].startswith("<loss_fn ")
    for name in ("model", "data", "validation", "loss_fn"):
        with pytest.raises(ValueError, match=f"{name} <.*> was a Python object.*cannot be rerun"):
            TrainConfig.from_dict({"policy": "fp32", "model": _mlp, "data": (x, y), name: written[name]})


def test_dataset_info_reads_the_context_length_of_the_first_example():
    ids = torch.randint(0, 50, (10, 12))
    dataset = torch.utils.data.TensorDataset(ids, ids)
    assert UserData(dataset).info() == DataInfo(block_size=12)
    assert UserData(torch.utils.data.DataLoader(dataset, batch_size=2)).info() == DataInfo(block_size=12)
    assert UserData([{"input_ids": ids[:2], "labels": ids[:2]}]).info() == DataInfo(block_size=12)


def test_inspect_takes_keyword_inputs_and_reads_the_logits_of_a_model_output():
    torch.manual_seed(0)
    model = KeywordModel()
    model.own_loss = False
    batch = _batches(1)[0]
    result = inspect(model, {"features": batch["features"]})
    assert {row["module"] for row in result.rows} == {"linear"}
    model.zero_grad()
    model.linear(batch["features"]).sum().backward()
    expected = np.concatenate([model.linear.weight.grad.numpy().ravel(), model.linear.bias.grad.numpy()])
    assert np.array_equal(result.values[("linear", "weight_grads")], expected)  # weight, then bias
    chosen = inspect(model, {"features": batch["features"], "labels": batch["labels"]},
                     loss_fn=lambda output: output.logits[:, 0].sum())
    grads = chosen.values[("linear", "weight_grads")]
    assert grads[:6].any() and not grads[6:18].any()  # only the first row of the weight is reached


@pytest.mark.slow
def test_a_hugging_face_model_trains_on_collated_batches_with_its_own_loss():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 40, (4, 12), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})

    def factory(block_size):
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(config)

    first, second = (fpsim.train("bf16-mixed", model=factory, data=batches, validation=batches[:1],
                                 **{**RUN, "steps": 3}) for _ in range(2))
    with torch.no_grad():
        expected = float(factory(12)(**batches[0]).loss)
    assert first.to_dict() == second.to_dict() and first.status == "ok"
    assert abs(first.history[0]["loss"] - expected) < 0.05  # bf16-mixed against fp32: close, not equal
    assert first.test_accuracy is None and first.test_loss > 0
    assert inspect(factory(12), {"input_ids": batches[0]["input_ids"]}).rows
