"""PaluAttention and the latent KV cache (palu_c/attention.py, palu_c/cache.py): the PyTorch reference path.

References, written here and independent of the code under test:

* the original transformers model (its own attention and DynamicCache): with full-rank factors a Palu model
  must reproduce its logits and its generations (greedy, sampling, beam search, left padding);
* ``RefPalu``: a float64 plain-torch forward of the Llama-family decoder written from the model's weights
  (RMSNorm, RoPE, GQA, causal / left-padding / sliding-window mask, SwiGLU MLP) with K/V projections given
  by the low-rank factors, processing tokens chunk by chunk and optionally reading fake-quantized latents;
* ``ref_fake_quant``: the asymmetric quantize-dequantize formula of docs/quant_format.md in NumPy float64;
* ``ref_sealed`` / ``ref_nbytes``: the sealing rule and byte count of docs/design/latent_cache.md section 3.

Tolerances: logits of float32 models against the float32 original or the float64 reference, atol 1e-4
(two layers of hidden 64 with logits of order 1; float32 rounding gives ~1e-6, so 1e-4 leaves room without
hiding a wrong position, mask or group, which move logits by >1e-2). Quantized storage is compared exactly:
the C core documents that a float64 NumPy evaluation of the formula reproduces its codes and values.

Models are tiny random Llama (GQA and MHA with head_dim 32), Mistral and Qwen2 (k/v/q biases, randomized so
they are not zero), float32, weights seeded from the ``rng`` fixture.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StaticCache,
)

import palu_c  # noqa: E402
from palu_c.attention import PaluAttention  # noqa: E402
from palu_c.cache import (  # noqa: E402
    CHUNK,
    LatentCache,
    LatentLayer,
    install_latent_layer,
    kv_cache_bytes,
)
from palu_c.kv_config import PaluLayerConfig  # noqa: E402

ATOL = 1e-4  # see the module docstring


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # tiny models gain nothing from intra-op threads, and on a loaded 2-core machine spinning OpenMP threads
    # made this file 10x slower; restored afterwards so other test files keep their setting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

KINDS = {
    "llama_gqa": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=2, head_dim=16)),
    "llama_mha32": (LlamaConfig, LlamaForCausalLM, dict(num_key_value_heads=4, head_dim=32)),
    "mistral": (MistralConfig, MistralForCausalLM, dict(num_key_value_heads=2, head_dim=16)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, dict(num_key_value_heads=2, head_dim=16)),
}


# ---- independent references ----------------------------------------------------------------------------------


def ref_sealed(length: int, residual: int) -> int:
    if length <= 0:
        return 0
    return length if residual == 0 else residual * ((length - 1) // residual)


def ref_fake_quant(x: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Asymmetric round-to-nearest per row and per `group` channels (docs/quant_format.md), float32 out."""
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    xs = x.astype(np.float64).reshape(-1, n // group, group)
    q = 2.0 ** bits - 1
    lo, hi = xs.min(-1, keepdims=True), xs.max(-1, keepdims=True)
    scale = ((hi - lo) / q).astype(np.float32).astype(np.float64)
    zero = lo.astype(np.float32).astype(np.float64)
    safe = np.where(scale > 0, scale, 1.0)
    code = np.where(scale > 0, np.clip(np.rint((xs - zero) / safe), 0, q), 0.0)
    return (code * scale + zero).astype(np.float32).reshape(x.shape)


def ref_quant_latents(x: np.ndarray, ranks, bits: int, quant_group) -> np.ndarray:
    """Fake-quantize (B, S, R) latents group by group (columns of rank r_g)."""
    out, off = [], 0
    for r in ranks:
        out.append(ref_fake_quant(x[..., off:off + r], bits, quant_group or r))
        off += r
    return np.concatenate(out, axis=-1)


def ref_nbytes(batch, length, k_ranks, v_ranks, bits=None, residual=0, quant_group=None, itemsize=4) -> int:
    total = batch * length * 4  # int32 positions
    if bits is None:
        return total + batch * length * (sum(k_ranks) + sum(v_ranks)) * itemsize
    sealed = ref_sealed(length, residual)
    total += batch * (length - sealed) * (sum(k_ranks) + sum(v_ranks)) * itemsize
    for r in list(k_ranks) + list(v_ranks):
        subgroups = r // (quant_group or r)
        total += batch * sealed * (math.ceil(r * bits / 32) * 4 + 2 * subgroups * 4)
    return total


class RefPalu:
    """float64 forward of a Llama-family decoder with low-rank K/V, fed chunk by chunk (a latent history)."""

    def __init__(self, model, factors, window=None, quant=None):
        cfg = model.config
        self.n_layers, self.H, self.Hkv, self.D = (cfg.num_hidden_layers, cfg.num_attention_heads,
                                                   cfg.num_key_value_heads, cfg.head_dim)
        self.eps = cfg.rms_norm_eps
        theta = cfg.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.D, 2, dtype=torch.float64) / self.D)
        self.p = {k: v.detach().double() for k, v in model.named_parameters()}
        self.lm_head = model.lm_head.weight.detach().double()
        def as64(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.float64)

        self.f = [(as64(kd), [as64(u) for u in kus], as64(vd), [as64(u) for u in vus])
                  for kd, kus, vd, vus in factors]
        self.window, self.quant = window, quant
        self.hk = [None] * self.n_layers
        self.hv = [None] * self.n_layers
        self.pos = self.mask = None

    def _rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _rope(self, x, pos):  # x (B, h, S, D), pos (B, S)
        ang = pos.double()[..., None] * self.inv_freq
        emb = torch.cat([ang, ang], -1)[:, None]
        half = self.D // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * emb.cos() + rot * emb.sin()

    @staticmethod
    def _up(h, ups):
        outs, off = [], 0
        for u in ups:
            outs.append(h[..., off:off + u.shape[1]] @ u.T)
            off += u.shape[1]
        return torch.cat(outs, -1)

    def step(self, ids, mask_new, pos_new, recorded=None):
        """Feed tokens ids (B, T) with 2-D mask and positions; returns logits (B, T, V) float64.

        recorded[l] = (hk, hv) float32 latents stored by the model under test, used (fake-quantized) for the
        sealed slots when quantizing, so that both sides quantize identical values.
        """
        B, T = ids.shape
        self.mask = mask_new.bool() if self.mask is None else torch.cat([self.mask, mask_new.bool()], 1)
        self.pos = pos_new if self.pos is None else torch.cat([self.pos, pos_new], 1)
        L = self.mask.shape[1]
        q_slot = torch.arange(L - T, L)[:, None]
        k_slot = torch.arange(L)[None]
        allowed = (k_slot <= q_slot)
        if self.window is not None:
            allowed &= k_slot > q_slot - self.window
        allowed = allowed[None] & self.mask[:, None, :]  # (B, T, L)
        x = self.p["model.embed_tokens.weight"][ids]
        for i in range(self.n_layers):
            pre = f"model.layers.{i}."
            kd, kus, vd, vus = self.f[i]
            h = self._rms(x, self.p[pre + "input_layernorm.weight"])
            q = h @ self.p[pre + "self_attn.q_proj.weight"].T
            if pre + "self_attn.q_proj.bias" in self.p:
                q = q + self.p[pre + "self_attn.q_proj.bias"]
            q = self._rope(q.view(B, T, self.H, self.D).transpose(1, 2), pos_new)
            hk_new, hv_new = h @ kd.T, h @ vd.T
            self.hk[i] = hk_new if self.hk[i] is None else torch.cat([self.hk[i], hk_new], 1)
            self.hv[i] = hv_new if self.hv[i] is None else torch.cat([self.hv[i], hv_new], 1)
            hk, hv = self.hk[i].clone(), self.hv[i].clone()
            if self.quant is not None:
                bits, residual, qg = self.quant
                s = ref_sealed(L, residual)
                rk, rv = recorded[i]
                hk[:, :s] = torch.from_numpy(ref_quant_latents(rk[:, :s].numpy(), [u.shape[1] for u in kus], bits,
                                                               qg)).double()
                hv[:, :s] = torch.from_numpy(ref_quant_latents(rv[:, :s].numpy(), [u.shape[1] for u in vus], bits,
                                                               qg)).double()
            k = self._up(hk, kus)
            v = self._up(hv, vus)
            if pre + "self_attn.k_proj.bias" in self.p:
                k = k + self.p[pre + "self_attn.k_proj.bias"]
                v = v + self.p[pre + "self_attn.v_proj.bias"]
            k = self._rope(k.view(B, L, self.Hkv, self.D).transpose(1, 2), self.pos)
            v = v.view(B, L, self.Hkv, self.D).transpose(1, 2)
            rep = self.H // self.Hkv
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.D)
            scores = scores.masked_fill(~allowed[:, None], float("-inf"))
            att = torch.nan_to_num(torch.softmax(scores, -1))  # fully masked (pad) query rows -> 0
            o = (att @ v).transpose(1, 2).reshape(B, T, -1) @ self.p[pre + "self_attn.o_proj.weight"].T
            x = x + o
            h = self._rms(x, self.p[pre + "post_attention_layernorm.weight"])
            gate = torch.nn.functional.silu(h @ self.p[pre + "mlp.gate_proj.weight"].T)
            x = x + (gate * (h @ self.p[pre + "mlp.up_proj.weight"].T)) @ self.p[pre + "mlp.down_proj.weight"].T
        return self._rms(x, self.p["model.norm.weight"]) @ self.lm_head.T


