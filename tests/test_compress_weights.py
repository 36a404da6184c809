"""palu_c.compress_weights (FLRC) end to end on tiny random-weight models, and its pieces: the projection
statistics (palu_c.statistics.collect_linear_statistics), the budgeted rank allocation, the whitened
factorization per projection, save/load, and the interplay with compress_kv.

Independent references: the uncompressed model; Grams X^T X and inputs X collected here by our own forward
hooks in float64; per-sample weight gradients from torch.autograd on each sample's own loss (float64 model);
the optimal rank-r output error from NumPy's SVD of X W^T (Eckart-Young); parameter counts from the modules'
tensors. Tolerances: float64 models throughout where numbers are compared: Grams rtol 1e-12 (sums of the same
products in another order, eps64 = 2.2e-16 times ~1e3 terms); Fisher sums rtol 1e-9 (per-sample gradients
formed in float64 both ways, summed in another order); output error vs optimum 1e-9 relative to ||X W^T||^2
(a Cholesky whitening of Grams with condition numbers ~1e3-1e5 loses ~1e-11); ratio 1.0 is exact (nothing
is replaced).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import palu_c  # noqa: E402
from palu_c.lowrank_linear import LowRankLinear  # noqa: E402
from palu_c.statistics import StatisticsCacheWarning, collect_linear_statistics  # noqa: E402
from palu_c.weights import (allocate_projection_ranks, compress_weights, dense_break_even,  # noqa: E402
                            parameter_report, summary)
from tiny_models import have_embedded_model, tiny_calib, tiny_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::palu_c.WhiteningWarning")
KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate", "up_proj": "up",
         "down_proj": "down"}


def projections(model):
    """{name: nn.Linear} of every targeted projection, by our own walk of the module tree."""
    return {name: mod for name, mod in model.named_modules()
            if name.rsplit(".", 1)[-1] in KINDS and isinstance(mod, torch.nn.Linear)}


def inputs_by_hook(model, calib):
    """{name: X (tokens, in) float64} of every projection over the calibration samples (our own hooks)."""
    xs, handles = {}, []
    for name, mod in projections(model).items():
        def hook(_m, args, name=name):
            xs.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).double())
        handles.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        for i in range(calib.shape[0]):
            model(calib[i:i + 1], use_cache=False)
    for h in handles:
        h.remove()
    return {k: torch.cat(v).numpy() for k, v in xs.items()}


def model_and_calib(rng, family="llama", dtype=torch.float32, n=6, seq=32, **kw):
    base = tiny_model(family, layers=2, seed=int(rng.integers(1 << 30)), dtype=dtype, **kw)
    return base, tiny_calib(rng, n, seq)


# ---------------------------------------------------------------- statistics
def test_linear_statistics_match_independent_reference(rng, tmp_path, monkeypatch):
    base, calib = model_and_calib(rng, "qwen2", dtype=torch.float64, n=3, seq=17)
    mods = projections(base)
    gram_of = {name: name.rsplit(".", 2)[0] + ("/attn" if KINDS[name.rsplit(".", 1)[-1]] in "qkv" else
                                               "/" + name.rsplit(".", 1)[-1]) for name in mods}
    for name in mods:  # gate and up share their input too
        if name.endswith(("gate_proj", "up_proj")):
            gram_of[name] = name.rsplit(".", 1)[0] + "/mlp_in"
    stats = collect_linear_statistics(base, calib, mods, gram_of=gram_of, batch_size=2, progress=False,
                                      cache_dir=tmp_path, fisher_diag=True)
    xs = inputs_by_hook(base, calib)
    for name, x in xs.items():
        np.testing.assert_allclose(stats.gram_for(name).numpy(), x.T @ x, rtol=1e-12, atol=1e-12 * np.abs(x).max() ** 2)
    # Fisher: per sample, the gradient of that sample's mean next-token loss w.r.t. every weight
    # output Fisher: per output channel, the summed squared gradient of that loss w.r.t. the projection's output
    ref = {name: 0.0 for name in mods}
    ref_diag = {name: 0.0 for name in mods}
    ref_out = {name: 0.0 for name in mods}
    outs = {}
    handles = [mod.register_forward_hook(lambda _m, _a, y, name=name: outs.__setitem__(name, y))
               for name, mod in mods.items()]
    for i in range(calib.shape[0]):
        ids = calib[i:i + 1]
        logits = base(ids, use_cache=False).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
        grads = torch.autograd.grad(loss, [m.weight for m in mods.values()] + [outs[n] for n in mods])
        for name, g, gy in zip(mods, grads, grads[len(mods):]):
            ref[name] += float((g.double() ** 2).sum())
            ref_diag[name] = ref_diag[name] + g.double().numpy() ** 2
            ref_out[name] = ref_out[name] + (gy.double() ** 2).reshape(-1, gy.shape[-1]).sum(0).numpy()
    for h in handles:
        h.remove()
    for name in mods:
        assert stats.fisher_sums[name] == pytest.approx(ref[name], rel=1e-9)
        # element Fisher, stored as float32: rtol 1e-6 (float32 rounding, eps32 = 1.2e-7, plus the sum order)
        np.testing.assert_allclose(stats.fisher_diag[name].numpy(), ref_diag[name], rtol=1e-6,
                                   atol=1e-6 * ref_diag[name].max())
        np.testing.assert_allclose(stats.output_fisher[name].numpy(), ref_out[name], rtol=1e-10,
                                   atol=1e-12 * ref_out[name].max())  # float64 sums in another order
        out, inp = mods[name].weight.shape
        assert stats.importance(name) == pytest.approx(np.sqrt(ref[name] / (3 * out * inp)), rel=1e-9)
    assert all(not p.requires_grad or p.grad is None for p in base.parameters())
    # the cache answers without a pass, seconds included; a corrupt file is recomputed with a warning
    import palu_c.statistics as st

    monkeypatch.setattr(st, "_collect_linear", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    again = collect_linear_statistics(base, calib, mods, gram_of=gram_of, progress=False, cache_dir=tmp_path)
    assert again.fisher_sums == stats.fisher_sums
    assert all(torch.equal(again.output_fisher[n], stats.output_fisher[n]) for n in mods)
    assert again.seconds == {k: stats.seconds[k] for k in ("gram", "fisher")}
    monkeypatch.undo()
    for f in tmp_path.glob("linear_stats-fisher-*.pt"):
        f.write_bytes(b"garbage")
    with pytest.warns(StatisticsCacheWarning, match="unreadable"):
        third = collect_linear_statistics(base, calib, mods, gram_of=gram_of, progress=False, cache_dir=tmp_path)
    assert third.fisher_sums[name] == pytest.approx(ref[name], rel=1e-9)


def test_separately_collected_parts_serve_compress_weights(rng, tmp_path, monkeypatch):
    from palu_c.weights import collect_projection_statistics

    base, calib = model_and_calib(rng)
    fisher = collect_projection_statistics(base, calib, grams=False, fisher=True, progress=False, cache_dir=tmp_path)
    grams = collect_projection_statistics(base, calib, grams=True, fisher=False, progress=False, cache_dir=tmp_path)
    assert fisher.gram is None and grams.fisher_sums is None and {"fisher"} == set(fisher.seconds)
    import palu_c.statistics as st

    monkeypatch.setattr(st, "_collect_linear", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.7, rank_multiple=8, progress=False,
                             cache_dir=tmp_path)
    assert model.flrc_config.statistics_seconds == {"gram": grams.seconds["gram"], "fisher": fisher.seconds["fisher"]}
    imp = {p.name: p.importance for p in model.flrc_config.projections}
    assert all(imp[n] == pytest.approx(fisher.importance(n), rel=0) for n in imp)


def test_linear_statistics_bad_arguments(rng):
    base, calib = model_and_calib(rng)
    mods = projections(base)
    for kwargs, exc, match in [
        (dict(modules={}), TypeError, "non-empty dict"),
        (dict(modules={"x": torch.nn.ReLU()}), TypeError, "nn.Linear"),
        (dict(grams=False, fisher=False), ValueError, "nothing to collect"),
        (dict(gram_of={"a": "b"}), ValueError, "gram_of"),
        (dict(calib=calib.float()), TypeError, "int64"),
        (dict(calib=calib + 1000), ValueError, "vocabulary"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ]:
        args = dict(modules=mods, calib=calib)
        args.update(kwargs)
        with pytest.raises(exc, match=match):
            collect_linear_statistics(base, args.pop("calib"), args.pop("modules"), progress=False, **args)
    shared = {n: "one" for n in mods}  # inputs of different widths under one key
    with pytest.raises(ValueError, match="different widths"):
        collect_linear_statistics(base, calib, mods, gram_of=shared, progress=False)


# ---------------------------------------------------------------- rank allocation
@pytest.mark.parametrize("search", ["fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss"])
def test_allocation_respects_budget(rng, search):
    for _ in range(40):
        n_items = int(rng.integers(1, 30))
        shapes = [(int(rng.integers(1, 400)), int(rng.integers(1, 400))) for _ in range(n_items)]
        shapes.append((int(rng.integers(64, 300)), int(rng.integers(64, 300))))  # at least one can go low rank
        mult = int(rng.choice([1, 4, 16]))
        scores = rng.random(len(shapes)) ** 3
        spectra = [np.sort(rng.random(min(s)))[::-1] for s in shapes]
        dense = np.array([m * n for m, n in shapes], float)
        caps = np.array([dense_break_even(m, n, mult) for m, n in shapes])
        fixed = float(dense[caps < mult].sum())
        floor_cost = sum(mult * (m + n) for (m, n), c in zip(shapes, caps) if c >= mult)
        low = (fixed + floor_cost) / dense.sum()
        ratio = float(rng.uniform(min(low + 1e-3, 1.0), 1.0))
        curves = [np.sort(rng.random(c // mult + 1))[::-1] * rng.random() for c in
                  (dense_break_even(m, n, mult) for m, n in shapes)]
        ranks = allocate_projection_ranks(shapes, ratio, search=search, scores=scores, spectra=spectra,
                                          rank_multiple=mult, loss_curves=curves)
        budget = ratio * dense.sum()
        stored = sum(m * n if r is None else r * (m + n) for r, (m, n) in zip(ranks, shapes))
        assert stored <= budget + 1e-6
        # within one rank unit: some projection could not take one more unit (or its step to dense)
        open_units = [mult * (m + n) if r is not None and r < c else (m * n - r * (m + n) if r is not None else 0)
                      for r, c, (m, n) in zip(ranks, caps, shapes)]
        assert budget - stored < max(max(open_units), 1) + 1e-6
        for r, c, (m, n) in zip(ranks, caps, shapes):
            if c < mult:
                assert r is None  # cannot save at the floor
            elif r is not None:
                assert r % mult == 0 and mult <= r <= c and r * (m + n) < m * n


def test_fisher_loss_curve_matches_direct_sums(rng):
    from palu_c.weights import fisher_loss_curve

    m, n, r, mult = 19, 23, 12, 4
    w, down, up = rng.standard_normal((m, n)), rng.standard_normal((r, n)), rng.standard_normal((m, r))
    f = rng.random((m, n))
    curve = fisher_loss_curve(w, down, up, f, mult)
    direct = [float((f * (w - up[:, :k] @ down[:k]) ** 2).sum()) for k in range(0, r + 1, mult)]
    np.testing.assert_allclose(curve, direct, rtol=1e-12)  # float64, the same sums in another order


def test_output_fisher_curve_matches_direct_sums(rng):
    """The K-FAC loss curve from the SVD-tail identity equals sum_i h_i ((W - W_k) G (W - W_k)^T)_ii computed
    directly, for the whitened factorization at every rank k (fresh W, a random positive-definite Gram)."""
    from palu_c import lowrank_factor
    from palu_c.weights import output_fisher_curve

    m, n, mult = 21, 30, 3
    cap = 18
    w = rng.standard_normal((m, n))
    x = rng.standard_normal((200, n)) * rng.uniform(0.1, 3.0, n)
    gram = x.T @ x
    h = rng.random(m) ** 2
    _, up = lowrank_factor(w, cap, gram=gram)
    curve = output_fisher_curve(w, up, gram, h, mult)
    direct = []
    for k in range(0, cap + 1, mult):
        if k == 0:
            dw = w
        else:
            down_k, up_k = lowrank_factor(w, k, gram=gram)
            dw = w - up_k @ down_k
        direct.append(float(np.einsum("i,ij,ij->", h, dw @ gram, dw)))
    # float64 both ways; the identity holds to rounding of the SVD (relative 1e-9 of the total)
    np.testing.assert_allclose(curve, direct, rtol=1e-9, atol=1e-9 * direct[0])
    assert np.all(np.diff(curve) <= 0)


def test_fisher_puts_units_where_output_fisher_is_large(rng):
    """Two identical projections; the loss gradient at the first one's output is ten times larger, so the
    K-FAC curves (and compress_weights' default search) give it more rank."""
    from palu_c import lowrank_factor
    from palu_c.weights import output_fisher_curve

    w = rng.standard_normal((48, 40))
    x = rng.standard_normal((300, 40))
    gram = x.T @ x
    cap = dense_break_even(48, 40, 4)
    _, up = lowrank_factor(w, cap, gram=gram)
    curves = [output_fisher_curve(w, up, gram, np.full(48, s), 4) for s in (10.0, 1.0)]
    ranks = allocate_projection_ranks([(48, 40)] * 2, 0.4, search="fisher", rank_multiple=4, loss_curves=curves)
    assert ranks[0] > ranks[1]


def test_fisher_loss_puts_units_where_they_save_most():
    # two equal projections; truncating the first costs ten times more loss per unit: it gets the rank
    flat = np.linspace(1.0, 0.0, 5)
    ranks = allocate_projection_ranks([(64, 64), (64, 64)], 0.5, search="fisher_loss", rank_multiple=4,
                                      loss_curves=[np.linspace(100.0, 0.0, 8), np.linspace(10.0, 0.0, 8)])
    assert ranks[0] > ranks[1] == 4
    with pytest.raises(ValueError, match="loss curve"):
        allocate_projection_ranks([(64, 64)], 0.5, search="fisher_loss", rank_multiple=4)
    with pytest.raises(ValueError, match="finite values"):
        allocate_projection_ranks([(64, 64)], 0.5, search="fisher_loss", rank_multiple=4, loss_curves=[flat])


def test_allocation_rules(rng):
    shapes = [(64, 48)] * 6
    scores = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.05])
    ranks = allocate_projection_ranks(shapes, 0.5, search="fisher_proportional", scores=scores, rank_multiple=1)
    order = np.argsort(scores)
    assert all(ranks[order[i]] <= ranks[order[i + 1]] for i in range(5))  # more important, more rank
    uni = allocate_projection_ranks(shapes, 0.5, search="uniform", rank_multiple=1)
    assert max(uni) - min(uni) <= 1  # the same kept fraction (up to one leftover unit)
    assert all(r is None for r in allocate_projection_ranks(shapes, 1.0, search="fisher_proportional",
                                                            scores=scores))
    assert allocate_projection_ranks([(8, 8), (64, 64)], 0.9, search="uniform", rank_multiple=16)[0] is None
    with pytest.raises(ValueError, match="floor"):
        allocate_projection_ranks(shapes, 0.01, search="fisher_proportional", scores=scores, rank_multiple=16)
    with pytest.raises(ValueError, match="scores"):
        allocate_projection_ranks(shapes, 0.5, search="fisher_proportional")
    with pytest.raises(ValueError, match="loss curve"):
        allocate_projection_ranks(shapes, 0.5, search="fisher", scores=scores)
    with pytest.raises(ValueError, match="spectrum"):
        allocate_projection_ranks(shapes, 0.5, search="greedy", scores=scores)


