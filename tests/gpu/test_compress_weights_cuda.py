"""compress_weights (FLRC) on CUDA: statistics, factorization and generate on a tiny random-weight model.

Reference: the same compressed model on the CPU (compressed on the CPU, then moved). LowRankLinear runs two
plain torch matmuls, so CUDA float32 logits agree with the CPU ones to float32 rounding of a few layers:
atol 1e-4 (logits are O(1); TF32 is off in torch by default for matmuls). Generation must be token-identical
in greedy mode; sampling must run (batch, padding, a schedule).

Skips (module level, before torch is imported) unless torch sees a GPU. The C core is not needed on the GPU
here (the factorization runs on the CPU in C), so a CPU-only build of palu_c is fine.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA device", allow_module_level=True)
pytest.importorskip("transformers")

import palu_c  # noqa: E402
from palu_c.weights import compress_weights  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::palu_c.WhiteningWarning")


def _tiny(rng):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      attention_bias=True, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(1 << 30)))
        model = LlamaForCausalLM(cfg)
    return model.eval()


@pytest.mark.parametrize("progressive", [None, [(2, 0.5)]])
def test_generate_on_cuda_matches_cpu(rng, progressive):
    base = _tiny(rng)
    calib = torch.as_tensor(rng.integers(0, 128, (6, 32)))
    cpu = compress_weights(copy.deepcopy(base), calib, ratio=0.6, rank_multiple=8, progressive=progressive,
                           progress=False)
    gpu = compress_weights(copy.deepcopy(base).cuda(), calib, ratio=0.6, rank_multiple=8, progressive=progressive,
                           progress=False)
    assert [p.rank for p in gpu.flrc_config.projections] == [p.rank for p in cpu.flrc_config.projections]
    ids = torch.as_tensor(rng.integers(1, 128, (3, 7)))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        np.testing.assert_allclose(gpu(ids.cuda(), attention_mask=mask.cuda()).logits.cpu(),
                                   cpu(ids, attention_mask=mask).logits, atol=1e-4, rtol=0)
        g_cpu = cpu.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        g_gpu = gpu.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=12, do_sample=False)
        torch.manual_seed(int(rng.integers(1 << 30)))
        sampled = gpu.generate(ids.cuda(), attention_mask=mask.cuda(), max_new_tokens=12, do_sample=True, top_k=10)
    assert torch.equal(g_gpu.cpu(), g_cpu)
    assert sampled.device.type == "cuda" and int(sampled.max()) < 128


def test_save_load_to_cuda(rng, tmp_path):
    base = _tiny(rng)
    calib = torch.as_tensor(rng.integers(0, 128, (6, 32)))
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.7, rank_multiple=8, progress=False)
    palu_c.save(model, tmp_path / "m")
    loaded = palu_c.load(tmp_path / "m", device="cuda")
    ids = torch.as_tensor(rng.integers(1, 128, (2, 9)))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(ids.cuda()).logits.cpu(), model(ids).logits, atol=1e-4, rtol=0)
