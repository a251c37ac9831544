"""Lightning's Trainer and Fabric, and the transformers Trainer, each training 3 steps on the CPU under a policy.

The policy's formats must show in what they return: every value the recorder saw rounded is a value of
the format, the backward pass is recorded too, the losses differ from an FP32 run's, a pure policy's
weights hold 16-bit values, and an fp16-amp run whose loss scale overflows skips its steps and backs off.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the integrations need PyTorch")

import fpsim  # noqa: E402
from fpsim.sim.recorder import Recorder  # noqa: E402

STEPS = 3
HUGE_SCALE = 2.0 ** 24  # 2^24 times a gradient overflows FP16 (max 65504): every step skips, the scale halves


def _need(module):
    return pytest.importorskip(module, reason=f"{module} is not installed (pip install \"fpsim[lightning]\" / "
                                              f"\"fpsim[hf]\")")


class KeepingRecorder(Recorder):
    """A Recorder that also keeps every rounding's values after it, with its kind and format."""

    def __init__(self):
        super().__init__()
        self.kept = []

    def rounded(self, kind, module, before, after, fmt):
        self.kept.append((kind, module, np.array(after, copy=True), fmt))
        super().rounded(kind, module, before, after, fmt)


def assert_held_in(recorder, fmt):
    """Forward and backward passes were rounded to ``fmt``, every value a value of ``fmt``, at every step."""
    kinds = {kind for kind, _, _, _ in recorder.kept}
    assert {"activations", "activation_grads", "weight_grads"} <= kinds
    for kind, module, values, held in recorder.kept:
        if kind != "updates":
            assert held == fmt, (kind, module, held)
            assert np.array_equal(fpsim.round(values, fmt), values, equal_nan=True), (kind, module)
    assert len(recorder.history) == STEPS
    assert all(record["nonzero"]["weight_grads"] > 0 for record in recorder.history)


def batches():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8 * STEPS, 8, generator=generator)
    y = torch.randint(0, 3, (8 * STEPS,), generator=generator)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, len(x), 8)]


def tiny_network():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def is_held_in(tensor, fmt) -> bool:
    values = tensor.detach().numpy()
    return np.array_equal(fpsim.round(values, fmt), values)


# --- Lightning's Trainer -------------------------------------------------------------------------------
def train_with_trainer(plugin):
    """Three SGD steps of a LightningModule through ``Trainer``; returns (losses, module)."""
    L = _need("lightning")

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = tiny_network()
            self.losses = []

        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.losses.append(float(loss.detach()))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    module = Tiny()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=STEPS, plugins=[plugin] if plugin else None,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    x, y = (torch.cat(parts) for parts in zip(*batches()))
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8))
    return module.losses, module


@pytest.fixture(scope="module")
def trainer_fp32_losses():
    return train_with_trainer(None)[0]


def test_lightning_trainer_trains_bf16_mixed(trainer_fp32_losses):
    from fpsim.lightning import EmulatedPrecision

    recorder = KeepingRecorder()
    losses, module = train_with_trainer(EmulatedPrecision("bf16-mixed", recorder=recorder))
    assert_held_in(recorder, fpsim.BF16)
    assert "net.0" in recorder.modules and "net.2" in recorder.modules
    assert [record["loss"] for record in recorder.history] == losses
    assert len(losses) == STEPS and losses != trainer_fp32_losses
    assert losses[0] != trainer_fp32_losses[0]  # the first forward pass already computes in BF16
    # FP32 master weights: the parameters are not rounded to BF16
    assert not all(is_held_in(param, fpsim.BF16) for param in module.parameters())


def test_lightning_trainer_fp16_amp_overflow_skips_and_backs_off():
    from fpsim.lightning import EmulatedPrecision

    plugin = EmulatedPrecision("fp16-amp", recorder=Recorder(), scaler={"init_scale": HUGE_SCALE})
    initial = [param.detach().clone() for param in tiny_network().parameters()]
    _, module = train_with_trainer(plugin)
    history = plugin.steps.recorder.history
    assert [record["skipped"] for record in history] == [True] * STEPS
    assert [record["loss_scale"] for record in history] == [HUGE_SCALE / 2 ** k for k in range(STEPS)]
    assert plugin.steps.scaler.scale == HUGE_SCALE / 2 ** STEPS
    assert all(torch.equal(a, b) for a, b in zip(initial, module.parameters()))


# --- Lightning's Fabric --------------------------------------------------------------------------------
def train_with_fabric(plugin):
    """Three SGD steps of a plain module through ``Fabric``; returns (losses, module)."""
    Fabric = _need("lightning.fabric").Fabric
    fabric = Fabric(accelerator="cpu", devices=1, plugins=plugin)
    model, optimizer = fabric.setup(*(lambda net: (net, torch.optim.SGD(net.parameters(), lr=0.1)))(tiny_network()))
    losses = []
    for x, y in batches():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        fabric.backward(loss)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, model