# ---------------------------------------------------------------- compress_weights end to end
@pytest.mark.parametrize("family, kw", [("llama", {}), ("qwen2", {}), ("mistral", dict(kv_heads=4))])
def test_ratio_one_reproduces_logits(rng, family, kw):
    base, calib = model_and_calib(rng, family, **kw)
    model = compress_weights(copy.deepcopy(base), calib, ratio=1.0, progress=False)
    assert not any(isinstance(m, LowRankLinear) for m in model.modules())
    ids = torch.as_tensor(rng.integers(0, 128, (2, 9)))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base(ids).logits)
    rep = parameter_report(model)
    assert rep["stored"] == rep["targeted"] == sum(m.weight.numel() for m in projections(base).values())


@pytest.mark.parametrize("search", ["fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss"])
@pytest.mark.parametrize("ratio", [0.45, 0.8])
def test_budget_and_counts_on_a_model(rng, search, ratio):
    base, calib = model_and_calib(rng, "qwen2", intermediate=96)
    model = compress_weights(copy.deepcopy(base), calib, ratio=ratio, search=search, rank_multiple=8,
                             progress=False)
    targeted = sum(m.weight.numel() for m in projections(base).values())
    stored = 0
    for name, mod in model.named_modules():
        if isinstance(mod, LowRankLinear):
            stored += mod.down.numel() + mod.up.numel()
            assert mod.rank % 8 == 0 and mod.rank >= 8
        elif name.rsplit(".", 1)[-1] in KINDS and isinstance(mod, torch.nn.Linear):
            stored += mod.weight.numel()
    budget = ratio * targeted
    rep = parameter_report(model)
    assert rep["stored"] == stored and rep["targeted"] == targeted
    assert stored <= budget
    unit = max(8 * (m.in_features + m.out_features) for m in projections(base).values())
    assert budget - stored < unit
    assert model.flrc_config.search == search and "stored" in summary(model)


