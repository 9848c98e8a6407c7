"""grpo.onednn_linear: a linear layer through oneDNN gives F.linear's outputs and gradients (fp32,
1e-5 of their scale), falls back where oneDNN does not apply, and stays a Linear for everything
else (LoRA, copies, checkpoints)."""
import copy

import pytest
import torch

from trainer.kernels import OneDNNLinear, applies, use_onednn_linear

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= 1e-5 * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48)])
def test_outputs_and_all_three_gradients_match_f_linear(bias, shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 80, bias=bias)
    fast = copy.deepcopy(plain)
    assert use_onednn_linear(fast) == 1 and type(fast) is OneDNNLinear
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape[:-1], 80)
    results = []
    for layer in (plain, fast):
        x.grad = None
        y = layer(x)
        y.backward(grad)
        results.append((y.detach(), x.grad.clone(), layer.weight.grad.clone(),
                        None if layer.bias is None else layer.bias.grad.clone()))
    (y0, gx0, gw0, gb0), (y1, gx1, gw1, gb1) = results
    assert y1.shape == y0.shape and close(y1, y0) and close(gx1, gx0) and close(gw1, gw0)
    assert (gb0 is None and gb1 is None) or close(gb1, gb0)


def test_a_frozen_weight_gets_no_gradient_and_the_input_still_does():
    layer = torch.nn.Linear(16, 8)
    use_onednn_linear(layer)
    layer.requires_grad_(False)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None


def test_it_falls_back_to_f_linear_under_autocast_and_off_fp32():
    layer = torch.nn.Linear(16, 8)
    use_onednn_linear(layer)
    x = torch.randn(4, 16)
    assert applies(x, layer.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applies(x, layer.weight)
        assert layer(x).dtype == torch.bfloat16  # autocast's own path
    assert not applies(x.double(), layer.weight.double())
    assert layer.double()(x.double()).dtype == torch.float64
    assert not applies(torch.randn(0, 16), layer.float().weight)
    assert layer(torch.randn(0, 16)).shape == (0, 8)


def test_a_swapped_model_copies_saves_and_loads_as_before(tmp_path):
    from transformers import AutoModelForCausalLM

    from trainer.selfcheck.assets import tiny_assets

    model = AutoModelForCausalLM.from_pretrained(tiny_assets().sft_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert use_onednn_linear(model) == n > 0
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    twin = copy.deepcopy(model)
    assert all(type(m) is not torch.nn.Linear for m in twin.modules())
    model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
