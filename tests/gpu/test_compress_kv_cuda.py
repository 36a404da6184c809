"""Palu-compressed models on CUDA (the PyTorch path over DeviceLatentStore), against the same model on the CPU.

Reference: the compressed model on the CPU (its C decode path is itself checked against the PyTorch path and
the uncompressed model in tests/test_compress_kv.py). Tolerances: logits agree to 1e-3 absolute over prefill and
24 decode steps and greedy generations are token-identical, with float32 models (TF32 off, as torch's default for
matmuls) where the cache is unquantized and float64 models where it is quantized. The quantized stores encode the
float32 rounding of each latent bit for bit alike on both devices, but a float32 down-projection computed on two
devices differs in its last bits, and a latent that close to a code boundary takes neighbouring codes on the two
(run 122: qwen2 at 4 bits, seed 1443637992170664464, 321 of 9216 logits off by up to 2.8e-3 after one such flip).
From float64 latents both devices round to the same float32 value except with probability ~1e-9 per value.
bf16 on CUDA is compared to float32 loosely (it only has to decode sensibly: argmax agreement on most steps).

Skips unless palu_c was built with CUDA and torch sees a GPU.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import palu_c

if not palu_c.build_info()["cuda_compiled"]:
    pytest.skip("palu_c was built without CUDA (PALU_C_CUDA=0 or no nvcc)", allow_module_level=True)
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import tiny_model  # noqa: E402

from palu_c.cache import LatentCache  # noqa: E402
from palu_c.device_store import DeviceLatentStore  # noqa: E402

CUDA = torch.device("cuda")
FAMILIES = [("llama", dict(kv_heads=2, head_dim=16)), ("qwen2", dict(kv_heads=2, head_dim=32)),
            ("mistral", dict(kv_heads=4, head_dim=16))]


def compressed(rng, family, kw, bits, dtype=torch.float32):
    base = tiny_model(family=family, layers=2, seed=int(rng.integers(1 << 30)), **kw).to(dtype)
    calib = torch.as_tensor(rng.integers(0, base.config.vocab_size, (4, 32)))
    return palu_c.compress_kv(base, calib, ratio=0.5, group_size=kw["kv_heads"], bits=bits, residual=4,
                              rank_multiple=8, progress=False)


def batch(rng, model):
    ids = torch.as_tensor(rng.integers(1, model.config.vocab_size, (3, 9)))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :5] = 0  # left padding, unequal lengths
    return ids, mask


def run(model, ids, mask, device, **kw):
    with torch.no_grad():
        out = model.to(device).generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=24,
                                        do_sample=False, output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences.cpu(), torch.stack(out.logits, 1).float().cpu()


@pytest.mark.parametrize("family, kw", FAMILIES, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
@pytest.mark.parametrize("bits", [None, 4, 3])
def test_generate_on_cuda_matches_cpu(rng, family, kw, bits):
    # float64 where quantized: the codes then agree across devices (module docstring)
    model = compressed(rng, family, kw, bits, torch.float32 if bits is None else torch.float64)
    ids, mask = batch(rng, model)
    seq_cpu, logits_cpu = run(model, ids, mask, "cpu")
    seq_gpu, logits_gpu = run(model, ids, mask, CUDA)
    np.testing.assert_allclose(logits_gpu.numpy(), logits_cpu.numpy(), atol=1e-3, rtol=0)
    assert torch.equal(seq_gpu, seq_cpu)


def test_sampling_beam_search_and_crop_on_cuda(rng):
    model = compressed(rng, "llama", dict(kv_heads=2, head_dim=16), 4).to(CUDA)
    ids, mask = batch(rng, model)
    with torch.no_grad():
        torch.manual_seed(int(rng.integers(1 << 30)))
        sampled = model.generate(ids.to(CUDA), attention_mask=mask.to(CUDA), max_new_tokens=12, do_sample=True,
                                 top_k=20)
        beams = model.generate(ids.to(CUDA), attention_mask=mask.to(CUDA), max_new_tokens=12, num_beams=3,
                               do_sample=False)
    assert sampled.shape == (3, 21) and beams.shape == (3, 21)
    assert int(sampled.max()) < model.config.vocab_size
    cache = LatentCache(model)
    with torch.no_grad():
        model(ids.to(CUDA), attention_mask=mask.to(CUDA), past_key_values=cache, use_cache=True)
    before = [t.clone() for t in cache.layers[0].latents()]
    cache.crop(-3)
    for got, old in zip(cache.layers[0].latents(), before):
        assert torch.equal(got, old[:, :-3])


@pytest.mark.parametrize("bits", [None, 3])
def test_reserved_capacity_keeps_addresses_and_refuses_overflow(rng, bits):
    model = compressed(rng, "llama", dict(kv_heads=2, head_dim=16), bits).to(CUDA)
    ids, mask = batch(rng, model)
    cache = LatentCache(model, max_tokens=40)
    with torch.no_grad():
        out = model(ids.to(CUDA), attention_mask=mask.to(CUDA), past_key_values=cache, use_cache=True)
        store = cache.layers[0]._store
        assert isinstance(store, DeviceLatentStore) and store.capacity == 256
        ptr = store.positions.data_ptr()
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        full = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1).to(CUDA)
        for _ in range(5):
            out = model(nxt, attention_mask=full, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            full = torch.cat([full, torch.ones(3, 1, dtype=full.dtype, device=CUDA)], 1)
        assert store.positions.data_ptr() == ptr and store.length == 14
        big = torch.ones(3, 250, dtype=torch.long, device=CUDA)
        with pytest.raises(ValueError, match="max_tokens"):
            model(big, past_key_values=cache, use_cache=True)


def test_bf16_on_cuda_decodes_sensibly(rng):
    model = compressed(rng, "qwen2", dict(kv_heads=2, head_dim=32), 4)
    ids, mask = batch(rng, model)
    _, logits32 = run(copy.deepcopy(model), ids, mask, CUDA)
    seq16, logits16 = run(model.to(torch.bfloat16), ids, mask, CUDA)
    # the first step sees identical inputs: its argmax should agree almost everywhere
    agree = (logits16[:, 0].argmax(-1) == logits32[:, 0].argmax(-1)).float().mean()
    assert agree >= 2 / 3 and torch.isfinite(logits16).all()


def test_cache_bytes_match_what_cuda_allocates(rng):
    """kv_cache_bytes counts the filled slots; the allocator sees the reserved capacity (reserved_bytes)."""
    model = compressed(rng, "llama", dict(kv_heads=2, head_dim=16), 3).to(CUDA)
    ids, mask = batch(rng, model)
    torch.cuda.synchronize()
    cache = LatentCache(model)
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        model(ids.to(CUDA), attention_mask=mask.to(CUDA), past_key_values=cache, use_cache=True)
    torch.cuda.synchronize()
    reserved = sum(layer._store.reserved_bytes for layer in cache.layers)
    assert 0 < palu_c.kv_cache_bytes(cache) <= reserved
    # the layers' buffers are all the cache adds once the forward's temporaries are freed
    grown = torch.cuda.memory_allocated() - before
    assert reserved <= grown <= reserved + 64 * 1024


# ---- the fused CUDA decode kernel inside generate (issue 5) -------------------------------------------------


def _shaped_model(kind: str, layers: int = 2):
    """Random-weight models of real shapes (fewer layers): Llama-3-8B (32/8 heads, D 128), Llama-2-7B (32/32 heads,
    D 128: MHA, where the decode kernel is v9) and SmolLM2-135M (9/3 heads, D 64). A larger init scale makes the
    next-token distribution peaked, so greedy choices are not ties between near-equal logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if kind in ("llama3-8b", "llama2-7b"):
        mha = kind == "llama2-7b"
        cfg = LlamaConfig(vocab_size=4096, hidden_size=4096, intermediate_size=4096, num_hidden_layers=layers,
                          num_attention_heads=32, num_key_value_heads=32 if mha else 8, head_dim=128,
                          rope_theta=10000.0 if mha else 500000.0, initializer_range=0.05)
    else:
        cfg = LlamaConfig(vocab_size=4096, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                          initializer_range=0.1)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(CUDA).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind,group,prompt,basis", [
    ("llama3-8b", 1, 37, "svd"), ("llama3-8b", 1, 8300, "svd"), ("llama3-8b", 2, 37, "svd"), ("llama2-7b", 1, 37, "svd"),
    ("smollm2", 3, 37, "svd"), ("smollm2", 1, 37, "svd"),
    # the interpolative key basis: v10 takes its pair table on the long prompt; the others rebuild from the dense U'
    ("llama3-8b", 1, 8300, "interpolative"), ("llama3-8b", 1, 37, "interpolative"), ("smollm2", 1, 37, "interpolative"),
    ("llama3-8b", 2, 8300, "interpolative")])