def test_each_projection_is_the_whitened_optimum(rng):
    base, calib = model_and_calib(rng, "llama", dtype=torch.float64, n=8, seq=40, bias=True)
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.5, search="fisher", rank_multiple=4,
                             progress=False)
    xs = inputs_by_hook(base, calib)
    weights = {n: m.weight.detach().numpy() for n, m in projections(base).items()}
    checked = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, LowRankLinear):
            continue
        x, w = xs[name], weights[name]
        approx = mod.up.detach().numpy() @ mod.down.detach().numpy()
        err = np.linalg.norm(x @ (w - approx).T) ** 2
        s = np.linalg.svd(x @ w.T, compute_uv=False)
        optimum = float((s[mod.rank:] ** 2).sum())
        scale = float((s ** 2).sum())
        assert abs(err - optimum) <= 1e-9 * scale, (name, err, optimum)
        # the bias is kept exactly
        if mod.bias is not None:
            assert torch.equal(mod.bias, dict(base.named_modules())[name].bias)
        checked += 1
    assert checked >= 8


def test_factor_cache_gives_identical_models(rng):
    base, calib = model_and_calib(rng, "llama", bias=True)
    cache = {}
    ids = torch.as_tensor(rng.integers(0, 128, (2, 9)))
    for ratio, search in ((0.8, "fisher"), (0.5, "uniform"), (0.6, "fisher")):
        cached = compress_weights(copy.deepcopy(base), calib, ratio=ratio, search=search, rank_multiple=4,
                                  factor_cache=cache, progress=False)
        plain = compress_weights(copy.deepcopy(base), calib, ratio=ratio, search=search, rank_multiple=4,
                                 progress=False)
        with torch.no_grad():
            assert torch.equal(cached(ids).logits, plain(ids).logits)
    assert 0 < len(cache) <= len(projections(base))
    with pytest.raises(TypeError, match="factor_cache"):
        compress_weights(copy.deepcopy(base), calib, factor_cache=[], progress=False)


