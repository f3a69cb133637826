import pytest
import torch
from torch import nn

from slava.model.fast_llama import FrozenLinears
from slava.model.mope import (
    MoPEConfig,
    MoPELinear,
    adapter_parameters,
    attach_mopes,
    expert_usage,
    load_balance_loss,
    reset_expert_usage,
    router_losses,
    sample_rank,
    set_rank,
)
from slava.model.quant import QuantizedLinear, quantize_linears

D_IN, D_OUT = 24, 16


def make(cfg, seed=0, quantized=False):
    """A MoPELinear with random (non-zero) B so every expert contributes."""
    torch.manual_seed(seed)
    base = nn.Linear(D_IN, D_OUT)
    if quantized:
        base = QuantizedLinear(base, bits=4, group_size=8)
    m = MoPELinear(base, cfg)
    with torch.no_grad():
        m.lora_B.normal_()
    return m


def reference(m, x, b):
    """Slow per-token, per-expert loop: the definition the batched path must match."""
    slots = m.lora_A.shape[0] // m.r_max
    A = m.lora_A.view(slots, m.r_max, D_IN)
    B = m.lora_B.view(D_OUT, slots, m.r_max)
    scale = m.alpha / b
    probs = m.router(x).softmax(-1)
    top, idx = probs.topk(m.top_k, dim=-1)
    if m.top_k > 1:
        top = top / top.sum(-1, keepdim=True)
    out = m.base(x).clone()
    for t in range(x.shape[0]):
        for j in range(m.top_k):
            e = idx[t, j]
            out[t] += top[t, j] * (B[:, e, :b] @ (A[e, :b] @ x[t])) * scale
        if m.shared_expert:
            out[t] += (B[:, -1, :b] @ (A[-1, :b] @ x[t])) * scale
    return out


def test_plain_lora_mode_is_exactly_lora():
    m = make(MoPEConfig.plain_lora(rank=4, alpha=8.0))
    assert m.router is None
    x = torch.randn(2, 5, D_IN)
    expected = m.base(x) + (x @ m.lora_A.T @ m.lora_B.T) * (8.0 / 4)
    torch.testing.assert_close(m(x), expected)
    m.train()
    torch.testing.assert_close(m(x), expected)  # no noise, no rank sampling without set_rank
    assert router_losses(m)[0].item() == 0.0


def test_lora_b_starts_at_zero_so_output_equals_base():
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    m = MoPELinear(base, MoPEConfig(num_experts=4, top_k=2))
    x = torch.randn(7, D_IN)
    torch.testing.assert_close(m(x), base(x))


@pytest.mark.parametrize("top_k,shared,rank", [(1, False, 4), (2, False, 2), (2, True, 3), (3, True, 1)])
def test_batched_path_matches_per_expert_loop(top_k, shared, rank):
    m = make(MoPEConfig(num_experts=4, top_k=top_k, r_max=4, alpha=6.0, shared_expert=shared)).eval()
    set_rank(m, rank)
    x = torch.randn(9, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x, rank), rtol=1e-5, atol=1e-5)


def test_quantized_base_inside_and_frozen():
    m = make(MoPEConfig(num_experts=4, top_k=2), quantized=True).train()
    x = torch.randn(6, D_IN, requires_grad=True)
    m(x).square().sum().backward()
    assert isinstance(m.base, QuantizedLinear) and list(m.base.parameters()) == []
    assert x.grad.abs().sum() > 0 and m.lora_A.grad.abs().sum() > 0


