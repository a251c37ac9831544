"""Per-module overrides of a policy: patterns, which policy each module gets, the JSON round trip, and the torch
engine running each module's ops, forward and backward, under its own policy."""

import json

import pytest

from fpsim.sim.policy import ROOT, Policy
from fpsim.sim.recorder import Recorder

GPT_LAYERS = ["transformer.wte", "transformer.wpe", "transformer.h.0.ln_1", "transformer.h.0.attn.c_attn",
              "transformer.h.0.mlp.c_fc", "transformer.h.1.ln_1", "transformer.h.1.attn.c_attn",
              "transformer.h.1.mlp.c_fc", "transformer.ln_f", "lm_head"]


def names(policy, paths):
    assignment = policy.resolve_overrides(GPT_LAYERS)
    return [assignment.policy_of(path).name for path in paths]


def test_a_glob_covers_the_matching_modules_and_everything_under_them_and_nothing_else():
    policy = Policy.coerce({"preset": "fp8-current", "overrides": {"transformer.h.1": "bf16-mixed"}})
    assert names(policy, ["transformer.h.1", "transformer.h.1.attn", "transformer.h.1.attn.c_attn",
                          "transformer.h.0.attn.c_attn", "transformer.h.10", "lm_head", ROOT]) == \
        ["bf16-mixed"] * 3 + ["fp8-current*"] * 4


def test_the_root_and_star_cover_every_module():
    for pattern in ("model", "*"):
        policy = Policy(overrides={pattern: "bf16-mixed"})
        assert set(names(policy, GPT_LAYERS + [ROOT, "transformer.h"])) == {"bf16-mixed"}


def test_last_k_of_a_pattern_counts_layers_in_model_order_and_a_share_rounds_up():
    policy = Policy(overrides={"last 2 of transformer.h.*": "bf16-mixed"})
    assert names(policy, GPT_LAYERS) == ["custom"] * 6 + ["bf16-mixed"] * 2 + ["custom"] * 2
    share = Policy(overrides={"last 15% of *": "bf16-mixed"})  # 10 layers: ceil(1.5) = 2
    assert names(share, GPT_LAYERS) == ["custom"] * 8 + ["bf16-mixed"] * 2
    assert names(Policy(overrides={"last 50 of lm_head": "fp16-mixed"}), ["lm_head"]) == ["fp16-mixed"]


def test_the_last_pattern_that_covers_a_module_wins():
    broad_then_narrow = Policy(overrides={"transformer.h.*": "bf16-mixed", "transformer.h.1.mlp.*": "fp16-mixed"})
    assert names(broad_then_narrow, ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]) == \
        ["bf16-mixed", "fp16-mixed"]
    narrow_then_broad = Policy(overrides={"transformer.h.1.mlp.*": "fp16-mixed", "transformer.h.*": "bf16-mixed"})
    assert names(narrow_then_broad, ["transformer.h.1.mlp.c_fc"]) == ["bf16-mixed"]


def test_overrides_round_trip_through_json_and_show_in_describe():
    policy = Policy.coerce({"preset": "fp8-current", "overrides": {
        "lm_head": "bf16-mixed", "last 1 of transformer.h.*": {"preset": "fp16-mixed", "loss_scale": 8}}})
    again = Policy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert again == policy and again.describe() == policy.describe()
    assert policy.to_dict()["overrides"]["lm_head"] == "bf16-mixed"  # a preset by its name
    assert "override 'lm_head': bf16-mixed: params bf16" in policy.describe()
    assert Policy.preset("fp8-current").describe() != policy.describe()


