import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from slava.model.quant import INT4_ERROR_BOUND, QuantConfig, QuantizedLinear, quantize_from_config, quantize_linears

FORMATS_4BIT = [dict(fmt="int4"), dict(fmt="int4", symmetric=False), dict(fmt="nf4")]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def gaussian_linear(n_in=256, n_out=128, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(lin.weight, std=0.02)
    return lin


@pytest.mark.parametrize("init", ["default", "gaussian"])
def test_int8_output_error_below_one_percent(init):
    torch.manual_seed(1)
    lin = nn.Linear(256, 128) if init == "default" else gaussian_linear()
    x = torch.randn(64, 256)
    q = QuantizedLinear(lin, bits=8)
    assert q.qweight.dtype == torch.int8 and q.bits == 8
    assert rel_err(q(x), lin(x)) < 0.01


@pytest.mark.parametrize("kw", FORMATS_4BIT)
def test_4bit_error_within_documented_bound(kw):
    lin = gaussian_linear()
    x = torch.randn(64, 256)
    q = QuantizedLinear(lin, bits=4, group_size=64, **kw)
    err = rel_err(q(x), lin(x))
    # Bounded above by the documented figure and far from trivial (0 would mean no quantization).
    assert 0.01 < err < INT4_ERROR_BOUND
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (128, 128)
    assert q.fmt == kw["fmt"] and q.group_size == 64


def test_4bit_dequantize_is_exact_on_representable_weights():
    # A weight built from NF4 levels times a per-group absmax round-trips exactly.
    from slava.model.quant import NF4_CODE

    torch.manual_seed(0)
    levels = torch.tensor(NF4_CODE)
    idx = torch.randint(0, 16, (8, 128))
    idx[:, ::64] = 15  # each group holds its absmax
    w = levels[idx] * torch.rand(8, 2).repeat_interleave(64, dim=1).add(0.5)
    lin = nn.Linear(128, 8, bias=False)
    lin.weight.data.copy_(w)
    q = QuantizedLinear(lin, bits=4, group_size=64, fmt="nf4")
    torch.testing.assert_close(q.dequantize(), w)


def test_padding_for_inputs_not_a_multiple_of_group():
    lin = gaussian_linear(n_in=100, n_out=12)
    x = torch.randn(5, 100)
    q = QuantizedLinear(lin, bits=4, group_size=64, fmt="int4", symmetric=False)
    assert q.dequantize().shape == (12, 100)
    assert rel_err(q(x), lin(x)) < INT4_ERROR_BOUND


@pytest.mark.parametrize("bits", [8, 4])
def test_gradient_reaches_input_and_buffers_never_change(bits):
    lin = gaussian_linear(64, 32)
    q = QuantizedLinear(lin, bits=bits, group_size=32)
    adapter = nn.Linear(64, 64)  # stands for anything trainable upstream
    before = {k: v.clone() for k, v in q.state_dict().items()}
    opt = torch.optim.AdamW([*adapter.parameters(), *q.parameters()], lr=0.1)
    x = torch.randn(8, 64, requires_grad=True)
    q(adapter(x)).square().sum().backward()
    opt.step()
    assert list(q.parameters()) == []
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert adapter.weight.grad.abs().sum() > 0
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("bits", [8, 4])
def test_backward_keeps_no_dequantized_weight(bits):
    q = QuantizedLinear(gaussian_linear(256, 512, bias=False), bits=bits)
    x = torch.randn(2, 256, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = q(x)
    assert sum(saved) < 512 * 256  # a dequantized weight would be 512 * 256 values
    y.sum().backward()
    torch.testing.assert_close(x.grad, q.dequantize().sum(0).expand(2, -1))


@pytest.mark.parametrize("bits", [8, 4])
def test_bf16_autocast_forward_backward(bits):
    lin = gaussian_linear(64, 32)
    q = QuantizedLinear(lin, bits=bits, group_size=32)
    x = torch.randn(8, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0
    assert rel_err(y.float(), q(x).detach()) < 0.02


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(16, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.attn = nn.MultiheadAttention(16, 2)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(16, 10)


def test_quantize_linears_replaces_all_but_skipped():
    model = Tiny()
    n = quantize_linears(model, bits=8, skip=("lm_head",))
    assert n == 6  # q_proj + two MLP linears, in two blocks
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.layers[1].mlp[2], QuantizedLinear)
    # MultiheadAttention reads out_proj.weight directly, so its subclassed linear stays.
    assert not isinstance(model.layers[0].attn.out_proj, QuantizedLinear)
    assert quantize_linears(Tiny(), bits=4, skip=("lm_head", "mlp")) == 2


def test_quantize_from_config():
    model = Tiny()
    assert quantize_from_config(model, QuantConfig(bits=0)) == 0
    assert quantize_from_config(model, QuantConfig(bits=4, fmt="nf4", group_size=16)) == 6
    assert model.layers[0].q_proj.fmt == "nf4" and type(model.lm_head) is nn.Linear


@pytest.mark.parametrize("kw", [dict(bits=8), dict(bits=4, fmt="int4", symmetric=False), dict(bits=4, fmt="nf4")])
def test_state_dict_round_trips_through_safetensors(tmp_path, kw):
    torch.manual_seed(0)
    model = Tiny()
    quantize_linears(model, group_size=16, skip=("lm_head",), **kw)
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    fresh = Tiny()  # different random weights until loaded
    quantize_linears(fresh, group_size=16, skip=("lm_head",), **kw)
    fresh.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x = torch.randn(3, 16)
    for a, b in zip(model.layers, fresh.layers):
        assert torch.equal(a.mlp(x), b.mlp(x))
        assert torch.equal(a.q_proj(x), b.q_proj(x))


def test_quantization_is_deterministic():
    lin = gaussian_linear(64, 16)
    a = QuantizedLinear(lin, bits=4, group_size=32, fmt="nf4")
    b = QuantizedLinear(lin, bits=4, group_size=32, fmt="nf4")
    assert torch.equal(a.qweight, b.qweight) and torch.equal(a.scale, b.scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kw", [dict(bits=8), *[dict(bits=4, **f) for f in FORMATS_4BIT]])
def test_cuda_matches_cpu(kw):
    lin = gaussian_linear(128, 64)
    x = torch.randn(16, 128)
    q = QuantizedLinear(lin, group_size=64, **kw)
    qc = QuantizedLinear(lin.cuda(), group_size=64, **kw)
    assert qc.qweight.is_cuda
    torch.testing.assert_close(qc.dequantize().cpu(), q.dequantize())
    xc = x.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = qc(xc)
    y.float().sum().backward()
    assert xc.grad.abs().sum() > 0
    assert rel_err(y.float().cpu(), q(x)) < 0.02