def test_gradients_reach_only_experts_and_router():
    m = make(MoPEConfig(num_experts=4, top_k=2)).train()
    m(torch.randn(6, D_IN)).square().sum().backward()
    assert m.base.weight.grad is None and m.base.bias.grad is None
    assert not m.base.weight.requires_grad
    for p in (m.lora_A, m.lora_B, m.router.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    groups = adapter_parameters(m)
    assert groups["experts"] == [m.lora_A, m.lora_B] and groups["routers"] == [m.router.weight]


@pytest.mark.parametrize("top_k", [1, 2])
def test_router_gets_gradient_from_task_loss(top_k):
    m = make(MoPEConfig(num_experts=4, top_k=top_k, router_noise=0.0)).train()
    x, target = torch.randn(8, D_IN), torch.randn(8, D_OUT)
    task = (m(x) - target).square().mean()
    (grad,) = torch.autograd.grad(task, m.router.weight)  # task loss alone, no aux losses
    # Renormalising a single gate to 1 leaves only rounding noise here (~1e-5); a real gradient is ~1e2.
    assert grad.abs().sum() > 1e-2


def test_balance_loss_is_one_when_balanced_and_e_when_collapsed():
    E, N = 4, 64
    uniform = torch.full((N, E), 1 / E)
    chosen = torch.arange(N).remainder(E).unsqueeze(1)
    assert load_balance_loss(uniform, chosen, E).item() == pytest.approx(1.0)
    collapsed = torch.zeros(N, E)
    collapsed[:, 0] = 1
    assert load_balance_loss(collapsed, torch.zeros(N, 1, dtype=torch.long), E).item() == pytest.approx(E)


def test_balance_loss_from_module_routing():
    m = make(MoPEConfig(num_experts=4, top_k=1, router_noise=0.0)).train()
    x = torch.randn(32, D_IN).abs() + 1  # positive inputs, so one weight row can win every token
    with torch.no_grad():
        m.router.weight.zero_()
    m(x)
    balanced, z_uniform = router_losses(m)
    assert balanced.item() == pytest.approx(1.0)
    assert z_uniform.item() == pytest.approx(torch.log(torch.tensor(4.0)).item() ** 2, rel=1e-5)
    with torch.no_grad():
        m.router.weight[0] = 10.0
    m(x)
    collapsed, z_big = router_losses(m)
    assert collapsed.item() > 3.9 and z_big > z_uniform
    m.eval()
    m(x)
    assert router_losses(m)[0].item() == 0.0


def test_usage_counts_tokens_and_resets():
    model = nn.Sequential()
    model.q_proj = nn.Linear(D_IN, D_IN)
    model.v_proj = nn.Linear(D_IN, D_IN)
    attach_mopes(model, MoPEConfig(num_experts=3, top_k=2, target_modules=["q"]))
    model(torch.randn(2, 5, D_IN))
    model(torch.randn(3, D_IN))
    usage = expert_usage(model)
    assert list(usage) == ["q_proj"]
    assert sum(usage["q_proj"]) == (10 + 3) * 2 and len(usage["q_proj"]) == 3
    reset_expert_usage(model)
    assert expert_usage(model)["q_proj"] == [0, 0, 0]


def test_shared_expert_changes_output():
    cfg = MoPEConfig(num_experts=4, top_k=1, r_max=4, shared_expert=True)
    m = make(cfg).eval()
    assert m.lora_A.shape == (5 * 4, D_IN)
    x = torch.randn(6, D_IN)
    with_shared = m(x)
    with torch.no_grad():
        m.lora_B[:, -4:] = 0  # silence the shared expert's slots
    assert not torch.allclose(with_shared, m(x), atol=1e-4)


def test_dynamic_rank_trains_only_the_first_b_slots():
    cfg = MoPEConfig(num_experts=2, top_k=2, r_max=6, min_rank=2)
    m = make(cfg).train()
    set_rank(m, 2)
    m(torch.randn(5, D_IN)).sum().backward()
    ga = m.lora_A.grad.view(2, 6, D_IN)
    assert ga[:, :2].abs().sum() > 0 and ga[:, 2:].abs().sum() == 0
    with pytest.raises(ValueError):
        set_rank(m, 7)
    gen = torch.Generator().manual_seed(0)
    ranks = {sample_rank(cfg, gen) for _ in range(60)}
    assert ranks == {2, 3, 4, 5, 6}
    assert sample_rank(MoPEConfig(dynamic_rank=False, r_max=5)) == 5


def test_scaling_is_alpha_over_rank_at_every_rank():
    # Rank 1 uses only slot 0 and scales it by alpha / 1, not alpha / r_max.
    m = make(MoPEConfig.plain_lora(rank=4, alpha=8.0)).eval()
    x = torch.randn(3, D_IN)
    set_rank(m, 1)
    expected = m.base(x) + (x @ m.lora_A[:1].T @ m.lora_B[:, :1].T) * 8.0
    torch.testing.assert_close(m(x), expected)


def test_bf16_autocast_forward_backward():
    m = make(MoPEConfig(num_experts=4, top_k=2, shared_expert=True), quantized=True).train()
    set_rank(m, 3)
    x = torch.randn(2, 6, D_IN, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        balance, z = router_losses(m)
        loss = y.float().square().mean() + 0.01 * balance + 0.001 * z
    assert y.dtype == torch.bfloat16 and y.shape == (2, 6, D_OUT)
    loss.backward()
    for p in (m.lora_A, m.lora_B, m.router.weight):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


class Layer(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            setattr(self, n, nn.Linear(d, d))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])
        self.lm_head = nn.Linear(16, 8)

    def forward(self, x):
        for layer in self.layers:
            x = x + layer.o_proj(layer.q_proj(x) * layer.k_proj(x) + layer.v_proj(x))
            x = x + layer.down_proj(torch.relu(layer.gate_proj(x)) * layer.up_proj(x))
        return self.lm_head(x)


def test_attach_after_quantization_wraps_targets_and_averages_losses():
    torch.manual_seed(0)
    model = TinyLM()
    assert quantize_linears(model, bits=8, skip=("lm_head",)) == 14
    model.requires_grad_(False)
    names = attach_mopes(model, MoPEConfig(num_experts=3, top_k=1, target_modules=["q", "v", "down"]))
    assert names == [f"layers.{i}.{n}" for i in range(2) for n in ("q_proj", "v_proj", "down_proj")]
    assert isinstance(model.layers[0].q_proj.base, QuantizedLinear)
    assert isinstance(model.layers[0].k_proj, QuantizedLinear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 6 * 3
    assert all(n.endswith(("lora_A", "lora_B", "router.weight")) for n in trainable)
    model.train()
    model(torch.randn(4, 16))
    balance, z = router_losses(model)
    per_layer = [model.get_submodule(n).balance_loss for n in names]
    torch.testing.assert_close(balance, torch.stack(per_layer).mean())
    set_rank(model, 3)
    assert all(model.get_submodule(n).rank == 3 for n in names)
    set_rank(model, None)
    assert model.layers[1].down_proj.rank is None
    with pytest.raises(ValueError):
        attach_mopes(TinyLM(), MoPEConfig(target_modules=["fc1"]))


def test_top_layers_adapts_only_the_last_blocks():
    model = TinyLM()
    names = attach_mopes(model, MoPEConfig(target_modules=["q", "down"], top_layers=1))
    assert names == ["layers.1.q_proj", "layers.1.down_proj"]
    assert type(model.layers[0].q_proj) is nn.Linear
    with pytest.raises(ValueError, match="top_layers"):
        attach_mopes(TinyLM(), MoPEConfig(top_layers=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = make(MoPEConfig(num_experts=4, top_k=2, shared_expert=True), quantized=True).eval()
    set_rank(m, 3)
    x = torch.randn(10, D_IN)
    ref = m(x)
    m.cuda()
    assert m.lora_A.is_cuda and m.base.qweight.is_cuda and m.usage.is_cuda
    xc = x.cuda()
    torch.testing.assert_close(m(xc).cpu(), ref, rtol=1e-4, atol=1e-4)
    m.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(xc)
        balance, z = router_losses(m)
    (y.float().square().mean() + balance + z).backward()
    assert m.router.weight.grad.abs().sum() > 0 and m.lora_A.grad.is_cuda


@pytest.mark.parametrize(
    "cfg,rank",
    [
        (MoPEConfig(num_experts=4, top_k=2, r_max=4), None),
        (MoPEConfig(num_experts=4, top_k=1, r_max=4, shared_expert=True), 3),
        (MoPEConfig(num_experts=3, top_k=3, r_max=4), 1),
        (MoPEConfig.plain_lora(rank=4, alpha=8.0), None),
    ],
)
def test_frozen_linears_match_eval_layers_and_count_usage(cfg, rank):
    torch.manual_seed(0)
    # Three layers on one input, as q, k, v: int8 and 4-bit bases, a bias, and one layer without experts.
    q = make(cfg, seed=1, quantized=True)
    k = QuantizedLinear(nn.Linear(D_IN, 8), bits=8)
    v = MoPELinear(QuantizedLinear(nn.Linear(D_IN, 12, bias=False), bits=8), cfg)
    with torch.no_grad():
        v.lora_B.normal_()
    layers = [q, k, v]
    for m in layers:
        m.eval()
    set_rank(q, rank)
    set_rank(v, rank)
    x = torch.randn(6, D_IN)
    with torch.no_grad():
        expected = [m(x) for m in layers]
    expected_usage = (q.usage.clone(), v.usage.clone())
    reset_expert_usage(q)
    reset_expert_usage(v)
    frozen = FrozenLinears(layers)
    got = frozen(x)
    frozen.flush_usage()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert torch.equal(q.usage, expected_usage[0]) and torch.equal(v.usage, expected_usage[1])


def test_frozen_linears_refuse_mixed_expert_settings():
    a = make(MoPEConfig(num_experts=4, top_k=2, r_max=4))
    b = make(MoPEConfig(num_experts=4, top_k=1, r_max=4))
    with pytest.raises(TypeError, match="differ"):
        FrozenLinears([a, b])