# ---- helpers ---------------------------------------------------------------------------------------------------


def build(kind, rng, attn="sdpa", **overrides):
    cfg_cls, model_cls, extra = KINDS[kind]
    cfg = cfg_cls(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                  initializer_range=0.1, max_position_embeddings=512, pad_token_id=0, **{**extra, **overrides})
    torch.manual_seed(int(rng.integers(2 ** 31)))
    model = model_cls(cfg).eval()
    model.set_attn_implementation(attn)
    with torch.no_grad():  # HF initializes biases to zero: randomize them so a dropped or cached bias shows
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.from_numpy(0.2 * rng.standard_normal(p.shape)))
    return model


def factorize(model, group_size, rank_fn):
    """Grouped factors of every layer's k_proj / v_proj: [(k_down, k_ups, v_down, v_ups)], and the configs."""
    D, Hkv, hidden = model.config.head_dim, model.config.num_key_value_heads, model.config.hidden_size
    factors, cfgs = [], []
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        ng = Hkv // group_size
        ranks = [rank_fn(group_size * D, hidden)] * ng
        kd, kus = palu_c.lowrank_factor_grouped(a.k_proj.weight.detach().numpy(), ranks, group_size * D)
        vd, vus = palu_c.lowrank_factor_grouped(a.v_proj.weight.detach().numpy(), ranks, group_size * D)
        factors.append((kd, kus, vd, vus))
        cfgs.append(PaluLayerConfig(i, group_size, ranks, ranks))
    return factors, cfgs


