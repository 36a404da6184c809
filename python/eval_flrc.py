"""FLRC weight compression on the embedded SmolLM2-135M: Fisher per-projection ranks vs uniform ranks vs an
ASVD-style sensitivity sweep (perplexity, search wall time, decoding fidelity by ROUGE-L), and progressive
low-rank decoding at equal average active parameters.

Calibration: Emma (64 windows x 512 tokens); perplexity: Pride and Prejudice (32 non-overlapping windows x 512
tokens, from the start); decoding fidelity: 50 prompts of 32-64 tokens cut from Pride and Prejudice AFTER the
perplexity windows, greedy 128-token continuations of each compressed model scored with ROUGE-L (F1, package
rouge-score) against the uncompressed model's continuations, batched with left padding. The sweep probes
every projection alone on a short probe set from the calibration text (``--probe-samples`` x
``--probe-len`` tokens, ``--fractions`` kept fractions). All methods go through palu_c.compress_weights
(the sweep's choice through ``ranks=``) and store the same parameters to within one rank unit.

Search wall time: Fisher = the Fisher pass (one forward and one backward per calibration sample, timed when
computed; the statistics cache keeps the time) + ``flrc_config.search_seconds`` (reading the cached statistics,
copying the weights to float64, allocating ranks); uniform = ``search_seconds`` only; sweep = factorizing
every projection for its probes + all probes + the choice. The Gram pass (whitening) is needed by
every method and is reported once.

Run:  OPENBLAS_NUM_THREADS=1 python python/eval_flrc.py --out python/results/eval_flrc_smollm2.md
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import math
import time
import warnings

import numpy as np
import torch
from report import add_corpus_arguments, emit
from tqdm.auto import tqdm

import palu_c
from palu_c.lowrank_linear import LowRankLinear
from palu_c.models import EMBEDDED_NAME, load_model
from palu_c.weights import (collect_projection_statistics, compress_weights, dense_break_even, find_projections,
                            parameter_report, parse_targets, whitened_factors)

AGGRESSIVE = [(16, 0.75), (64, 0.5)]


# ------------------------------------------------------------------------------------------------------------
# ASVD-style sensitivity sweep: the expensive baseline FLRC's Fisher search is compared against.
#
# ASVD (Yuan et al. 2023) measures, for every projection alone and for a list of parameter ratios, the
# perplexity of the model with only that projection truncated, then picks per-projection ratios with one
# perplexity threshold: each projection takes its smallest ratio whose probe perplexity stays under the
# threshold, and the threshold is the lowest one whose choice fits the parameter budget. Ours, in the same
# code path as FLRC (results go through ``palu_c.compress_weights(ranks=...)``):
#
# - Factorization: the whitened pair of every projection at its largest useful rank, once
#   (``palu_c.weights.whitened_factors`` with a shared cache); a probe at kept fraction f uses the prefix of
#   rank ``floor(f * m n / (m + n))`` rounded down to ``rank_multiple``.
# - Probes: perplexity on a short probe set (``probe_ids``, calibration text, not evaluation text). Decoder
#   layers before the probed one are not affected by it, so their outputs are computed once and each probe
#   runs only from the probed layer on (layers i..L-1, final norm, LM head): the same numbers as a full
#   forward (checked before sweeping), at ~60% of its cost on average. Every probe is counted in the
#   reported wall time.
# - Choice: perplexity is interpolated linearly in the kept fraction between the probed fractions and 1.0 (the
#   uncompressed perplexity) on a grid of step ``grid`` from the smallest probed fraction; ASVD's threshold
#   rule picks the fractions; the budget left over (the grid is coarse) is spent in rank units, most
#   sensitive projection first, round robin, so every method stores the same number of parameters to within
#   one unit.
# ------------------------------------------------------------------------------------------------------------


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


def prompts_from(tok, text, start_token, n, rng):
    """n prompts of 32-64 tokens from the text after ``start_token``, evenly spaced."""
    ids = tok(text, return_tensors="pt").input_ids[0][start_token:]
    step = (ids.numel() - 64) // n
    out = []
    for k in range(n):
        length = int(rng.integers(32, 65))
        out.append(ids[k * step:k * step + length])
    return out


def generate(model, prompts, pad_id, new_tokens, eos_id):
    """Greedy continuations (token lists, cut at EOS), one left-padded batch."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - p.numel():] = p
        mask[i, width - p.numel():] = 1
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=pad_id)
    conts = []
    for row in out[:, width:].tolist():
        conts.append(row[:row.index(eos_id)] if eos_id in row else row)
    return conts


def rouge_l(refs, cands, tok):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return np.array([scorer.score(tok.decode(r, skip_special_tokens=True), tok.decode(c, skip_special_tokens=True))
                     ["rougeL"].fmeasure for r, c in zip(refs, cands)])