def test_generate_batch_greedy_and_sampling(rng):
    base, calib = model_and_calib(rng, "mistral")
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.6, rank_multiple=8, progress=False)
    ids = torch.as_tensor(rng.integers(1, 128, (3, 8)))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    with torch.no_grad():
        fast = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        slow = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=False)
        torch.manual_seed(int(rng.integers(1 << 30)))
        sampled = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True, top_p=0.9)
    assert torch.equal(fast, slow)
    assert sampled.shape[0] == 3 and int(sampled.max()) < 128


def test_explicit_ranks_path(rng):
    base, calib = model_and_calib(rng)
    names = list(projections(base))
    chosen = {names[0]: 16, names[-1]: 8}
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.99, ranks=chosen, rank_multiple=8, progress=False)
    got = {p.name: p.rank for p in model.flrc_config.projections if p.rank is not None}
    assert got == chosen and model.flrc_config.search == "explicit"
    for ranks, exc, match in [({"nope": 8}, ValueError, "unknown projections"),
                              ({names[0]: 12}, ValueError, "multiple of 8"),
                              ({names[0]: 8.0}, TypeError, "int or None"),
                              ({n: 8 for n in names}, None, None),
                              ([8], TypeError, "dict")]:
        if exc is None:
            continue
        with pytest.raises(exc, match=match):
            compress_weights(copy.deepcopy(base), calib, ratio=0.99, ranks=ranks, rank_multiple=8, progress=False)
    with pytest.raises(ValueError, match="over the ratio budget"):
        compress_weights(copy.deepcopy(base), calib, ratio=0.1, ranks={n: 16 for n in names}, rank_multiple=8,
                         progress=False)