def palu_copy(model, group_size, rank_fn=lambda rows, hidden: min(rows, hidden), **quant):
    """A deep copy of `model` with every attention replaced by PaluAttention; returns (copy, factors)."""
    pm = copy.deepcopy(model)
    factors, cfgs = factorize(model, group_size, rank_fn)
    for layer, (kd, kus, vd, vus), lc in zip(pm.model.layers, factors, cfgs):
        layer.self_attn = PaluAttention(layer.self_attn, lc, kd, kus, vd, vus, pm.model.rotary_emb, **quant)
    return pm, factors


def left_padded(rng, lengths, vocab=128):
    T = max(lengths)
    ids = torch.zeros((len(lengths), T), dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = torch.from_numpy(rng.integers(3, vocab, n))
        mask[b, T - n:] = 1
    return ids, mask


def positions_from_mask(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def assert_logits_close(a, b, mask=None, atol=ATOL):
    a, b = a.double(), b.double()
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    err = (a - b).abs().max().item()
    assert err <= atol, f"max |logit diff| {err:.3g} > {atol}"


def assert_same_greedy(ref, out, gap=1e-3):
    """Tokens identical; a divergence is accepted only where the reference's top-2 logit gap is < `gap`
    (a float32 near-tie: the logits agree to ~1e-6, which cannot order two candidates closer than that)."""
    seq_r, seq_o = ref.sequences, out.sequences
    assert seq_r.shape == seq_o.shape
    start = seq_r.shape[1] - len(ref.scores)
    for b in range(seq_r.shape[0]):
        diff = (seq_r[b, start:] != seq_o[b, start:]).nonzero()
        if len(diff):
            t = int(diff[0])
            top2 = torch.topk(ref.scores[t][b].double(), 2).values
            assert float(top2[0] - top2[1]) < gap, f"sequence {b} diverges at step {t} with a clear margin"


# ---- full-rank factors reproduce the original model -------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("grouping", ["per_head", "all_heads"])
def test_full_rank_prefill_and_decode_match_original(rng, kind, grouping):
    model = build(kind, rng, attn="eager" if kind == "llama_gqa" else "sdpa")
    G = 1 if grouping == "per_head" else model.config.num_key_value_heads
    pm, _ = palu_copy(model, G)
    ids = torch.from_numpy(rng.integers(0, 128, (3, 7)))
    c_ref, c_pal = DynamicCache(config=model.config), DynamicCache(config=pm.config)
    with torch.no_grad():
        a = model(ids, past_key_values=c_ref, use_cache=True).logits
        b = pm(ids, past_key_values=c_pal, use_cache=True).logits
        assert_logits_close(a, b)
        assert all(isinstance(layer, LatentLayer) for layer in c_pal.layers)
        for _ in range(8):
            t = torch.from_numpy(rng.integers(0, 128, (3, 1)))
            assert_logits_close(model(t, past_key_values=c_ref, use_cache=True).logits,
                                pm(t, past_key_values=c_pal, use_cache=True).logits)
    assert c_pal.get_seq_length() == c_ref.get_seq_length() == 15
    assert c_pal.layers[0].capacity == CHUNK


@pytest.mark.parametrize("kind", list(KINDS))
def test_generate_greedy_left_padded_matches_original(rng, kind):
    model = build(kind, rng)
    pm, _ = palu_copy(model, 1)
    ids, mask = left_padded(rng, [7, 3, 5])
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
              output_scores=True)
    with torch.no_grad():
        assert_same_greedy(model.generate(ids, **kw), pm.generate(ids, **kw))


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2"])
def test_generate_sampling_and_beam_match_original(rng, kind):
    model = build(kind, rng)
    pm, _ = palu_copy(model, model.config.num_key_value_heads)
    ids, mask = left_padded(rng, [6, 2, 4])
    seed = int(rng.integers(2 ** 31))
    outs = []
    for m in (model, pm):
        torch.manual_seed(seed)  # a sampling flip needs a uniform draw within ~1e-6 of a CDF boundary
        with torch.no_grad():
            outs.append(m.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True, top_k=0))
    assert torch.equal(outs[0], outs[1])
    with torch.no_grad():
        beams = [m.generate(ids, attention_mask=mask, max_new_tokens=12, num_beams=3, do_sample=False)
                 for m in (model, pm)]
    assert torch.equal(beams[0], beams[1])


