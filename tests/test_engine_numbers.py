"""The numpy engine's numbers, pinned: a change of structure must not change a single bit of what a run produces.

Each case trains 8 steps of a small MLP (hidden (16, 16), the FP64 shadow every 3 steps) and hashes the
numbers of its result: every step's loss, the test loss and accuracy, the final loss, the flushed
weight-gradient and lost-update fractions, exactly (their shortest round-trip decimals), and the FP64
shadow's relative errors to 6 significant digits (they come from float64 BLAS products, whose last bits
may differ between CPUs; the policy's own arithmetic does not).  The digests were taken before the
layers stopped keeping forward state on themselves (commit 33a8ea5) and held after.  Change them only
with a change meant to alter the engine's numbers, and say so in its commit.
"""

import hashlib
import json

import pytest

import fpsim

SMALL = {"steps": 8, "hidden": (16, 16), "shadow_every": 3, "progress": False}
CASES = {
    **{name: (name, {}) for name, policy in fpsim.POLICIES.items() if policy.scaling is None},
    "teacher-adam": ("bf16-mixed", {"data": {"name": "teacher", "train": 256, "test": 64}, "optimizer": "adam",
                                    "lr": 1e-3}),
    "momentum-scaled": ("fp16-mixed", {"optimizer": "momentum", "loss_scale": 1024.0, "grad_scale": 2.0 ** -20}),
}
DIGESTS = {
    "fp32": "c7e3a66c7f32e963",
    "fp16-pure": "210b8e8f7a30121b",
    "fp16-mixed": "019c4927db5b0c15",
    "fp16-amp": "624bc720e1b08ac3",
    "bf16-pure": "2fc54674a9e1af3f",
    "bf16-mixed": "da246cef73b79650",
    "bf16-sr": "109e3d411211d7de",
    "bf16-kahan": "b7fefd0199b2b744",
    "teacher-adam": "0b38d70f29d2c75d",
    "momentum-scaled": "8ddf835d994cfafd",
}


def digest(result) -> str:
    numbers = {"loss": [r["loss"] for r in result.history], "test_loss": result.test_loss,
               "test_accuracy": result.test_accuracy, "final_loss": result.final_loss,
               "weight_grad_underflow": result.weight_grad_underflow_fraction,
               "lost_updates": result.lost_update_fraction,
               "shadow": [[f"{e:.6g}" for e in record["relative_error"]] for record in result.shadow]}
    return hashlib.sha256(json.dumps(numbers).encode()).hexdigest()[:16]


@pytest.mark.parametrize("case", CASES)
def test_a_run_gives_the_pinned_numbers(case):
    policy, options = CASES[case]
    assert digest(fpsim.train(policy, **SMALL, **options)) == DIGESTS[case]