def test_fabric_trains_bf16_pure():
    from fpsim.lightning import EmulatedPrecision

    recorder = KeepingRecorder()
    losses, model = train_with_fabric(EmulatedPrecision("bf16-pure", recorder=recorder))
    fp32_losses, fp32_model = train_with_fabric(None)
    assert_held_in(recorder, fpsim.BF16)
    assert losses != fp32_losses
    # pure BF16: the stored weights are BF16 values after every step, and they moved
    assert all(is_held_in(param, fpsim.BF16) for param in model.parameters())
    assert sum(record["updated"] for record in recorder.history) > 0
    initial = [torch.from_numpy(np.asarray(fpsim.round(param.detach().numpy(), fpsim.BF16), dtype=np.float32))
               for param in tiny_network().parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(initial, model.parameters()))
    # evaluation under no_grad runs in BF16 too, unrecorded, and closes its emulation
    with torch.no_grad():
        logits = model(batches()[0][0])
    assert is_held_in(logits, fpsim.BF16) and len(recorder.history) == STEPS


def test_fabric_fp16_amp_overflow_skips_and_backs_off():
    from fpsim.lightning import EmulatedPrecision

    plugin = EmulatedPrecision("fp16-amp", scaler={"init_scale": HUGE_SCALE})
    initial = [param.detach().clone() for param in tiny_network().parameters()]
    _, model = train_with_fabric(plugin)
    assert plugin.steps.scaler.scale == HUGE_SCALE / 2 ** STEPS and plugin.steps.step == STEPS
    assert all(torch.equal(a, b) for a, b in zip(initial, model.parameters()))
    # with GradScaler's default 2^16 the same run takes its steps
    plugin = EmulatedPrecision("fp16-amp")
    _, model = train_with_fabric(plugin)
    assert plugin.steps.scaler.scale == 2.0 ** 16
    assert not all(torch.equal(a, b) for a, b in zip(initial, model.parameters()))


def test_fabric_forward_that_raises_leaves_no_emulation_open():
    from fpsim.lightning import EmulatedPrecision

    plugin = EmulatedPrecision("bf16-mixed")
    model = _need("lightning.fabric").Fabric(accelerator="cpu", devices=1, plugins=plugin).setup(tiny_network())
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5))  # the first Linear takes 8 features
    assert not plugin.steps.active
    # a product in FP32 again: under BF16 its input 1 + 2^-10 would round to 1
    assert torch.mm(torch.tensor([[1.0 + 2.0 ** -10]]), torch.tensor([[1.0]])).item() == 1.0 + 2.0 ** -10


# --- the transformers Trainer --------------------------------------------------------------------------
def train_with_hf(tmp_path, policy=None, **options):
    """Three AdamW steps of a 1-layer GPT-2 (random weights) through ``Trainer``; returns (losses, trainer)."""
    transformers = _need("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, 64, (4 * STEPS, 16), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in tokens]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                                          learning_rate=1e-3, disable_tqdm=True)
    if policy is None:
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    else:
        from fpsim.hf import EmulatedTrainer

        trainer = EmulatedTrainer(model=model, args=args, train_dataset=data, policy=policy, **options)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], trainer


def test_hf_trainer_trains_gpt2_bf16_mixed(tmp_path):
    cwd = sorted(os.listdir())
    recorder = KeepingRecorder()
    losses, _ = train_with_hf(tmp_path / "bf16", "bf16-mixed", recorder=recorder)
    fp32_losses, _ = train_with_hf(tmp_path / "fp32")
    assert_held_in(recorder, fpsim.BF16)
    assert "transformer.h.0.attn.c_attn" in recorder.modules and "lm_head" in recorder.modules
    assert len(losses) == STEPS and losses != fp32_losses
    assert sorted(os.listdir()) == cwd  # nothing written outside tmp_path


def test_hf_trainer_fp16_amp_overflow_skips_and_backs_off(tmp_path):
    _, trainer = train_with_hf(tmp_path, "fp16-amp", scaler={"init_scale": HUGE_SCALE})
    assert trainer.emulation.scaler.scale == HUGE_SCALE / 2 ** STEPS and trainer.emulation.step == STEPS
    torch.manual_seed(0)
    initial = _need("transformers").GPT2LMHeadModel(trainer.model.config)
    assert all(torch.equal(a, b) for a, b in zip(initial.parameters(), trainer.model.parameters()))


# --- optional extras ------------------------------------------------------------------------------------
def test_import_fpsim_imports_no_framework():
    code = ("import sys, fpsim, fpsim.integrations\n"
            "loaded = [m for m in ('torch', 'lightning', 'transformers') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(fpsim.__file__)))


@pytest.mark.parametrize("module, missing, extra", [
    ("fpsim.integrations.lightning", "lightning", "lightning"),
    ("fpsim.integrations.transformers", "transformers", "hf"),
])
def test_missing_framework_says_what_to_install(monkeypatch, module, missing, extra):
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + ".") or name.startswith(module) or name in (
                "fpsim.lightning", "fpsim.hf"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError, as if not installed
    with pytest.raises(ImportError) as error:
        __import__(module)
    assert str(error.value) == f'{module} needs {missing}: pip install "fpsim[{extra}]"'
