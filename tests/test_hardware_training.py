"""Training on a GPU's tensor-core model: ``Policy(accumulate="H100")`` in both engines."""

import dataclasses
import json

import pytest

import fpsim
from fpsim.sim.policy import Policy


def h100(preset="fp8-current", **fields):
    return dataclasses.replace(Policy.preset(preset), name=f"{preset}-h100", accumulate="H100", **fields)


# --- the policy's fields ----------------------------------------------------------------------------------

def test_accumulate_names_a_gpu_model_canonically_and_round_trips_through_json():
    policy = h100(fast_accumulation="all", promote_every=64)
    assert policy.accumulate == policy.tensor_core == "H100:wgmma"
    assert dataclasses.replace(policy, accumulate="h100:WGMMA") == policy
    assert dataclasses.replace(policy, accumulate="H100:mma.sync").accumulate == "H100:mma.sync"
    assert Policy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy
    assert "H100:wgmma tensor core (FP8 products fast everywhere, promoted to FP32 every 64)" in policy.describe()
    assert Policy.preset("fp8-current").tensor_core is None
    assert Policy.coerce({"preset": "bf16-mixed", "accumulate": "A100"}).accumulate == "A100:mma.sync"
    describes = {h100(fast_accumulation=f).describe() for f in ("forward", "all", "none")}
    assert len(describes) == 3


@pytest.mark.parametrize("fields, message", [
    ({"accumulate": "X100"}, "unknown accumulate 'X100': use a format .* or a GPU model \\(V100, A100, A2, Ada, "
                             "L40S, H100, H200, B200"),
    ({"accumulate": "H100:tcgen05"}, "H100 has no instruction 'tcgen05': use mma.sync or wgmma"),
    ({"accumulate": "H100", "fast_accumulation": "backward"}, "fast_accumulation must be one of forward, all, none"),
    ({"accumulate": "H100", "promote_every": 0}, "promote_every must be a positive integer"),
    ({"accumulate": "H100", "promote_every": True}, "promote_every must be a positive integer"),
    ({"fast_accumulation": "all"}, "apply to a GPU accumulate"),
])
def test_bad_tensor_core_fields_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message) as error:
        dataclasses.replace(Policy.preset("bf16-mixed"), **fields)
    assert "\n" not in str(error.value)


def test_a_policy_whose_operands_no_tensor_core_path_takes_is_refused():
    with pytest.raises(ValueError, match="multiplies params \\(e2m1\\) with activations \\(e2m1\\)"):
        dataclasses.replace(Policy.preset("mxfp4"), accumulate="H100")
    with pytest.raises(ValueError, match="gradients \\(fp16\\) with params \\(bf16\\)"):
        dataclasses.replace(Policy.preset("bf16-mixed"), gradients="fp16", accumulate="A100")
    assert dataclasses.replace(Policy.preset("fp32"), accumulate="A100").tensor_core == "A100:mma.sync"  # TF32


def test_which_products_split():
    forward_default, fast, split = h100(), h100(fast_accumulation="all"), h100(fast_accumulation="none")
    e4m3, e5m2, bf16 = fpsim.get_format("e4m3"), fpsim.get_format("e5m2"), fpsim.BF16
    assert not forward_default.splits(True, e4m3, e4m3) and forward_default.splits(False, e5m2, e4m3)
    assert not fast.splits(False, e5m2, e4m3) and split.splits(True, e4m3, e4m3)
    assert not split.splits(False, bf16, bf16)  # 16-bit products never split
    assert not Policy.preset("fp8-current").splits(False, e5m2, e4m3)