@pytest.mark.parametrize("overrides, message", [
    ({"lm_head": "bf17"}, "override 'lm_head': unknown policy 'bf17'"),
    ({"lm_head": 3}, "override 'lm_head': policy must be a Policy"),
    ({"last two of x": "fp32"}, "write 'last K of PATTERN'"),
    ({"last 0 of x": "fp32"}, "K must be at least 1"),
    ({"last 150% of x": "fp32"}, "at most 100%"),
    ({" lm_head": "fp32"}, "no surrounding spaces"),
    ({"lm_head": {"overrides": {"x": "fp32"}}}, "has overrides of its own"),
    (["lm_head"], "overrides must be a dict"),
])
def test_a_bad_override_is_one_line(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")) as error:
        Policy(overrides=overrides)
    assert "\n" not in str(error.value)


def test_a_pattern_that_selects_no_layer_is_one_line_naming_the_layers():
    with pytest.raises(ValueError, match="'lm_haed' selects no layer of the model .*transformer.wte"):
        Policy(overrides={"lm_haed": "bf16-mixed"}).resolve_overrides(GPT_LAYERS)


# --- the torch engine -------------------------------------------------------------------------------------------
def two_layers(torch):
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    x = torch.randn(4, 16, generator=generator)
    grad = torch.randn(4, 8, generator=generator) * 1e-3
    return model, x, grad


def run_whole(torch, policy, recorder=None):
    from fpsim.torch import emulate
    model, x, grad = two_layers(torch)
    with emulate(policy, model=model, recorder=recorder):
        out = model(x)
        out.backward(grad)
    return out.detach(), [p.grad.clone() for p in model.parameters()]


def run_layer_by_layer(torch, first, second):
    """Each layer alone under its own policy, the first's output feeding the second and the second's input
    gradient flowing back into the first: what a routed run must reproduce bit for bit."""
    from fpsim.torch import emulate
    model, x, grad = two_layers(torch)
    with emulate(first, model=model[0]), torch.no_grad():
        hidden = model[0](x)
    hidden = hidden.detach().requires_grad_()
    with emulate(second, model=model[1]):
        out = model[1](hidden)
        out.backward(grad)
    with emulate(first, model=model[0]):
        model[0](x).backward(hidden.grad)
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("root, override", [("fp8-current", "bf16-mixed"), ("bf16-mixed", "fp8-current"),
                                            ("fp16-mixed", "mxfp8")])
def test_a_module_runs_forward_and_backward_under_its_override_and_the_others_under_the_run(root, override):
    torch = pytest.importorskip("torch")
    policy = Policy.coerce({"preset": root, "overrides": {"1": override}})
    routed_out, routed_grads = run_whole(torch, policy)
    alone_out, alone_grads = run_layer_by_layer(torch, Policy.preset(root), Policy.preset(override))
    assert torch.equal(routed_out, alone_out)
    for routed, alone in zip(routed_grads, alone_grads):
        assert torch.equal(routed, alone)
    plain_out, plain_grads = run_whole(torch, root)  # the override changed layer 1 (and so layer 0's gradients)
    assert not torch.equal(routed_out, plain_out) and not torch.equal(routed_grads[2], plain_grads[2])


def test_an_override_on_the_first_layer_leaves_the_second_layers_forward_as_the_run_computes_it():
    torch = pytest.importorskip("torch")
    policy = Policy.coerce({"preset": "fp8-current", "overrides": {"0": "fp32"}})
    routed_out, routed_grads = run_whole(torch, policy)
    alone_out, alone_grads = run_layer_by_layer(torch, Policy.preset("fp32"), Policy.preset("fp8-current"))
    assert torch.equal(routed_out, alone_out)
    assert all(torch.equal(a, b) for a, b in zip(routed_grads, alone_grads))


def test_the_recorder_says_which_policy_each_module_ran_under():
    torch = pytest.importorskip("torch")
    recorder = Recorder()
    recorder.start_step(0)
    run_whole(torch, Policy.coerce({"preset": "fp16-mixed", "overrides": {"1": "bf16-mixed"}}), recorder)
    by_module = {s["module"]: s["policy"] for s in recorder.layer_summaries()}
    assert by_module["0"] == "fp16-mixed*" and by_module["1"] == "bf16-mixed"


def test_overrides_without_a_model_are_one_line():
    torch = pytest.importorskip("torch")
    from fpsim.torch import emulate
    with pytest.raises(ValueError, match="pass the model"):
        with emulate(Policy(overrides={"lm_head": "bf16-mixed"})):
            torch.ones(2) + 1


# --- the numpy MLP: layers "layers.0", "layers.1", ... as the torch engine would name them -------------------------
MLP = {"model": "mlp", "steps": 2, "batch_size": 32, "hidden": (16,), "progress": False, "shadow_every": 0}


@pytest.mark.parametrize("root, override, scaled", [("fp8-current", "bf16-mixed", "layers.0"),
                                                    ("bf16-mixed", "fp8-current", "layers.1")])
def test_an_mlp_layer_computes_under_its_override_and_the_others_under_the_run(root, override, scaled):
    import fpsim
    other = "layers.1" if scaled == "layers.0" else "layers.0"
    overridden = other if root.startswith("fp8") else scaled
    result = fpsim.train({"preset": root, "overrides": {overridden: override}}, **MLP)
    assert {trace["module"] for trace in result.scaling} == {scaled}  # only the FP8 layer's operands were cast
    policies = {layer["module"]: layer["policy"] for layer in result.layers}
    assert policies[overridden] == override and policies[other if overridden == scaled else scaled] == f"{root}*"
    plain = fpsim.train(root, **MLP)
    assert result.to_dict()["test_loss"] != plain.to_dict()["test_loss"]


def test_an_mlp_override_with_the_runs_own_policy_changes_no_bit():
    import fpsim
    same = fpsim.train({"preset": "fp8-current", "overrides": {"layers.1": "fp8-current"}}, **MLP).to_dict()
    plain = fpsim.train("fp8-current", **MLP).to_dict()
    for result in (same, plain):
        result.pop("config"), result.pop("policy", None)
        for layer in result["layers"]:
            layer.pop("policy", None)
    assert same == plain
