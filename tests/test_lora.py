"""Batched LoRA: peft parity at batch 1, row independence, hook attach/detach."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evalkit.errors import EvalkitError
from evalkit.model.lora import AdapterSet, BatchedLoRA, parse_targets
from tests.conftest import random_model, tiny_config


class OneLinear(nn.Module):
    def __init__(self, lin: nn.Linear):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def _peft_pair(rank=4, alpha=8.0, d_in=12, d_out=10):
    """A peft-wrapped Linear and our batch-1 adapter holding the same (non-zero) A and B."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False)
    model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["lin"]), OneLinear(base))
    with torch.no_grad():
        model.lin.lora_B["default"].weight.normal_(std=0.3)  # B = 0 would hide a wrong product order
    ours = BatchedLoRA(1, d_in, d_out, rank, alpha)
    with torch.no_grad():
        ours.A[0] = model.lin.lora_A["default"].weight
        ours.B[0] = model.lin.lora_B["default"].weight
    return model, base, ours


def _maxdiff(a, b) -> float:
    return float((a - b).detach().abs().max())


def test_batched_lora_matches_peft_forward_and_one_adamw_step():
    model, base, ours = _peft_pair()
    x = torch.randn(1, 7, 12)
    w = torch.randn(1, 7, 10)
    ref_out = model(x)
    out = base(x) + ours(x)
    print(f"forward maxdiff = {_maxdiff(out, ref_out):.2e}")
    assert _maxdiff(out, ref_out) < 1e-6
    peft_params = [model.lin.lora_A["default"].weight, model.lin.lora_B["default"].weight]
    opt_ref = torch.optim.AdamW(peft_params, lr=1e-2, weight_decay=0.1)
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2, weight_decay=0.1)
    (model(x) * w).sum().backward()
    (ours(x) * w).sum().backward()
    print(f"grad maxdiff = {_maxdiff(ours.A.grad[0], peft_params[0].grad):.2e}")
    opt_ref.step()
    opt.step()
    assert _maxdiff(ours.A[0], peft_params[0]) < 1e-6 and _maxdiff(ours.B[0], peft_params[1]) < 1e-6
    with torch.no_grad():
        after = _maxdiff(base(x) + ours(x), model(x))
    print(f"after one step maxdiff = {after:.2e}")
    assert after < 1e-6


def test_rows_are_independent_and_prefix_slicing_uses_first_rows():
    torch.manual_seed(1)
    big = BatchedLoRA(3, 8, 5, 2, 2.0)
    with torch.no_grad():
        big.A.normal_()
        big.B.normal_()
    x = torch.randn(3, 4, 8)
    y = big(x)
    for j in range(3):
        one = BatchedLoRA(1, 8, 5, 2, 2.0)
        with torch.no_grad():
            one.A[0], one.B[0] = big.A[j], big.B[j]
        assert _maxdiff(one(x[j:j + 1])[0], y[j]) < 1e-6
    assert _maxdiff(big(x[:2]), y[:2]) < 1e-6  # finished documents drop off the end of a batch


def test_reset_rows_draws_per_document_and_zeroes_b():
    cfg = tiny_config()
    model = random_model(cfg)
    a = AdapterSet(model, ("q", "v", "lm_head"), batch=2, rank=4, alpha=4.0)
    b = AdapterSet(model, ("q", "v", "lm_head"), batch=2, rank=4, alpha=4.0)
    a.reset_rows([0, 1], [11, 22])
    b.reset_rows([1], [11])  # document 11 in another slot of another batch: same draw
    for name in a.layers:
        assert torch.equal(a.layers[name].A[0], b.layers[name].A[1])
        assert not torch.equal(a.layers[name].A[0], a.layers[name].A[1])
        assert float(a.layers[name].B.detach().abs().sum()) == 0.0


def test_attached_sets_hooks_and_always_detaches():
    model = random_model(tiny_config())
    adapters = AdapterSet(model, ("q", "o", "mlp", "lm_head"), batch=2, rank=2, alpha=2.0)
    adapters.reset_rows([0, 1], [1, 2])
    idx = torch.randint(0, 1024, (2, 9))
    with torch.no_grad():
        before = model(idx)
        with adapters.attached(model):
            assert model.blocks[0].attn.c_q.lora is not None and model.blocks[1].mlp.proj.lora is not None
            assert model.head_lora is not None and model.blocks[0].attn.c_k.lora is None
            assert _maxdiff(model(idx), before) < 1e-6  # B = 0: the adapted model starts as the base
    with pytest.raises(RuntimeError), adapters.attached(model):
        raise RuntimeError("boom")
    assert model.blocks[0].attn.c_q.lora is None and model.head_lora is None


def test_parse_targets_rejects_unknown_names():
    assert parse_targets("q, v,lm_head") == ("q", "v", "lm_head")
    assert parse_targets("attn.c_q,blocks.1*.mlp.*") == ("attn.c_q", "blocks.1*.mlp.*")
    with pytest.raises(EvalkitError, match="--ttt-targets"):
        parse_targets("q,w te")
    with pytest.raises(EvalkitError, match=r"'wte' matches no Linear module of the model; its Linear modules: "
                                           r"blocks\.\*\.attn\.c_q"):
        AdapterSet(random_model(tiny_config()), ("q", "wte"), 2, 2, 2.0)


class UserNet(nn.Module):
    """Not evalkit's GPT: plain nn.Linear layers with the challenge script's names."""

    def __init__(self, V=32, d=16):
        super().__init__()
        self.emb = nn.Embedding(V, d)
        self.attn = nn.Module()
        self.attn.c_q, self.attn.c_v = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.lm_head = nn.Linear(d, V, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        x = x + self.attn.c_v(torch.tanh(self.attn.c_q(x)))
        return self.lm_head(x)


def test_patterns_adapt_a_user_module_row_by_row():
    """Patterns reach plain Linears through hooks; row b's output moves only with adapter b,
    and detaching restores the module exactly."""
    torch.manual_seed(0)
    net = UserNet()
    idx = torch.randint(0, 32, (3, 5))
    base = net(idx)
    adapters = AdapterSet(net, parse_targets("attn.c_q,attn.c_v,lm_head"), 3, 2, 2.0)
    assert sorted(adapters.layers) == ["attn_c_q", "attn_c_v", "lm_head"]
    with torch.no_grad():
        for layer in adapters.layers.values():
            layer.A.normal_()
            layer.B[1].normal_()  # only row 1's adapter is non-zero
    with adapters.attached(net):
        out = net(idx)
    print(f"untouched rows maxdiff = {_maxdiff(out[[0, 2]], base[[0, 2]]):.2e}")
    assert _maxdiff(out[[0, 2]], base[[0, 2]]) == 0 and _maxdiff(out[1], base[1]) > 1e-3
    assert _maxdiff(net(idx), base) == 0  # hooks removed
    with pytest.raises(EvalkitError, match="'c_k' matches no Linear.*attn.c_q, attn.c_v, lm_head"):
        AdapterSet(net, ("c_k",), 3, 2, 2.0)