def test_sliding_window_past_the_window_matches_original(rng):
    model = build("mistral", rng, sliding_window=5)
    pm, _ = palu_copy(model, 1)
    ids = torch.from_numpy(rng.integers(0, 128, (2, 4)))
    c_ref, c_pal = DynamicCache(config=model.config), DynamicCache(config=pm.config)
    with torch.no_grad():
        assert_logits_close(model(ids, past_key_values=c_ref, use_cache=True).logits,
                            pm(ids, past_key_values=c_pal, use_cache=True).logits)
        for _ in range(8):
            t = torch.from_numpy(rng.integers(0, 128, (2, 1)))
            assert c_pal.get_mask_sizes(1, 0) == c_ref.get_mask_sizes(1, 0)
            assert_logits_close(model(t, past_key_values=c_ref, use_cache=True).logits,
                                pm(t, past_key_values=c_pal, use_cache=True).logits)
    assert c_pal.layers[0].is_sliding and c_pal.get_seq_length() == 12


def test_crop_then_continue_equals_recompute(rng):
    model = build("qwen2", rng)
    pm, _ = palu_copy(model, 1)
    ids = torch.from_numpy(rng.integers(3, 128, (1, 5)))
    cache = LatentCache(pm)
    assert len(cache.layers) == 2 and all(isinstance(x, LatentLayer) for x in cache.layers)
    with torch.no_grad():
        out = pm.generate(ids, past_key_values=cache, max_new_tokens=6, do_sample=False,
                          return_dict_in_generate=True)
        seq = out.sequences  # (1, 11); the cache holds the first 10 tokens
        assert out.past_key_values is cache and cache.get_seq_length() == 10
        cache.crop(-3)
        assert cache.get_seq_length() == 7
        cont = torch.cat([seq[:, 7:], torch.from_numpy(rng.integers(3, 128, (1, 2)))], 1)
        got = pm(cont, past_key_values=cache, use_cache=True).logits
        full = torch.cat([seq[:, :7], cont], 1)
        assert_logits_close(got, pm(full, use_cache=False).logits[:, 7:])
        assert_logits_close(got, model(full, use_cache=False).logits[:, 7:])
        cache.crop(4)  # legacy form: keep 4 tokens
        assert cache.get_seq_length() == 4
        assert_logits_close(pm(full[:, 4:], past_key_values=cache, use_cache=True).logits,
                            model(full, use_cache=False).logits[:, 4:])


# ---- compressed (rank < full): the cache equals recomputation and the float64 reference ------------------------