def test_generate_with_the_kernel_equals_the_reference_path(rng, monkeypatch, kind, group, prompt, basis, dtype):
    import palu_c.latent_kernels as lk

    base = _shaped_model(kind)
    calib = torch.as_tensor(rng.integers(0, base.config.vocab_size, (4, 64)), device=CUDA)
    model = palu_c.compress_kv(base, calib, ratio=0.5, group_size=group, search="uniform", key_basis=basis,
                               progress=False)
    model = model.to(dtype)
    calls = []
    real = lk.latent_decode_attention_cuda
    monkeypatch.setattr(lk, "latent_decode_attention_cuda", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids = torch.as_tensor(rng.integers(1, model.config.vocab_size, (3, prompt)), device=CUDA)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :20] = 0

    def run(backend):
        for layer in model.model.layers:
            layer.self_attn.decode_backend = backend
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
        return out.sequences[:, ids.shape[1]:].cpu(), torch.stack(out.logits, 1).float().cpu()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seq_k, logits_k = run("auto")
    assert calls, "the fused CUDA kernel was never called"
    slow = [w for w in caught if issubclass(w.category, palu_c.KernelSpeedWarning)]
    # the fastest kernel that covers the layer: v9 for MHA at group 1 and head_dim 128, v10 for GQA there, v11 for
    # group 2 at ranks 128 (all remembered as auto, which takes them there; v10 and v11 only on calls long enough, v4
    # on the short prompt), v4 for equal ranks 32/64/128 (uniform ranks at ratio 0.5 are G D / 2: 64 and 128 for
    # Llama-3-8B, 32 and 96 for SmolLM2), else the general tensor-core v2
    cfg = model.config
    D = cfg.hidden_size // cfg.num_attention_heads
    rank = group * D // 2
    used = {layer.self_attn._cuda_impl for layer in model.model.layers}
    sm90 = torch.cuda.get_device_capability() == (9, 0)
    if kind == "llama2-7b" or (kind == "llama3-8b" and sm90):
        assert used == {"auto"}, used
        n_groups = cfg.num_key_value_heads // group
        _, number = lk.latent_decode_workspace_size(ids.shape[0], cfg.num_attention_heads, cfg.num_key_value_heads, D,
                                                    group, ids.shape[1] + 24, [rank] * n_groups, [rank] * n_groups,
                                                    dtype, CUDA)
        expected = "v9" if kind == "llama2-7b" else "v4" if prompt < 1000 else "v10" if group == 1 else "v11"
        assert lk.KERNEL_NAMES[number] == expected
    else:
        assert used == {"v4" if rank in (32, 64, 128) else "v2"}, (rank, used)
    # the general kernel, and only it, says so (once per layer here: the filter is "always")
    assert len(slow) == (len(model.model.layers) if used == {"v2"} else 0), [str(w.message) for w in slow]
    if basis == "interpolative":  # the pair table was found (from the weights) and handed to the kernel
        assert all(layer.self_attn._k_pairs is not None for layer in model.model.layers)
    n_calls = len(calls)
    seq_r, logits_r = run("torch")
    assert len(calls) == n_calls  # the reference run did not use the kernel
    # token for token; a divergence is only allowed at a near-tie of the reference (top-2 gap within the
    # dtype's logit noise: 2% of the logit scale in fp16, 8% in bf16, far above the kernels' 6e-4 / 4e-3 error)
    tol = (0.02 if dtype == torch.float16 else 0.08) * float(logits_r.abs().max())
    for b in range(seq_r.shape[0]):
        diff = (seq_k[b] != seq_r[b]).nonzero()
        if len(diff) == 0:
            continue
        t = int(diff[0])
        top2 = logits_r[b, t].topk(2).values
        assert float(top2[0] - top2[1]) <= tol, f"sequence {b} diverges at step {t} without a tie"
        assert torch.allclose(logits_k[b, :t], logits_r[b, :t], atol=tol, rtol=0)
    same = seq_k == seq_r
    assert torch.allclose(logits_k[:, 0], logits_r[:, 0], atol=tol, rtol=0)
    assert bool(same[:, 0].all())