# ---------------------------------------------------------------- with compress_kv, save/load
def test_with_compress_kv_save_load(rng, tmp_path):
    base, calib = model_and_calib(rng, "qwen2")
    model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=1, rank_multiple=8,
                               progress=False)
    kv_before = {n: p.detach().clone() for n, p in model.named_parameters() if "_down" in n or "_ups" in n}
    compress_weights(model, calib, ratio=0.6, rank_multiple=8, progress=False, progressive=[(3, 0.5)])
    kv_after = {n: p for n, p in model.named_parameters() if "_down" in n or "_ups" in n}
    assert kv_before.keys() == kv_after.keys() and all(torch.equal(kv_before[n], kv_after[n]) for n in kv_before)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, LowRankLinear) or attn.q_proj is not None
    kinds = {p.kind for p in model.flrc_config.projections}
    assert kinds == {"q", "o", "gate", "up", "down"} and len(model.flrc_config.skipped) == 4
    ids = torch.as_tensor(rng.integers(1, 128, (2, 6)))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    palu_c.save(model, tmp_path / "both")
    meta = json.loads((tmp_path / "both" / "palu_config.json").read_text())
    assert meta["format_version"] == 2 and meta["flrc"]["progressive"] == {k: [[3, 0.5]] for k in
                                                                           ("q", "o", "gate", "up", "down")}
    loaded = palu_c.load(tmp_path / "both")
    assert loaded.flrc_config.to_dict() == model.flrc_config.to_dict()
    assert loaded.palu_config.to_dict() == model.palu_config.to_dict()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
        assert torch.equal(loaded.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False), gen)
    # the reverse order and explicit Palu-owned targets are refused
    with pytest.raises(ValueError, match="apply compress_kv first"):
        palu_c.compress_kv(loaded, calib, progress=False)
    again = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.5, group_size=1, rank_multiple=8, progress=False)
    with pytest.raises(ValueError, match="belongs to compress_kv"):
        compress_weights(again, calib, targets=["q", "k"], progress=False)
    with pytest.raises(ValueError, match="already weight-compressed"):
        compress_weights(model, calib, progress=False)


