"""ASVD-style sensitivity sweep: the expensive baseline FLRC's Fisher search is compared against.

ASVD (Yuan et al. 2023) measures, for every projection alone and for a list of parameter ratios, the
perplexity of the model with only that projection truncated, then picks per-projection ratios with one
perplexity threshold: each projection takes its smallest ratio whose probe perplexity stays under the
threshold, and the threshold is the lowest one whose choice fits the parameter budget. Ours, in the same
code path as FLRC (results go through ``palu_c.compress_weights(ranks=...)``):

- Factorization: the whitened pair of every projection at its largest useful rank, once
  (``palu_c.weights.whitened_factors`` with a shared cache); a probe at kept fraction f uses the prefix of
  rank ``floor(f * m n / (m + n))`` rounded down to ``rank_multiple``.
- Probes: perplexity on a short probe set (``probe_ids``, calibration text, not evaluation text). Decoder
  layers before the probed one are not affected by it, so their outputs are computed once and each probe
  runs only from the probed layer on (layers i..L-1, final norm, LM head): the same numbers as a full
  forward (checked before sweeping), at ~60% of its cost on average. Every probe is counted in the
  reported wall time.
- Choice: perplexity is interpolated linearly in the kept fraction between the probed fractions and 1.0 (the
  uncompressed perplexity) on a grid of step ``grid`` from the smallest probed fraction; ASVD's threshold
  rule picks the fractions; the budget left over (the grid is coarse) is spent in rank units, most
  sensitive projection first, round robin, so every method stores the same number of parameters to within
  one unit.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from palu_c.lowrank_linear import LowRankLinear
from palu_c.weights import dense_break_even, find_projections, parse_targets, whitened_factors


class LayerProbe:
    """Perplexity of ``probe_ids`` computed from decoder layer i on, with the inputs of every layer cached."""

    def __init__(self, model, probe_ids: torch.Tensor):
        self.model = model
        self.ids = probe_ids
        layers = model.model.layers
        self.inputs: list = [None] * len(layers)
        handles = []
        for i, layer in enumerate(layers):
            def hook(_m, args, kwargs, i=i):
                hidden = args[0] if args else kwargs["hidden_states"]
                rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                self.inputs[i] = (hidden.detach().clone(), rest)

            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                self.full = self._ppl(model(probe_ids, use_cache=False).logits)
        finally:
            for h in handles:
                h.remove()

    def _ppl(self, logits: torch.Tensor) -> float:
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 self.ids[:, 1:].reshape(-1))
        return math.exp(float(loss))

    @torch.no_grad()
    def from_layer(self, i: int) -> float:
        hidden, kwargs = self.inputs[i]
        for layer in self.model.model.layers[i:]:
            hidden = layer(hidden, **kwargs)
        return self._ppl(self.model.lm_head(self.model.model.norm(hidden)))


def probe_rank(m: int, n: int, fraction: float, multiple: int) -> int:
    """Rank that keeps ``fraction`` of an (m, n) weight, rounded down to ``multiple`` (at least one)."""
    return max(multiple, int(fraction * m * n / (m + n) / multiple) * multiple)


def sweep(model, probe_ids, stats, *, fractions=(0.4, 0.7), rank_multiple=16, factor_cache=None,
          progress=True) -> dict:
    """Probe every projection at every kept fraction. Returns ``{"base": ppl, "ppl": {name: {f: ppl}},
    "shapes": {name: (m, n)}, "seconds": wall time incl. factorization, "factor_seconds", "probes"}``."""
    t0 = time.perf_counter()
    found, skipped = find_projections(model, parse_targets(None))
    probe = LayerProbe(model, probe_ids)
    check = probe.from_layer(0)
    if abs(check - probe.full) > 1e-4 * probe.full:
        raise RuntimeError(f"layer-wise probe disagrees with the full model: {check} vs {probe.full}")
    factors = {}
    for name, kind, i, parent, attr, mod in tqdm(found, desc="sweep: factorizing", disable=not progress):
        cap = dense_break_even(mod.out_features, mod.in_features, rank_multiple)
        w = mod.weight.detach().double().cpu().numpy()
        factors[name] = whitened_factors(w, cap, stats.gram_for(name).numpy(), cache=factor_cache,
                                         key=(name, stats.cache_keys.get("gram")), cap=cap)
    t_factor = time.perf_counter() - t0
    out = {name: {} for name, *_ in found}
    n_probes = 0
    for name, kind, i, parent, attr, mod in tqdm(found, desc="sweep: probing", disable=not progress):
        down, up = factors[name]
        cap = down.shape[0]
        for f in fractions:
            r = min(cap, probe_rank(mod.out_features, mod.in_features, f, rank_multiple))
            low = LowRankLinear.from_factors(down[:r], up[:, :r], mod.bias, dtype=mod.weight.dtype,
                                             device=mod.weight.device)
            setattr(parent, attr, low)
            try:
                out[name][f] = probe.from_layer(i)
            finally:
                setattr(parent, attr, mod)
            n_probes += 1
    return {"base": probe.full, "ppl": out, "probes": n_probes, "seconds": time.perf_counter() - t0,
            "factor_seconds": t_factor,
            "shapes": {name: (mod.out_features, mod.in_features) for name, *_, mod in found}}


def choose_ranks(result: dict, ratio: float, *, rank_multiple=16, grid=0.05) -> dict:
    """ASVD's threshold rule under the ``ratio`` budget, then leftover units; ``{name: rank or None}``."""
    base = result["base"]
    shapes = result["shapes"]
    names = list(shapes)
    budget = ratio * sum(m * n for m, n in shapes.values())
    cands = {}
    for name in names:
        m, n = shapes[name]
        cap = dense_break_even(m, n, rank_multiple)
        pts = sorted(result["ppl"][name].items()) + [(1.0, base)]
        fs, ps = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        options = [(m * n, base, None)]  # dense
        if cap >= rank_multiple:
            for f in np.arange(fs[0], 1.0 + 1e-9, grid):
                r = probe_rank(m, n, float(f), rank_multiple)
                if r <= cap:
                    options.append((r * (m + n), float(np.interp(f, fs, ps)), r))
        cands[name] = sorted(set(options), key=lambda o: (o[0], o[1]))

    def pick(tau):
        chosen = {}
        for name in names:
            ok = [o for o in cands[name] if o[1] <= tau]
            chosen[name] = min(ok, key=lambda o: o[0]) if ok else max(cands[name], key=lambda o: o[0])
        return chosen

    taus = sorted({o[1] for c in cands.values() for o in c} | {base})
    lo, hi = 0, len(taus) - 1
    if sum(o[0] for o in pick(taus[hi]).values()) > budget:
        raise ValueError(f"ratio {ratio} is below what the probed fractions reach; probe smaller fractions")
    while lo < hi:  # smallest threshold whose choice fits
        mid = (lo + hi) // 2
        if sum(o[0] for o in pick(taus[mid]).values()) <= budget:
            hi = mid
        else:
            lo = mid + 1
    chosen = pick(taus[lo])
    ranks = {name: chosen[name][2] for name in names}
    left = budget - sum(o[0] for o in chosen.values())
    order = sorted((n for n in names if ranks[n] is not None), key=lambda n: -(chosen[n][1] - base))
    grew = True
    while grew:
        grew = False
        for name in order:
            m, n = shapes[name]
            step = rank_multiple * (m + n)
            if ranks[name] + rank_multiple <= dense_break_even(m, n, rank_multiple) and step <= left:
                ranks[name] += rank_multiple
                left -= step
                grew = True
    return ranks
