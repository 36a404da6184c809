"""palu_c.compress_kv end to end on tiny random-weight models of every supported family (and SmolLM2 in
test_compress_kv_smollm2 below), against the uncompressed model as the reference.

Tolerances: float32 models; a full-rank factorization reproduces K and V to ~1e-6 relative, so logits agree to
1e-3 absolute (the issue's bound) after 2-4 layers; generation must be token-identical.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import palu_c  # noqa: E402
from palu_c.kv import compress_kv, kv_bytes_per_token, summary  # noqa: E402
from tiny_models import tiny_model  # noqa: E402

FAMILIES = [
    ("llama", dict(kv_heads=2, head_dim=16)),
    ("llama", dict(kv_heads=4, head_dim=32)),  # MHA, head_dim 32
    ("mistral", dict(kv_heads=2, head_dim=16)),
    ("qwen2", dict(kv_heads=2, head_dim=16)),  # k/v biases
]


def calib_tokens(model, rng, n=4, seq_len=32):
    return torch.as_tensor(rng.integers(0, model.config.vocab_size, (n, seq_len)), dtype=torch.long)


def decode_logits(model, ids, steps):
    """Prefill logits, then `steps` greedy decode steps with the cache; returns all logits stacked."""
    out = model(ids, use_cache=True)
    logits, past = [out.logits[:, -1]], out.past_key_values
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(steps):
        out = model(nxt, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits.append(out.logits[:, -1])
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    return torch.stack(logits, 1)


@pytest.mark.parametrize("family, kw", FAMILIES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
@pytest.mark.parametrize("group", ["one", "all"])
def test_ratio_one_reproduces_the_model(rng, family, kw, group):
    base = tiny_model(family=family, layers=2, seed=int(rng.integers(1 << 30)), **kw)
    model = copy.deepcopy(base)
    group_size = 1 if group == "one" else kw["kv_heads"]
    compress_kv(model, calib_tokens(base, rng), ratio=1.0, group_size=group_size, progress=False)
    ids = torch.as_tensor(rng.integers(0, base.config.vocab_size, (2, 11)))
    with torch.no_grad():
        np.testing.assert_allclose(model(ids).logits, base(ids).logits, atol=1e-3, rtol=0)
        np.testing.assert_allclose(decode_logits(model, ids, 32), decode_logits(base, ids, 32), atol=1e-3, rtol=0)
        g_ref = base.generate(ids, max_new_tokens=16, do_sample=False)
        g_new = model.generate(ids, max_new_tokens=16, do_sample=False)
    assert torch.equal(g_ref, g_new)


@pytest.mark.parametrize("search", ["fisher", "fisher_uniform", "uniform", "greedy"])
def test_compressed_cache_equals_recompute_with_padding(rng, search):
    base = tiny_model(family="llama", kv_heads=2, head_dim=16, layers=2, seed=3)
    model = compress_kv(copy.deepcopy(base), calib_tokens(base, rng), ratio=0.5, group_size=2, search=search,
                        progress=False)
    ids = torch.as_tensor(rng.integers(1, base.config.vocab_size, (3, 9)))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, unequal lengths
    mask[2, :5] = 0
    with torch.no_grad():
        fast = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        slow = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(fast, slow)
    cfg = model.palu_config
    assert cfg.search == search and len(cfg.layers) == 2
    kept = sum(layer.k_rank + layer.v_rank for layer in cfg.layers) / (2 * 2 * 2 * 16)
    assert kept <= 0.5 + 1e-9


def test_summary_and_bytes_per_token(rng):
    base = tiny_model(family="llama", kv_heads=2, head_dim=16, layers=2, seed=5)
    model = compress_kv(copy.deepcopy(base), calib_tokens(base, rng), ratio=0.5, group_size=2, progress=False)
    full = kv_bytes_per_token(base)
    assert full == 2 * 2 * 2 * 16 * 4
    expected = sum(4 + 4 * (layer.k_rank + layer.v_rank) for layer in model.palu_config.layers)
    assert kv_bytes_per_token(model) == expected
    text = summary(model)
    assert "ratio 0.5" in text and f"{full:,.0f} -> {expected:,.0f}" in text


def test_save_load_round_trip_and_failures(rng, tmp_path, monkeypatch):
    base = tiny_model(family="qwen2", kv_heads=2, head_dim=16, layers=2, seed=7)
    model = compress_kv(copy.deepcopy(base), calib_tokens(base, rng), ratio=0.5, group_size=1, rank_multiple=8,
                        progress=False)
    palu_c.save(model, tmp_path / "m")
    loaded = palu_c.load(tmp_path / "m")
    ids = torch.as_tensor(rng.integers(0, base.config.vocab_size, (2, 13)))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.palu_config.to_dict() == model.palu_config.to_dict()

    # truncated weights
    bad = tmp_path / "truncated"
    palu_c.save(model, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt|does not match"):
        palu_c.load(bad)
    # corrupt config
    (bad / "palu_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        palu_c.load(bad)
    # mismatched: another model's weights under this config
    other = compress_kv(copy.deepcopy(base), calib_tokens(base, rng), ratio=1.0, group_size=2, progress=False)
    mismatch = tmp_path / "mismatch"
    palu_c.save(other, mismatch)
    (mismatch / "palu_config.json").write_text((tmp_path / "m" / "palu_config.json").read_text())
    with pytest.raises(ValueError, match="does not match"):
        palu_c.load(mismatch)
    # missing folder / not a palu_c folder
    with pytest.raises(FileNotFoundError):
        palu_c.load(tmp_path / "nowhere")
    # a failed save leaves no file under a final name and no temp file
    import palu_c.io as io

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_model", boom)
    with pytest.raises(OSError, match="disk full"):
        palu_c.save(model, tmp_path / "failed")
    assert list((tmp_path / "failed").iterdir()) == []
    assert io.CONFIG_NAME == "palu_config.json"
    json.loads((tmp_path / "m" / "palu_config.json").read_text())


def test_bad_arguments(rng):
    base = tiny_model(family="llama", kv_heads=2, head_dim=16, layers=1, seed=1)
    calib = calib_tokens(base, rng)
    for kwargs, exc, match in [
        (dict(ratio=0.0), ValueError, "ratio"),
        (dict(ratio=1.5), ValueError, "ratio"),
        (dict(group_size=3), ValueError, "does not divide"),
        (dict(bits=5), ValueError, "bits"),
        (dict(search="random"), ValueError, "search"),
        (dict(rank_multiple=0), ValueError, "rank_multiple"),
    ]:
        with pytest.raises(exc, match=match):
            compress_kv(copy.deepcopy(base), calib, progress=False, **kwargs)


def test_unsupported_models():
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64))
    with pytest.raises(ValueError, match="llama, mistral, qwen2"):
        compress_kv(gpt2, torch.zeros((1, 8), dtype=torch.long), progress=False)
    windowed = MistralForCausalLM(MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=2, vocab_size=64,
                                                sliding_window=16))
    with pytest.raises(NotImplementedError, match="sliding"):
        compress_kv(windowed, torch.zeros((1, 8), dtype=torch.long), progress=False)


def test_dynamic_ntk_rope_is_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=64,
                      rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(NotImplementedError, match="dynamic"):
        compress_kv(LlamaForCausalLM(cfg), torch.zeros((1, 8), dtype=torch.long), progress=False)


@pytest.mark.parametrize("family, kw", FAMILIES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
@pytest.mark.parametrize("bits", [None, 4])
def test_c_decode_path_matches_torch_path(rng, monkeypatch, family, kw, bits):
    """Decode steps on CPU float32 run in C (csrc/latent_attention.c); they must match the PyTorch reference
    path (logits within 1e-4, float32 math both ways) with left padding, and actually be taken."""
    import palu_c.attention as attention

    base = tiny_model(family=family, layers=2, seed=int(rng.integers(1 << 30)), **kw)
    model = compress_kv(copy.deepcopy(base), calib_tokens(base, rng), ratio=0.5, group_size=kw["kv_heads"],
                        bits=bits, residual=4, rank_multiple=8, progress=False)
    calls = []
    real = attention._C.latent_cache_decode_attention
    monkeypatch.setattr(attention._C, "latent_cache_decode_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = torch.as_tensor(rng.integers(1, base.config.vocab_size, (3, 7)))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0

    def run(backend):
        for layer in model.model.layers:
            layer.self_attn.decode_backend = backend
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True)
        return out.sequences, torch.stack(out.logits, 1)

    seq_c, logits_c = run("auto")
    assert calls, "the C decode path was never taken"
    n_calls = len(calls)
    seq_t, logits_t = run("torch")
    assert len(calls) == n_calls
    np.testing.assert_allclose(logits_c, logits_t, atol=1e-4, rtol=0)
    assert torch.equal(seq_c, seq_t)