def test_flrc_only_save_load_and_corruption(rng, tmp_path):
    base, calib = model_and_calib(rng, "llama", bias=True)
    model = compress_weights(copy.deepcopy(base), calib, ratio=0.5, rank_multiple=8, targets=["up", "down_proj"],
                             progressive=True, progress=False)
    assert {p.kind for p in model.flrc_config.projections} == {"up", "down"}
    palu_c.save(model, tmp_path / "w")
    loaded = palu_c.load(tmp_path / "w")
    assert getattr(loaded, "palu_config", None) is None
    ids = torch.as_tensor(rng.integers(1, 128, (2, 5)))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    for name, mod in loaded.named_modules():
        if isinstance(mod, LowRankLinear):
            assert mod.schedule == dict(model.named_modules())[name].schedule != ()
    meta = json.loads((tmp_path / "w" / "palu_config.json").read_text())
    meta["flrc"]["projections"][0]["name"] = "model.layers.0.mlp.nothing"
    (tmp_path / "w" / "palu_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not have"):
        palu_c.load(tmp_path / "w")
    with pytest.raises(ValueError, match="not compressed"):
        palu_c.save(base, tmp_path / "plain")


# ---------------------------------------------------------------- bad configurations
def test_bad_arguments(rng):
    base, calib = model_and_calib(rng)
    for kwargs, exc, match in [
        (dict(ratio=0.0), ValueError, "ratio"),
        (dict(ratio=1.5), ValueError, "ratio"),
        (dict(ratio=float("nan")), ValueError, "ratio"),
        (dict(ratio=True), ValueError, "ratio"),
        (dict(ratio=0.02), ValueError, "floor"),
        (dict(search="sweep"), ValueError, "search"),
        (dict(targets=[]), ValueError, "empty"),
        (dict(targets="q"), TypeError, "list of projection classes"),
        (dict(targets=["lm_head"]), ValueError, "unknown projection class"),
        (dict(rank_multiple=0), ValueError, "rank_multiple"),
        (dict(min_rank=-3), ValueError, "min_rank"),
        (dict(progressive=[(5, 0.5), (2, 0.4)]), ValueError, "strictly increasing"),
        (dict(progressive={"down": [(1, 0.5)]}, targets=["q"]), ValueError, "not compressed here"),
        (dict(progress="yes"), TypeError, "progress"),
    ]:
        with pytest.raises(exc, match=match):
            compress_weights(copy.deepcopy(base), calib, **kwargs)
    with pytest.raises(TypeError, match="int64"):
        compress_weights(copy.deepcopy(base), calib.float(), progress=False)


