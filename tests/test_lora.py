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
    with pytest.raises(EvalkitError, match="--ttt-targets"):
        parse_targets("q,wte")