def mean_se(x) -> str:
    """'mean ± standard error of the mean' of per-prompt scores (or of paired differences)."""
    x = np.asarray(x, dtype=np.float64)
    return f"{x.mean():.4f} ± {x.std(ddof=1) / np.sqrt(x.size):.4f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_corpus_arguments(parser)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.9, 0.8, 0.7, 0.6])
    parser.add_argument("--methods", nargs="+", default=["fisher", "fisher_proportional", "uniform", "sweep"],
                        choices=["fisher", "fisher_proportional", "uniform", "greedy", "fisher_loss", "sweep"])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--probe-samples", type=int, default=4)
    parser.add_argument("--probe-len", type=int, default=256)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.4, 0.7])
    parser.add_argument("--progressive", nargs="*", default=["0.9:default", "0.9:aggressive", "0.8:default"],
                        help="stored ratio:schedule pairs (fisher), schedule in {default, aggressive}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/palu_c"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore", palu_c.WhiteningWarning)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = "python python/eval_flrc.py " + " ".join(sys.argv[1:])

    base, tok = load_model()
    calib = palu_c.calibration_tokens(tok, args.calib_file, args.calib_samples, args.seq_len, seed=0)
    eval_text = open(args.eval_file, encoding="utf-8").read()
    rng = np.random.default_rng(0)
    prompts = prompts_from(tok, eval_text, args.eval_windows * args.seq_len, args.prompts, rng)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    t_start = time.perf_counter()

    def ppl(model):
        return palu_c.eval.perplexity(model, tok, eval_text, seq_len=args.seq_len, max_windows=args.eval_windows)

    # Statistics: the Fisher pass and the Gram pass separately, each timed when it is computed.
    st_f = collect_projection_statistics(base, calib, grams=False, fisher=True, cache_dir=args.cache_dir)
    st_g = collect_projection_statistics(base, calib, grams=True, fisher=False, cache_dir=args.cache_dir)
    fisher_s, gram_s = st_f.seconds["fisher"], st_g.seconds["gram"]
    print(f"Fisher pass {fisher_s:.0f} s, Gram pass {gram_s:.0f} s", flush=True)
    diag_s = None
    if "fisher_loss" in args.methods:  # the element-Fisher pass, timed on its own too
        diag_s = collect_projection_statistics(base, calib, grams=False, fisher=False, fisher_diag=True,
                                               cache_dir=args.cache_dir).seconds["fisher_diag"]
    factor_cache: dict = {}

    t = time.perf_counter()
    base_ppl = ppl(base)
    ref = generate(base, prompts, pad, args.new_tokens, eos)
    print(f"baseline ppl {base_ppl:.3f} ({time.perf_counter() - t:.0f} s incl. reference generation)", flush=True)

    sweep_result = None
    if "sweep" in args.methods:
        probe_ids = palu_c.calibration_tokens(tok, args.calib_file, args.probe_samples, args.probe_len, seed=1)
        sweep_result = sweep(base, probe_ids, st_g, fractions=tuple(args.fractions), factor_cache=factor_cache)
        print(f"sweep: {sweep_result['probes']} probes, {sweep_result['seconds']:.0f} s", flush=True)

    rows, prog_rows = [], []

    def report():
        lines = ["# FLRC weight compression on SmolLM2-135M-Instruct", "",
                 f"Model: {EMBEDDED_NAME}, float32, CPU ({args.threads} thread(s), 2-core shared machine). "
                 f"Calibration: {args.calib_samples} x {args.seq_len} tokens of {os.path.basename(args.calib_file)}; "
                 f"perplexity: {args.eval_windows} x {args.seq_len} tokens of {os.path.basename(args.eval_file)}; "
                 f"ROUGE-L: {args.prompts} prompts (32-64 tokens, from that book after the perplexity windows), "
                 f"greedy {args.new_tokens}-token continuations vs the uncompressed model's. Targets: all q, k, v, o, "
                 f"gate, up, down projections (210); `ratio` = fraction of their parameters kept; ranks multiples "
                 f"of 16.", "",
                 f"Command: `OPENBLAS_NUM_THREADS=1 {command}`".rstrip(), "",
                 f"Uncompressed: perplexity {base_ppl:.3f}. Gram pass (whitening, needed by every method): "
                 f"{gram_s:.0f} s. Fisher pass (one forward + one backward per calibration sample): {fisher_s:.0f} s."
                 + ("" if diag_s is None else f" Element-Fisher pass (fisher_loss): {diag_s:.0f} s."),
                 "", "ROUGE-L: mean F1 over the prompts ± its standard error; the paired column is the mean per-prompt "
                 "difference to the uniform row of the same ratio ± its standard error (|mean| < 2 SE: not "
                 "resolved by this prompt set)."]
        if sweep_result is not None:
            lines.append(f"Sensitivity sweep: {sweep_result['probes']} probes ({len(sweep_result['shapes'])} "
                         f"projections x kept fractions {args.fractions}) on {args.probe_samples} x "
                         f"{args.probe_len} calibration tokens, each probe run from the probed layer on, on the "
                         f"CPU; {sweep_result['factor_seconds']:.0f} s of it factorizing. Probe perplexity of the "
                         f"uncompressed model: {sweep_result['base']:.3f}.")
        lines += ["", "## Perplexity, search cost, decoding fidelity", "",
                  "| ratio | search | stored params | stored / targeted | ppl | ROUGE-L | vs uniform (paired) | "
                  "search time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            uni = next((u for u in rows if u["ratio"] == r["ratio"] and u["method"] == "uniform"), None)
            paired = "-" if uni is None or uni is r else mean_se(r["rouge"] - uni["rouge"])
            lines.append(f"| {r['ratio']} | {r['method']} | {r['stored']:,} | {r['stored_ratio']:.1%} | "
                         f"{r['ppl']:.3f} | {mean_se(r['rouge'])} | {paired} | {r['search_s']:.0f} |")
        if prog_rows:
            lines += ["", "## Progressive low-rank decoding at equal average active parameters", "",
                      f"Average active parameters over a {args.new_tokens}-token generation (the prefill at full "
                      f"stored rank, then one decode step per token; `palu_c.weights.parameter_report`). "
                      f"`default` = {list(palu_c.progressive.DEFAULT_SCHEDULE)}, `aggressive` = {AGGRESSIVE} "
                      f"(tokens generated, keep fraction) for every projection class. Each progressive model is "
                      f"compared with a Fisher model whose STORED ratio equals the progressive model's average "
                      f"ACTIVE ratio (perplexity is a prefill-only measure, so a progressive model's perplexity is "
                      f"that of its stored ranks).", "",
                      "| model | stored / targeted | avg active / targeted | ppl | ROUGE-L | progressive - flat "
                      "(paired) |", "|---|---|---|---|---|---|"]
            for k, r in enumerate(prog_rows):
                paired = mean_se(r["rouge"] - prog_rows[k + 1]["rouge"]) if k % 2 == 0 and k + 1 < len(prog_rows) \
                    else "-"
                lines.append(f"| {r['name']} | {r['stored_ratio']:.1%} | {r['active_ratio']:.1%} | {r['ppl']:.3f} | "
                             f"{mean_se(r['rouge'])} | {paired} |")
        lines += ["", f"Total wall time so far: {time.perf_counter() - t_start:.0f} s."]
        emit(lines, args.out)

    def run(ratio, method, progressive=None):
        t0 = time.perf_counter()
        kw = dict(ratio=ratio, progress=False, cache_dir=args.cache_dir, factor_cache=factor_cache,
                  progressive=progressive)
        if method == "sweep":
            t_choice = time.perf_counter()
            ranks = choose_ranks(sweep_result, ratio)
            search_s = sweep_result["seconds"] + time.perf_counter() - t_choice
            model = compress_weights(copy.deepcopy(base), calib, ranks=ranks, **kw)
        else:
            model = compress_weights(copy.deepcopy(base), calib, search=method, **kw)
            # allocation (statistics come from the cache) + the Fisher pass where the method needs it
            uses_fisher = method in ("fisher", "fisher_proportional", "greedy")
            search_s = model.flrc_config.search_seconds + (fisher_s if uses_fisher else 0.0) \
                + (diag_s if method == "fisher_loss" else 0.0)
        compress_s = time.perf_counter() - t0
        return model, search_s, compress_s

    for ratio in args.ratios:
        for method in args.methods:
            model, search_s, compress_s = run(ratio, method)
            rep = parameter_report(model)
            row = dict(ratio=ratio, method=method, stored=rep["stored"], stored_ratio=rep["stored_ratio"],
                       ppl=ppl(model), search_s=search_s)
            row["rouge"] = rouge_l(ref, generate(model, prompts, pad, args.new_tokens, eos), tok)
            rows.append(row)
            print(f"{ratio} {method}: ppl {row['ppl']:.3f}, ROUGE-L {mean_se(row['rouge'])}, search {search_s:.1f} s, "
                  f"compress {compress_s:.0f} s", flush=True)
            report()
            del model

    for spec in args.progressive:
        ratio_s, sched_name = spec.split(":")
        ratio = float(ratio_s)
        sched = True if sched_name == "default" else AGGRESSIVE
        model, _, _ = run(ratio, "fisher", progressive=sched)
        rep = parameter_report(model, generated_tokens=args.new_tokens)
        prog = dict(name=f"fisher {ratio} + {sched_name} schedule", stored_ratio=rep["stored_ratio"],
                    active_ratio=rep["active_ratio"], ppl=ppl(model))
        prog["rouge"] = rouge_l(ref, generate(model, prompts, pad, args.new_tokens, eos), tok)
        prog_rows.append(prog)
        del model
        same = round(rep["active"] / rep["targeted"], 4)
        model, _, _ = run(same, "fisher")
        rep2 = parameter_report(model, generated_tokens=args.new_tokens)
        flat = dict(name=f"fisher {same} (no schedule, equal active)", stored_ratio=rep2["stored_ratio"],
                    active_ratio=rep2["active_ratio"], ppl=ppl(model))
        flat["rouge"] = rouge_l(ref, generate(model, prompts, pad, args.new_tokens, eos), tok)
        prog_rows.append(flat)
        print(f"{prog['name']}: ROUGE-L {mean_se(prog['rouge'])}; {flat['name']}: {mean_se(flat['rouge'])}",
              flush=True)
        report()
        del model
    report()


if __name__ == "__main__":
    main()