def test_unsupported_models():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64))
    with pytest.raises(ValueError, match="llama, mistral, qwen2"):
        compress_weights(gpt2, torch.zeros((1, 8), dtype=torch.long), progress=False)
    with pytest.raises(TypeError, match="causal LM"):
        compress_weights("model", torch.zeros((1, 8), dtype=torch.long), progress=False)


# ---------------------------------------------------------------- the real embedded model


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(not have_embedded_model(), reason="embedded model not installed (make install-model)")
def test_smollm2_after_compress_kv(tmp_path):
    """SmolLM2 (GQA 9/3 heads, 30 layers): Palu then FLRC on o/down, a schedule, batch generate, save/load."""
    from palu_c.models import load_model

    base, tok = load_model()
    calib = palu_c.calibration_tokens(tok, "palu_c/data/calibration_emma.txt", 2, 64, seed=3)
    model = palu_c.compress_kv(copy.deepcopy(base), calib, ratio=0.7, group_size=3, progress=False)
    compress_weights(model, calib, ratio=0.7, targets=["o", "down"], progressive=[(4, 0.5)], progress=False)
    rep = parameter_report(model, generated_tokens=12)
    assert rep["stored"] <= model.flrc_config.budget and rep["active"] < rep["stored"]
    assert len(model.flrc_config.projections) == 60
    enc = tok(["It is a truth universally acknowledged", "Emma Woodhouse, handsome,"], return_tensors="pt",
              padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    palu_c.save(model, tmp_path / "s")
    loaded = palu_c.load(tmp_path / "s")
    with torch.no_grad():
        again = loaded.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    assert torch.equal(out, again)