def test_group_size_none_on_cuda_uses_the_measured_table(rng):
    """compress_kv(group_size=None) on a CUDA model goes through the measured kernel table (palu_c.group_choice),
    on the CPU through the CPU rule; both must divide the KV-head count."""
    from palu_c.group_choice import choose_group_size

    base = tiny_model(family="llama", layers=2, kv_heads=4, head_dim=16, seed=int(rng.integers(1 << 30)))
    calib = torch.as_tensor(rng.integers(0, base.config.vocab_size, (4, 32)))
    on_cpu = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, rank_multiple=8, progress=False)
    on_gpu = palu_c.compress_kv(base.to(CUDA), calib, ratio=0.5, rank_multiple=8, progress=False)
    heads = base.config.num_attention_heads
    assert on_cpu.palu_config.group_size == 4 and "cpu" in on_cpu.palu_config.group_size_reason
    assert "cuda" in on_gpu.palu_config.group_size_reason
    assert on_gpu.palu_config.group_size == choose_group_size(4, heads, 16, CUDA)[0]
    assert 4 % on_gpu.palu_config.group_size == 0


def test_a_given_group_size_slower_than_full_attention_warns(rng):
    """compress_kv on a CUDA model, with the shipped speed table: a given group size whose measured decode is slower
    than SDPA over the full cache everywhere (4 at Llama-3-8B shapes: ~0.1x on the H200, the general kernel v2) warns
    and names the measured range; group size 1, the fast one, group size 2 (v11: faster than SDPA at most measured
    points) and group_size=None (which picks 1) do not warn."""
    base = _shaped_model("llama3-8b", layers=1)
    calib = torch.as_tensor(rng.integers(0, base.config.vocab_size, (2, 32)), device=CUDA)
    with pytest.warns(palu_c.KernelSpeedWarning, match=r"group size 4 measured 0\.\d\d-0\.\d\dx"):
        palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=4, search="uniform", progress=False)
    for group_size in (1, 2, None):
        with warnings.catch_warnings():
            warnings.simplefilter("error", palu_c.KernelSpeedWarning)
            model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=group_size,
                                       search="uniform", progress=False)
        assert model.palu_config.group_size == (group_size or 1)
