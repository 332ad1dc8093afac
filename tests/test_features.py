"""Architecture features (evalkit/layers.py via GPTConfig flags): shapes, causality,
document isolation of SmearGate and BigramHash, XSA orthogonality, recurrence order."""
from __future__ import annotations

import pytest
import torch

from evalkit.model import layers
from evalkit.model.gpt import GPT
from tests.conftest import random_model, tiny_config

FEATURES = {
    "baseline": {},
    "smear": {"smear_gate": True},
    "smear_window": {"smear_gate": True, "smear_window": 12},
    "bigram": {"bigram_buckets": 64, "bigram_dim": 16},
    "xsa": {"xsa_last_n": 2},
    "gated_attn": {"gated_attn": True},
    "pre_enrich": {"pre_enrich_hidden": 96},
    "partial_rope_ntk": {"rope_dims": 8, "rope_ntk": True},
    "leaky": {"mlp_act": "leaky_relu2"},
    "recurrence": {"num_layers": 4, "recur_start": 1, "recur_end": 2, "recur_times": 2, "skip_from_layer": 2},
    "all": {"smear_gate": True, "smear_window": 12, "bigram_buckets": 64, "bigram_dim": 16, "xsa_last_n": 2,
            "gated_attn": True, "pre_enrich_hidden": 96, "rope_dims": 8, "num_layers": 4, "recur_start": 1,
            "recur_end": 2, "recur_times": 2},
}


def featured_model(flags: dict) -> GPT:
    model = random_model(tiny_config(**flags))
    with torch.no_grad():  # random_model leaves 1-D gates at init; make them matter
        for name, p in model.named_parameters():
            if "smear" in name or "lam" in name:
                p.normal_(std=1.0)
    return model


def tokens(seed: int = 0, n: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(4, 1024, (2, n), generator=g)
    t[:, 0] = 1  # documents start with BOS
    return t


@pytest.mark.parametrize("name", FEATURES)
def test_shapes(name):
    model = featured_model(FEATURES[name])
    assert model(tokens()).shape == (2, 48, 1024)


@pytest.mark.parametrize("name", FEATURES)
def test_causal(name):
    """Changing token t leaves every logit before t bitwise equal."""
    model = featured_model(FEATURES[name])
    x = tokens()
    y = x.clone()
    y[:, 30:] = (y[:, 30:] + 7) % 1024
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :30], b[:, :30])
    assert not torch.equal(a[:, 30:], b[:, 30:])  # the change is visible from t on


@pytest.mark.parametrize("flags", [{"smear_gate": True}, {"smear_gate": True, "smear_window": 12},
                                   {"bigram_buckets": 64, "bigram_dim": 16}])
def test_embedding_features_never_cross_bos(flags):
    """Changing the previous document leaves the next document's embedding features
    (before attention mixes them) unchanged: SmearGate and BigramHash are masked at BOS."""
    model = featured_model(flags)
    x = tokens()
    x[:, 20] = 1  # document 2 starts at 20
    y = x.clone()
    y[:, 19] = (y[:, 19] + 5) % 1024
    y[:, 19] = torch.where(y[:, 19] == 1, 2, y[:, 19])
    with torch.no_grad():
        ex, ey = model.tok_emb(x), model.tok_emb(y)
        if model.bigram is not None:
            ex, ey = ex + model.bigram(x), ey + model.bigram(y)
        if model.smear is not None:
            ex, ey = model.smear(ex, x), model.smear(ey, y)
    assert torch.equal(ex[:, 20:], ey[:, 20:])


def test_smear_gate_mixes_inside_a_document():
    model = featured_model({"smear_gate": True})
    x = torch.randn(1, 5, 64)
    idx = torch.tensor([[1, 5, 6, 1, 7]])
    out = model.smear(x, idx)
    assert torch.equal(out[:, [0, 3]], x[:, [0, 3]])  # BOS positions untouched
    assert not torch.allclose(out[:, [1, 2, 4]], x[:, [1, 2, 4]])


def test_xsa_output_orthogonal_to_own_value():
    g = torch.Generator().manual_seed(0)
    y, v = torch.randn(2, 4, 10, 16, generator=g), torch.randn(2, 2, 10, 16, generator=g)
    out = layers.exclusive_self_attention(y, v)
    own = v.repeat_interleave(2, dim=1)
    dots = (out * own).sum(-1) / own.norm(dim=-1)
    print(f"XSA max |<out, v_hat>| = {dots.abs().max():.2e}")
    assert dots.abs().max() < 1e-5
    assert out.shape == y.shape


def test_layer_order_recurrence():
    assert layers.layer_order(11, 3, 5, 2) == [0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert layers.layer_order(4, 0, 0, 1) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        layers.layer_order(4, 2, 5, 2)


def test_partial_rope_leaves_other_dims():
    from evalkit.model.gpt import Rotary, apply_rotary
    x = torch.randn(1, 1, 6, 16)
    cos, sin = Rotary(4, 10000.0)(6, x.device, x.dtype)
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert not torch.allclose(out[..., :4], x[..., :4])
    assert layers.rope_base(1e4, 16, 2048, 1024, True) > 1e4 == layers.rope_base(1e4, 16, 1024, 1024, True)


def test_features_default_off_keeps_baseline_state_dict():
    base = GPT(tiny_config())
    assert not any(k.startswith(("bigram", "smear", "enrich")) or ".gate." in k for k in base.state_dict())
