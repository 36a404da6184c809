"""The interpolative key basis (palu_c.key_basis): the same keys as the SVD basis, whole RoPE pairs stored as the
latent, a well-conditioned selection; and compress_kv(key_basis="interpolative") against the SVD-basis model.

References: float64 products of the factors before the change of basis (exact algebra: U' A' = U A), and for
the maxvol property the definition itself (no 2 x 2 block of U T^-1 at an unselected pair and a selected one may
have |det| above SWAP_GAIN, else swapping those pairs would have grown |det T|).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from palu_c import key_basis
from palu_c.key_basis import SWAP_GAIN, interpolative_factors, pair_layout, rope_pairs, select_pairs


def random_factors(rng, heads, head_dim, rank, hidden=48):
    """A low-rank key projection with RoPE-like structure: uneven pair energies (as real keys have)."""
    rows = heads * head_dim
    scale = np.exp(rng.normal(0, 1.0, rows))[:, None]
    return rng.normal(size=(rank, hidden)), rng.normal(size=(rows, rank)) * scale


@pytest.mark.parametrize("heads, head_dim, rank", [(1, 16, 8), (1, 64, 32), (2, 32, 32), (3, 16, 24), (1, 8, 8)])
def test_same_keys_unit_rows_and_layout(rng, heads, head_dim, rank):
    down, up = random_factors(rng, heads, head_dim, rank)
    new_down, new_up = interpolative_factors(down, up, head_dim)
    np.testing.assert_allclose(new_up @ new_down, up @ down, rtol=0, atol=1e-9 * np.abs(up @ down).max())
    found = pair_layout(new_up, head_dim)
    assert found is not None and len(found) == rank // 2 and list(found) == sorted(found)
    pairs = rope_pairs(heads * head_dim, head_dim)[found]
    # the latent IS those key coordinates: lower members first, then upper members, in pair order
    x = rng.normal(size=(5, down.shape[1]))
    keys = x @ (up @ down).T
    order = np.concatenate([pairs[:, 0], pairs[:, 1]])
    np.testing.assert_allclose(x @ new_down.T, keys[:, order], rtol=0, atol=1e-9 * np.abs(keys).max())
    assert pair_layout(up, head_dim) is None  # a generic basis is not mistaken for one


def test_selection_is_block_maxvol_and_beats_a_random_one(rng):
    down, up = random_factors(rng, 1, 64, 32)
    chosen = select_pairs(up, 64)
    pairs = rope_pairs(64, 64)
    sel = pairs[chosen].reshape(-1)
    x = up @ np.linalg.inv(up[sel])
    n = len(chosen)
    for u in set(range(len(pairs))) - set(chosen.tolist()):
        for s in range(n):
            blk = x[pairs[u]][:, 2 * s: 2 * s + 2]
            assert abs(np.linalg.det(blk)) <= SWAP_GAIN + 1e-9
    cond = np.linalg.cond(up[sel])
    random_conds = [np.linalg.cond(up[pairs[rng.choice(len(pairs), n, replace=False)].reshape(-1)])
                    for _ in range(20)]
    assert cond < np.median(random_conds)


def test_balanced_selection_takes_equal_shares_and_is_maxvol_within_heads(rng):
    down, up = random_factors(rng, 2, 32, 32)  # 2 heads x 16 pairs, 16 stored: 8 from each
    chosen = select_pairs(up, 32, balanced=True)
    assert np.bincount(chosen // 16, minlength=2).tolist() == [8, 8]
    pairs = rope_pairs(64, 32)
    x = up @ np.linalg.inv(up[pairs[chosen].reshape(-1)])
    for u in set(range(32)) - set(chosen.tolist()):
        for s, p in enumerate(chosen):
            if p // 16 == u // 16:  # a swap within a head: must not grow the volume
                assert abs(np.linalg.det(x[pairs[u]][:, 2 * s: 2 * s + 2])) <= SWAP_GAIN + 1e-9
    new_down, new_up = interpolative_factors(down, up, 32, balanced=True)
    np.testing.assert_allclose(new_up @ new_down, up @ down, rtol=0, atol=1e-9 * np.abs(up @ down).max())
    assert np.bincount(pair_layout(new_up, 32) // 16, minlength=2).tolist() == [8, 8]
    with pytest.raises(ValueError, match="divide by the group's 3 heads"):
        select_pairs(random_factors(rng, 3, 16, 16)[1], 16, balanced=True)  # 8 pairs over 3 heads


def test_pair_layout_rejects_near_misses(rng):
    down, up = random_factors(rng, 1, 16, 8)
    _, new_up = interpolative_factors(down, up, 16)
    assert pair_layout(new_up, 16) is not None
    broken = new_up.copy()
    row = np.flatnonzero((new_up == 1).any(axis=1))[0]
    broken[row, (np.argmax(new_up[row]) + 1) % 8] = 1e-3  # a unit row with a stray entry
    assert pair_layout(broken, 16) is None
    swapped = new_up.copy()  # lower member's unit row moved to a row that is not its pair's
    lo = np.flatnonzero(new_up[:, 0] == 1)[0]
    other = next(r for r in range(16) if not (new_up[r] == 1).any())
    swapped[[lo, other]] = swapped[[other, lo]]
    assert pair_layout(swapped, 16) is None
    assert pair_layout(new_up[:, :7], 16) is None  # odd rank


def test_bad_inputs(rng):
    down, up = random_factors(rng, 1, 16, 8)
    with pytest.raises(ValueError, match="even rank"):
        interpolative_factors(down[:7], up[:, :7], 16)
    with pytest.raises(ValueError, match="head_dim"):
        interpolative_factors(down, up, 12)
    with pytest.raises(ValueError, match="NaN or Inf"):
        bad = up.copy()
        bad[3, 2] = np.nan
        interpolative_factors(down, bad, 16)
    with pytest.raises(ValueError, match=r"down must be \(8, in\)"):
        interpolative_factors(down[:6], up, 16)
    with pytest.raises(ValueError, match="2-D"):
        select_pairs(up[0], 16)
    deficient = up.copy()
    deficient[:, 1] = deficient[:, 0]  # rank 7 of 8
    with pytest.raises(ValueError, match="rank-deficient"):
        select_pairs(deficient, 16)
    assert key_basis.MAX_SWEEPS > 0


def test_compress_kv_interpolative_matches_svd_basis(rng, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import palu_c
    from palu_c.kv import compress_kv, summary
    from tiny_models import tiny_model

    base = tiny_model(family="llama", kv_heads=2, head_dim=16, layers=2, seed=int(rng.integers(1 << 30)))
    calib = torch.as_tensor(rng.integers(0, base.config.vocab_size, (4, 32)), dtype=torch.long)
    kw = dict(ratio=0.5, group_size=1, search="uniform", rank_multiple=4, progress=False)
    svd = compress_kv(copy.deepcopy(base), calib, key_basis="svd", **kw)
    interp = compress_kv(copy.deepcopy(base), calib, key_basis="interpolative", **kw)
    assert svd.palu_config.key_basis == "svd"
    assert interp.palu_config.key_basis == "interpolative" and "key basis interpolative" in summary(interp)
    for layer in interp.model.layers:
        for up in layer.self_attn.k_ups:
            assert pair_layout(up.detach().double().numpy(), 16) is not None
    ids = torch.as_tensor(rng.integers(0, base.config.vocab_size, (2, 12)))
    with torch.no_grad():  # float32 models: the bases differ by rounding only
        np.testing.assert_allclose(interp(ids).logits, svd(ids).logits, atol=2e-4, rtol=0)
        assert torch.equal(interp.generate(ids, max_new_tokens=12, do_sample=False),
                           svd.generate(ids, max_new_tokens=12, do_sample=False))
    palu_c.save(interp, tmp_path / "m")
    loaded = palu_c.load(tmp_path / "m")
    assert loaded.palu_config.key_basis == "interpolative"
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, interp(ids).logits)
    with pytest.raises(ValueError, match="key_basis must be one of"):
        compress_kv(copy.deepcopy(base), calib, key_basis="pivoted", **kw)
    with pytest.raises(ValueError, match="unquantized latents"):
        compress_kv(copy.deepcopy(base), calib, key_basis="interpolative", bits=4, **kw)


def test_configs_saved_before_the_key_basis_read_as_svd():
    from palu_c.kv_config import PaluConfig, PaluLayerConfig

    cfg = PaluConfig(ratio=0.5, group_size=1, search="uniform", rank_multiple=16, kv_heads=2, head_dim=16,
                     hidden_size=32, key_basis="interpolative",
                     layers=[PaluLayerConfig(layer_idx=0, group_size=1, k_ranks=[8, 8], v_ranks=[8, 8])])
    data = cfg.to_dict()
    assert PaluConfig.from_dict(data).key_basis == "interpolative"
    del data["key_basis"]  # a palu_config.json written before the field existed
    assert PaluConfig.from_dict(data).key_basis == "svd"


def test_auto_key_basis_takes_the_interpolative_one_where_a_kernel_uses_it(rng):
    from palu_c.kv import resolve_key_basis

    # the rule itself: unquantized, group size <= 2, whole RoPE pairs in every key rank
    assert resolve_key_basis("auto", None, 1, [64, 64]) == "interpolative"
    assert resolve_key_basis("auto", None, 2, [128, 96]) == "interpolative"
    assert resolve_key_basis("auto", 4, 1, [64]) == "svd"        # quantized latents: the Hadamard basis
    assert resolve_key_basis("auto", None, 4, [256]) == "svd"    # no kernel uses it at G = 4
    assert resolve_key_basis("auto", None, 1, [64, 33]) == "svd"  # an odd rank cannot be whole pairs
    assert resolve_key_basis("auto", None, 1, [0, 64]) == "svd"
    assert resolve_key_basis("svd", None, 1, [64]) == "svd"
    assert resolve_key_basis("interpolative", None, 4, [64]) == "interpolative"

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from palu_c.kv import compress_kv
    from tiny_models import tiny_model

    base = tiny_model(family="llama", kv_heads=2, head_dim=16, layers=1, seed=int(rng.integers(1 << 30)))
    calib = torch.as_tensor(rng.integers(0, base.config.vocab_size, (2, 16)), dtype=torch.long)
    kw = dict(ratio=0.5, search="uniform", rank_multiple=4, progress=False)
    for group, bits, want in ((1, None, "interpolative"), (2, None, "interpolative"), (1, 4, "svd")):
        m = compress_kv(copy.deepcopy(base), calib, group_size=group, bits=bits, **kw)  # key_basis="auto"
        assert m.palu_config.key_basis == want, (group, bits)
        if want == "interpolative":
            for up in m.model.layers[0].self_attn.k_ups:
                assert pair_layout(up.detach().double().numpy(), 16) is not None