@pytest.mark.parametrize("kind", ["llama_gqa", "llama_mha32", "qwen2"])
def test_compressed_cache_equals_recompute_and_reference(rng, kind):
    model = build(kind, rng)
    G = 1 if kind != "llama_mha32" else 2
    pm, factors = palu_copy(model, G, rank_fn=lambda rows, hidden: min(rows, hidden) // 2)
    ref = RefPalu(model, factors)
    ids, mask = left_padded(rng, [7, 2, 5])
    pos = positions_from_mask(mask)
    cache = DynamicCache(config=pm.config)
    with torch.no_grad():
        got = pm(ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
        assert_logits_close(got, ref.step(ids, mask, pos), mask)
        for _ in range(8):
            t = torch.from_numpy(rng.integers(3, 128, (3, 1)))
            new_pos = pos[:, -1:] + 1
            ids, mask, pos = torch.cat([ids, t], 1), torch.cat([mask, torch.ones_like(t)], 1), \
                torch.cat([pos, new_pos], 1)
            got = pm(t, attention_mask=mask, position_ids=new_pos, past_key_values=cache, use_cache=True).logits
            recompute = pm(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1:]
            assert_logits_close(got, recompute)
            assert_logits_close(got, ref.step(t, torch.ones_like(t), new_pos))
        prompt, pmask = left_padded(rng, [6, 3, 1])
        kw = dict(attention_mask=pmask, max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
                  output_scores=True)
        assert_same_greedy(pm.generate(prompt, use_cache=False, **kw), pm.generate(prompt, **kw))
    assert_factors_stored(pm, factors)


def assert_factors_stored(pm, factors):
    for layer, (kd, kus, vd, vus) in zip(pm.model.layers, factors):
        a = layer.self_attn
        np.testing.assert_array_equal(a.k_down.weight.detach().numpy(), kd)
        np.testing.assert_array_equal(a.v_down.weight.detach().numpy(), vd)
        for p, u in zip(list(a.k_ups) + list(a.v_ups), list(kus) + list(vus)):
            np.testing.assert_array_equal(p.detach().numpy(), u)


# ---- quantized latents ---------------------------------------------------------------------------------------


def record_latents(pm):
    """Forward hooks on k_down / v_down: the exact float32 latents each layer appends, per call."""
    rec = [([], []) for _ in pm.model.layers]
    for i, layer in enumerate(pm.model.layers):
        layer.self_attn.k_down.register_forward_hook(lambda m, a, out, i=i: rec[i][0].append(out.detach().clone()))
        layer.self_attn.v_down.register_forward_hook(lambda m, a, out, i=i: rec[i][1].append(out.detach().clone()))
    return lambda: [(torch.cat(k, 1), torch.cat(v, 1)) for k, v in rec]


@pytest.mark.parametrize("bits,quant_group", [(8, None), (4, None), (4, 4), (3, None)])
def test_quantized_decode_matches_reference(rng, bits, quant_group):
    residual = 4
    model = build("qwen2", rng)
    pm, factors = palu_copy(model, 1, rank_fn=lambda rows, hidden: rows // 2, bits=bits, residual=residual,
                            quant_group=quant_group)
    recorded = record_latents(pm)
    ref = RefPalu(model, factors, quant=(bits, residual, quant_group))
    ids = torch.from_numpy(rng.integers(3, 128, (2, 7)))
    mask, pos = torch.ones_like(ids), torch.arange(7).expand(2, 7)
    cache = DynamicCache(config=pm.config)
    seen_sealed = set()
    with torch.no_grad():
        got = pm(ids, past_key_values=cache, use_cache=True).logits
        assert_logits_close(got, ref.step(ids, mask, pos, recorded()))
        for step in range(12):
            L = cache.get_seq_length()
            for i, layer in enumerate(cache.layers):
                rk, rv = recorded()[i]
                s = ref_sealed(L, residual)
                assert layer.sealed == s
                seen_sealed.add(s)
                hk, hv, p = layer.latents()
                kr, vr = pm.model.layers[i].self_attn.k_ranks, pm.model.layers[i].self_attn.v_ranks
                want_k = np.concatenate([ref_quant_latents(rk[:, :s].numpy(), kr, bits, quant_group),
                                         rk[:, s:].numpy()], 1)
                want_v = np.concatenate([ref_quant_latents(rv[:, :s].numpy(), vr, bits, quant_group),
                                         rv[:, s:].numpy()], 1)
                np.testing.assert_array_equal(hk.numpy(), want_k)
                np.testing.assert_array_equal(hv.numpy(), want_v)
                np.testing.assert_array_equal(p.numpy(), np.broadcast_to(np.arange(L), (2, L)))
                assert layer.nbytes == ref_nbytes(2, L, kr, vr, bits, residual, quant_group)
            t = torch.from_numpy(rng.integers(3, 128, (2, 1)))
            got = pm(t, past_key_values=cache, use_cache=True).logits
            want = ref.step(t, torch.ones_like(t), torch.full((2, 1), L), recorded())
            assert_logits_close(got, want)
    assert len(seen_sealed) >= 4  # several blocks got sealed during the decode
    assert kv_cache_bytes(cache) == sum(ref_nbytes(2, 19, a.self_attn.k_ranks, a.self_attn.v_ranks, bits, residual,
                                                   quant_group) for a in pm.model.layers)


def _random_latents(rng, batch, tokens, rk, rv):
    return (torch.from_numpy(rng.standard_normal((batch, tokens, rk)).astype(np.float32)),
            torch.from_numpy(rng.standard_normal((batch, tokens, rv)).astype(np.float32)))


class _Mirror:
    """Reference state of one layer: the full-precision value of every slot and the sealing rule."""

    def __init__(self, layer):
        self.layer, self.k, self.v = layer, None, None

    def append(self, hk, hv):
        self.k = hk.numpy() if self.k is None else np.concatenate([self.k, hk.numpy()], 1)
        self.v = hv.numpy() if self.v is None else np.concatenate([self.v, hv.numpy()], 1)

    def expected(self):
        lay = self.layer
        s = ref_sealed(self.k.shape[1], lay.residual)
        fk = ref_quant_latents(self.k[:, :s], lay.k_ranks, lay.bits, lay.quant_group)
        fv = ref_quant_latents(self.v[:, :s], lay.v_ranks, lay.bits, lay.quant_group)
        return np.concatenate([fk, self.k[:, s:]], 1), np.concatenate([fv, self.v[:, s:]], 1)

    def check(self):
        hk, hv, _ = self.layer.latents()
        ek, ev = self.expected()
        np.testing.assert_array_equal(hk.numpy(), ek)
        np.testing.assert_array_equal(hv.numpy(), ev)
        assert self.layer.sealed == ref_sealed(self.k.shape[1], self.layer.residual)


@pytest.mark.parametrize("residual", [0, 1, 3, 4])
def test_quantized_layer_crop_and_batch_ops(rng, residual):
    k_ranks, v_ranks = [8, 16], [16, 8]
    layer = LatentLayer(k_ranks, v_ranks, bits=4, residual=residual)
    mirror = _Mirror(layer)
    B, length = 3, 0
    for t in (7, 1, 1, 5, 1, 1):
        hk, hv = _random_latents(rng, B, t, 24, 24)
        out = layer.update_latent(hk, hv, torch.arange(length, length + t))
        length += t
        mirror.append(hk, hv)
        mirror.check()
        np.testing.assert_array_equal(out[0].numpy(), mirror.expected()[0])
        assert layer.nbytes == ref_nbytes(B, length, k_ranks, v_ranks, 4, residual)
    # crop into a sealed block: blocks past the new sealed boundary are re-opened into the window
    before = [x.clone() for x in layer.latents()]
    keep = 6
    layer.crop(keep - length)
    assert layer.get_seq_length() == keep and layer.sealed == ref_sealed(keep, residual)
    # residual > 0: kept blocks end at the new sealed boundary; residual 0: one block per append (documented), so
    # the first block [0, 7) straddles the cut and is re-opened, then sealed again at once
    kept_end = ref_sealed(keep, residual) if residual else 0
    if residual:  # nothing is requantized: attention reads exactly what it read before
        for x, y in zip(layer.latents(), before):
            np.testing.assert_array_equal(x.numpy(), y[:, :keep].numpy())
    mirror.k = np.concatenate([mirror.k[:, :kept_end], before[0][:, kept_end:keep].numpy()], 1)
    mirror.v = np.concatenate([mirror.v[:, :kept_end], before[1][:, kept_end:keep].numpy()], 1)
    mirror.check()
    for t in (2, 5):
        hk, hv = _random_latents(rng, B, t, 24, 24)
        layer.update_latent(hk, hv, torch.arange(keep, keep + t))
        keep += t
        mirror.append(hk, hv)
        mirror.check()
    # beam reorder, selection and repetition permute exactly what is read (no requantization)
    base = [x.clone() for x in layer.latents()]
    beam = torch.tensor([2, 0, 0])
    layer.reorder_cache(beam)
    for x, y in zip(layer.latents(), base):
        np.testing.assert_array_equal(x.numpy(), y[beam].numpy())
    layer.batch_select_indices(torch.tensor([0, 2]))
    layer.batch_repeat_interleave(2)
    idx = beam[[0, 2]].repeat_interleave(2)
    for x, y in zip(layer.latents(), base):
        np.testing.assert_array_equal(x.numpy(), y[idx].numpy())
    mirror.k, mirror.v = mirror.k[idx.numpy()], mirror.v[idx.numpy()]
    hk, hv = _random_latents(rng, 4, 6, 24, 24)
    layer.update_latent(hk, hv, torch.arange(keep, keep + 6))
    mirror.append(hk, hv)
    mirror.check()
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.nbytes == 0 and not layer.is_initialized


def test_dense_layer_growth_crop_batch_ops_and_sliding(rng):
    layer = LatentLayer([8, 8], [8, 8])
    hist_k, hist_v, hist_p = [], [], []
    length = 0
    for t in (250, 7, 1, 60):  # crosses the 256-slot chunk
        hk, hv = _random_latents(rng, 2, t, 16, 16)
        pos = torch.from_numpy(rng.integers(0, 1000, (2, t)))
        out = layer.update_latent(hk, hv, pos)
        hist_k.append(hk), hist_v.append(hv), hist_p.append(pos)
        length += t
        assert out[0].shape == (2, length, 16) and layer.capacity == -(-length // CHUNK) * CHUNK
    want = [torch.cat(hist_k, 1), torch.cat(hist_v, 1), torch.cat(hist_p, 1).int()]
    for x, y in zip(layer.latents(), want):
        assert torch.equal(x, y)
    assert layer.nbytes == ref_nbytes(2, length, [8, 8], [8, 8]) and layer.get_mask_sizes(3) == (length + 3, 0)
    layer.crop(-19)
    layer.batch_repeat_interleave(3)
    idx = torch.arange(2).repeat_interleave(3)
    for x, y in zip(layer.latents(), want):
        assert torch.equal(x, y[idx, :length - 19])
    layer.crop(0)  # no-op
    layer.crop(10 ** 6)  # legacy "keep n" beyond the length: no-op
    assert layer.get_seq_length() == length - 19
    layer.crop(-(10 ** 6))
    assert layer.get_seq_length() == 0
    hk, hv = _random_latents(rng, 5, 3, 16, 16)  # an emptied layer takes a new batch size
    layer.update_latent(hk, hv, torch.arange(3))
    assert layer.latents()[0].shape == (5, 3, 16)
    # sliding window: mask sizes and returned slots as DynamicSlidingWindowLayer
    win = LatentLayer([16], [16], sliding_window=4)
    total = 0
    for t in (6, 1, 1, 2):
        hk, hv = _random_latents(rng, 1, t, 16, 16)
        kv_len, kv_off = win.get_mask_sizes(t)
        assert (kv_len, kv_off) == (min(total, 3) + t, max(total - 3, 0))
        out = win.update_latent(hk, hv, torch.arange(total, total + t))
        total += t
        assert out[0].shape[1] == kv_len
        assert torch.equal(out[0], win.latents()[0][:, total - kv_len:])


def test_kv_cache_bytes_dynamic_and_latent(rng):
    model = build("llama_gqa", rng)
    pm, _ = palu_copy(model, 1, rank_fn=lambda rows, hidden: rows // 2)
    ids = torch.from_numpy(rng.integers(0, 128, (3, 9)))
    caches = [DynamicCache(config=model.config), DynamicCache(config=pm.config)]
    with torch.no_grad():
        model(ids, past_key_values=caches[0], use_cache=True)
        pm(ids, past_key_values=caches[1], use_cache=True)
    c = model.config
    assert kv_cache_bytes(caches[0]) == 2 * c.num_hidden_layers * 3 * c.num_key_value_heads * 9 * c.head_dim * 4
    assert kv_cache_bytes(caches[1]) == 2 * ref_nbytes(3, 9, [8, 8], [8, 8])
    assert kv_cache_bytes(None) == 0 and kv_cache_bytes(DynamicCache()) == 0
    with pytest.raises(TypeError, match="transformers Cache"):
        kv_cache_bytes([1, 2])


# ---- errors and integration details ----------------------------------------------------------------------------


def test_state_dict_biases_and_rotary_not_registered(rng):
    model = build("qwen2", rng)
    pm, _ = palu_copy(model, 2, rank_fn=lambda rows, hidden: 16)
    a = pm.model.layers[0].self_attn
    assert a.rotary_emb is pm.model.rotary_emb
    assert all("rotary" not in name for name, _ in a.named_modules())
    keys = set(a.state_dict())
    assert keys == {"q_proj.weight", "q_proj.bias", "o_proj.weight", "k_down.weight", "v_down.weight", "k_ups.0",
                    "v_ups.0", "k_bias", "v_bias"}
    orig = model.model.layers[0].self_attn
    assert torch.equal(a.k_bias, orig.k_proj.bias) and torch.equal(a.v_bias, orig.v_proj.bias)
    assert not any(k.startswith("model.layers.0.self_attn.k_proj") for k in pm.state_dict())


def test_positions_fallbacks_when_position_ids_is_missing(rng):
    """Called without position_ids: cache_position if given, else arange(past, past + T) (past = cached length)."""
    model = build("llama_gqa", rng)
    pm, _ = palu_copy(model, 1, rank_fn=lambda rows, hidden: rows // 2)
    attn, rot = pm.model.layers[0].self_attn, pm.model.rotary_emb
    x = torch.from_numpy(rng.standard_normal((2, 9, 64)).astype(np.float32))
    pos = torch.arange(9)[None]
    mask = torch.triu(torch.full((9, 9), float("-inf")), 1)[None, None]
    outs = []
    with torch.no_grad():
        for kw in (dict(position_ids=pos), dict(cache_position=pos[0]), {}):
            cache = DynamicCache()
            first = attn(x[:, :5], rot(x, pos[:, :5]), mask[..., :5, :5], past_key_values=cache,
                         **{k: (v[..., :5]) for k, v in kw.items()})[0]
            rest = attn(x[:, 5:], rot(x, pos[:, 5:]), mask[..., 5:, :], past_key_values=cache,
                        **{k: (v[..., 5:]) for k, v in kw.items()})[0]
            outs.append(torch.cat([first, rest], 1))
            assert cache.get_seq_length() == 9
        full = attn(x, rot(x, pos), mask)[0]  # no cache, no position_ids: arange(0, T)
    for out in outs:
        assert_logits_close(out, full, atol=1e-6)  # attention outputs of order 1; float32 rounding ~1e-7


def test_errors(rng):
    layer = LatentLayer([8], [8])
    with pytest.raises(TypeError, match="never full keys/values"):
        layer.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    cache = DynamicCache()
    cache.layers.append(layer)
    with pytest.raises(TypeError, match="never full keys/values"):
        cache.update(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 0)
    # latents on another device (meta tensors stand for CUDA ones) go to the torch store
    meta = torch.zeros((1, 2, 8), device="meta")
    dense_meta = LatentLayer([8], [8])
    assert dense_meta.update_latent(meta, meta, torch.arange(2))[0].shape == (1, 2, 8)
    # options
    for kwargs, exc, msg in [(dict(bits=5), ValueError, "bits"), (dict(bits=True), ValueError, "bits"),
                             (dict(bits=4, residual=-1), ValueError, "residual"),
                             (dict(bits=4, quant_group=3), ValueError, "quant_group"),
                             (dict(residual=2.0), TypeError, "residual"),
                             (dict(sliding_window=0), ValueError, "sliding_window")]:
        with pytest.raises(exc, match=msg):
            LatentLayer([8, 16], [8, 8], **kwargs)
    with pytest.raises(ValueError, match="k_ranks"):
        LatentLayer([], [8])
    with pytest.raises(ValueError, match="one rank per head group each"):
        LatentLayer([8, 8], [8])
    with pytest.raises(ValueError, match="k_ranks\\[0\\]"):
        LatentLayer([0], [8])
    # update_latent arguments
    hk, hv = _random_latents(rng, 2, 3, 8, 8)
    with pytest.raises(ValueError, match="hk"):
        layer.update_latent(hk[..., :7], hv, torch.arange(3))
    with pytest.raises(TypeError, match="floating point"):
        layer.update_latent(hk.int(), hv, torch.arange(3))
    with pytest.raises(ValueError, match="positions"):
        layer.update_latent(hk, hv, torch.arange(4))
    with pytest.raises(TypeError, match="integers"):
        layer.update_latent(hk, hv, torch.arange(3.0))
    with pytest.raises(ValueError, match="2\\*\\*31"):
        layer.update_latent(hk, hv, torch.tensor([0, 1, -1]))
    layer.update_latent(hk, hv, torch.arange(3))
    with pytest.raises(ValueError, match="float32"):
        layer.update_latent(hk.double(), hv.double(), torch.arange(3, 6))
    with pytest.raises(ValueError, match="holds 2 sequences"):
        layer.update_latent(hk[:1], hv[:1], torch.arange(3, 6))
    with pytest.raises(IndexError, match="beam_idx"):
        layer.reorder_cache(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="tokens_to_remove"):
        layer.crop(1.5)
    # installing into caches that cannot take a latent layer
    model = build("llama_gqa", rng)
    pm, factors = palu_copy(model, 1)
    ids = torch.from_numpy(rng.integers(0, 128, (1, 4)))
    filled = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, past_key_values=filled, use_cache=True)
        with pytest.raises(ValueError, match="already holds 4 tokens"):
            pm(ids, past_key_values=filled, use_cache=True)
        with pytest.raises(TypeError, match="StaticLayer"):
            pm(ids, past_key_values=StaticCache(config=pm.config, max_cache_len=16), use_cache=True)
    with pytest.raises(TypeError, match="transformers Cache"):
        install_latent_layer(object(), 0, lambda: LatentLayer([8], [8]))
    grown = DynamicCache()  # no config: entries below the index are created lazily
    assert isinstance(install_latent_layer(grown, 1, lambda: LatentLayer([8], [8])), LatentLayer)
    assert len(grown.layers) == 2 and type(grown.layers[0]).__name__ == "DynamicLayer"
    # PaluAttention construction
    base = model.model.layers[0].self_attn
    kd, kus, vd, vus = factors[0]
    lc = PaluLayerConfig(0, 1, [16, 16], [16, 16])
    rot = model.model.rotary_emb
    with pytest.raises(ValueError, match="k_down"):
        PaluAttention(base, lc, kd[:, :5], kus, vd, vus, rot)
    with pytest.raises(ValueError, match="k_ups\\[1\\]"):
        PaluAttention(base, lc, kd, [kus[0], kus[1][:, :3]], vd, vus, rot)
    with pytest.raises(ValueError, match="v_ups"):
        PaluAttention(base, lc, kd, kus, vd, vus[:1], rot)
    bad = kd.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PaluAttention(base, lc, bad, kus, vd, vus, rot)
    with pytest.raises(ValueError, match="layer 1"):
        PaluAttention(base, PaluLayerConfig(1, 1, [16, 16], [16, 16]), kd, kus, vd, vus, rot)
    with pytest.raises(ValueError, match="head groups"):
        PaluAttention(base, PaluLayerConfig(0, 2, [16, 16], [16, 16]), kd, kus, vd, vus, rot)
    with pytest.raises(ValueError, match="group_size 3"):
        PaluAttention(base, PaluLayerConfig(0, 3, [16], [16]), kd, kus, vd, vus, rot)
    with pytest.raises(TypeError, match="PaluLayerConfig"):
        PaluAttention(base, {"k_ranks": [16]}, kd, kus, vd, vus, rot)
    with pytest.raises(ValueError, match="bits"):
        PaluAttention(base, lc, kd, kus, vd, vus, rot, bits=1)
    with pytest.raises(TypeError, match="Llama-style"):
        PaluAttention(torch.nn.Linear(2, 2), lc, kd, kus, vd, vus, rot)


def test_store_routing_by_device_dtype_and_capacity(rng):
    """CPU float32 latents live in the C LatentCache (read in place by the C decode path); other dtypes and a
    reserved capacity use the torch store; both report the same bytes for the same tokens (float32)."""
    from palu_c.cache import HostLatentStore
    from palu_c.device_store import DeviceLatentStore

    hk, hv = _random_latents(rng, 2, 9, 32, 16)
    pos = torch.arange(9)
    host, fixed, half = (LatentLayer([16, 16], [8, 8], bits=3, residual=4), LatentLayer([16, 16], [8, 8], bits=3,
                         residual=4, max_tokens=20), LatentLayer([16, 16], [8, 8], bits=3, residual=4))
    host.update_latent(hk, hv, pos)
    fixed.update_latent(hk, hv, pos)
    half.update_latent(hk.to(torch.bfloat16), hv.to(torch.bfloat16), pos)
    assert isinstance(host._store, HostLatentStore) and isinstance(host.host_cache, palu_c._C.LatentCache)
    assert isinstance(fixed._store, DeviceLatentStore) and fixed.host_cache is None and fixed.capacity == 256
    assert isinstance(half._store, DeviceLatentStore) and half.latents()[0].dtype == torch.bfloat16
    assert host.nbytes == fixed.nbytes
    for x, y in zip(host.latents(), fixed.latents()):
        assert torch.equal(x, y)  # same quantization formulas (float64) on both stores
    with pytest.raises(ValueError, match="max_tokens"):
        fixed.update_latent(*_random_latents(rng, 2, 250, 32, 16), torch.arange(9, 259))
