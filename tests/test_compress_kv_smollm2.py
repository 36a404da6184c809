"""compress_kv on the real embedded model (SmolLM2-135M, GQA 9/3 heads, head_dim 64), float32.

References: the uncompressed model (ratio 1.0 must reproduce it) and transformers' DynamicCache (bytes).
The issue's targets, 2048-token sequence, group size 3: ratio 0.5 holds <= 52% of a DynamicCache's bytes,
ratio 0.5 with 3-bit latents <= 14% (scales, zeros, positions and the 128-token residual window counted).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import palu_c  # noqa: E402
from palu_c.models import load_model  # noqa: E402
from tiny_models import have_embedded_model  # noqa: E402

HAVE_MODEL = have_embedded_model()

pytestmark = [pytest.mark.model, pytest.mark.slow,
              pytest.mark.skipif(not HAVE_MODEL, reason="embedded model not installed (make install-model)"),
              pytest.mark.filterwarnings("ignore::palu_c.WhiteningWarning")]


@pytest.fixture(scope="module")
def smollm2():
    return load_model()


@pytest.fixture(scope="module")
def calib(smollm2):
    _, tok = smollm2
    return palu_c.calibration_tokens(tok, "palu_c/data/calibration_emma.txt", 4, 128, seed=1)


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("palu_stats"))


def test_ratio_one_reproduces_smollm2(smollm2, calib, stats_dir):
    base, tok = smollm2
    model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=1.0, group_size=3, progress=False,
                               cache_dir=stats_dir)
    ids = tok(["It is a truth universally acknowledged, that a single man",
               "Anne Elliot walked along the"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        ref_out, out = base(ids, use_cache=True), model(ids, use_cache=True)
        np.testing.assert_allclose(out.logits, ref_out.logits, atol=1e-3, rtol=0)
        ref_past, past = ref_out.past_key_values, out.past_key_values
        nxt = ref_out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(32):
            ref_step = base(nxt, past_key_values=ref_past, use_cache=True)
            step = model(nxt, past_key_values=past, use_cache=True)
            np.testing.assert_allclose(step.logits, ref_step.logits, atol=1e-3, rtol=0)
            ref_past, past = ref_step.past_key_values, step.past_key_values
            nxt = ref_step.logits[:, -1].argmax(-1, keepdim=True)
        prompt = tok("Emma Woodhouse, handsome, clever, and rich,", return_tensors="pt").input_ids
        assert torch.equal(model.generate(prompt, max_new_tokens=24, do_sample=False),
                           base.generate(prompt, max_new_tokens=24, do_sample=False))


@pytest.mark.parametrize("bits, limit", [(None, 0.52), (3, 0.14)])
def test_cache_bytes_at_2048_tokens(smollm2, calib, stats_dir, bits, limit):
    base, tok = smollm2
    text = open("palu_c/data/eval_persuasion.txt", encoding="utf-8").read()
    ids = tok(text, return_tensors="pt").input_ids[:, :2048]
    assert ids.shape[1] == 2048
    model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=3, bits=bits, progress=False,
                               cache_dir=stats_dir)
    with torch.no_grad():
        full = palu_c.kv_cache_bytes(base(ids[:, :1], use_cache=True).past_key_values) * 2048  # per-token exact
        held = palu_c.kv_cache_bytes(model(ids, use_cache=True).past_key_values)
    assert full == 2048 * 30 * 2 * 3 * 64 * 4  # DynamicCache, float32
    assert held <= limit * full, f"{held / full:.2%} of a DynamicCache"
