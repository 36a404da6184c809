"""The interpolative key basis: half of a group's key coordinates stored as the latent itself.

Palu caches a key latent h = A x per head group and rebuilds the keys as K = U h (U: G*D x r). Any invertible
r x r matrix T can be folded into the factors, A' = T A and U' = U T^-1, without changing one rebuilt key in exact
arithmetic. Choosing T = U[S], the rows of U at r key coordinates S, makes U'[S] the identity: those r coordinates
of every key ARE the stored latent h' = T h, and a decode kernel needs to multiply only the other G*D - r rows
(half at ratio 0.5). The decode kernels' key rebuild is what bounds them on the G = 1 GQA and G = 2 shapes (run 167
in docs/design/latent_decode_notes.md: half the rebuild's MACs takes 8-20% off a call).

Which coordinates: RoPE rotates a head's coordinates in pairs (d, d + D/2) by one angle, so a kernel can rotate a
coordinate read from the latent only if its partner is there too. S is therefore a set of whole pairs, r/2 of the
group's G*D/2, chosen to keep T well conditioned (the stored latent's rounding error reaches the keys through
U T^-1): greedy block pivoting by the volume a pair adds, then pair swaps while one grows |det T| by more than a
factor ``SWAP_GAIN`` (block maxvol). On the embedded SmolLM2 at ratio 0.5 this costs a few times the current
basis's fp16 storage error, which is ~2e-4 of the keys (``python python/study_key_basis.py``).

Layout (what the kernels rely on, :func:`pair_layout` recovers it from U' alone): with the selected pairs sorted by
(head, frequency), latent coordinate i < r/2 is the lower member (head h, dim f) of pair i and coordinate r/2 + i its
upper member (h, f + D/2); U' has exactly the unit rows e_i and e_{r/2+i} there. Only for unquantized latents:
with ``bits`` the Hadamard rotation mixes the coordinates, and quantization error would be amplified as well.
"""

from __future__ import annotations

import numpy as np

SWAP_GAIN = 1.01  # a pair swap must grow |det T| by more than this factor
MAX_SWEEPS = 200  # swaps at most (each one grows the volume, so this only bounds pathological inputs)


def rope_pairs(rows: int, head_dim: int) -> np.ndarray:
    """(rows / 2, 2) row indices of the RoPE pairs (d, d + D/2) of every head of a group, by (head, frequency)."""
    half = head_dim // 2
    return np.array([(h * head_dim + f, h * head_dim + f + half)
                     for h in range(rows // head_dim) for f in range(half)], dtype=np.int64)


def _check(up: np.ndarray, head_dim: int, who: str) -> tuple[int, int]:
    if up.ndim != 2:
        raise ValueError(f"{who}: the key up-projection must be 2-D (G*D, r), got shape {up.shape}")
    rows, r = up.shape
    if head_dim < 2 or head_dim % 2 or rows % head_dim:
        raise ValueError(f"{who}: head_dim={head_dim} must be even and divide the group's {rows} key rows")
    if r % 2 or not 2 <= r <= rows:
        raise ValueError(f"{who}: the interpolative key basis needs an even rank between 2 and {rows} (whole RoPE "
                         f"pairs), got rank {r}")
    if not np.all(np.isfinite(up)):
        raise ValueError(f"{who}: the key up-projection holds NaN or Inf")
    return rows, r


def select_pairs(up: np.ndarray, head_dim: int, *, balanced: bool = False) -> np.ndarray:
    """The r/2 RoPE pairs (indices into :func:`rope_pairs`, sorted) whose rows of ``up`` make T best conditioned.

    ``balanced``: the same number of pairs from every head of the group (r/2 must divide by the group's heads), so
    that a kernel serving one head per warpgroup rebuilds the same share of each head (v11's layout)."""
    up = np.asarray(up, dtype=np.float64)
    rows, r = _check(up, head_dim, "select_pairs")
    pairs = rope_pairs(rows, head_dim)
    n_sel = r // 2
    heads = rows // head_dim
    head_of = np.arange(len(pairs)) // (head_dim // 2)
    if balanced and n_sel % heads:
        raise ValueError(f"select_pairs: a balanced selection needs rank / 2 = {n_sel} pairs to divide by the group's "
                         f"{heads} heads")
    quota = n_sel // heads if balanced else n_sel
    resid = up.copy()
    chosen: list[int] = []
    first_gain = None
    for _ in range(n_sel):  # greedy: the pair whose residual rows span the largest area (2 x 2 Gram determinant)
        a, b = resid[pairs[:, 0]], resid[pairs[:, 1]]
        aa, bb, ab = np.einsum("ij,ij->i", a, a), np.einsum("ij,ij->i", b, b), np.einsum("ij,ij->i", a, b)
        gain = aa * bb - ab * ab
        gain[chosen] = -np.inf
        if balanced:  # heads whose share is taken
            gain[np.isin(head_of, [h for h in range(heads) if np.sum(head_of[chosen] == h) >= quota])] = -np.inf
        p = int(np.argmax(gain))
        first_gain = gain[p] if first_gain is None else first_gain
        if not gain[p] > 1e-12 * first_gain:  # a pair adds no area beyond rounding: T would be singular
            raise ValueError("select_pairs: the key up-projection is rank-deficient on its RoPE pairs (no pair adds "
                             "volume); the interpolative key basis needs a full-rank factor")
        chosen.append(p)
        q, _ = np.linalg.qr(resid[pairs[p]].T)
        resid -= (resid @ q) @ q.T
    for _ in range(MAX_SWEEPS):  # block maxvol: swapping selected pair s for pair u scales |det T| by |det X[u, s]|
        sel = pairs[chosen].reshape(-1)  # rows (lo_0, hi_0, lo_1, hi_1, ...): X's columns 2s, 2s + 1 are pair s
        x = np.linalg.solve(up[sel].T, up.T).T  # X = U T^-1
        xu = x[pairs].reshape(len(pairs), 2, n_sel, 2)  # [pair u, its row, selected pair s, its column]
        det = np.abs(xu[:, 0, :, 0] * xu[:, 1, :, 1] - xu[:, 0, :, 1] * xu[:, 1, :, 0])
        det[chosen] = 0.0
        if balanced:  # a swap within one head keeps every head's share
            det[head_of[:, None] != head_of[np.array(chosen)][None, :]] = 0.0
        u, s = np.unravel_index(int(np.argmax(det)), det.shape)
        if det[u, s] <= SWAP_GAIN:
            break
        chosen[s] = int(u)
    return np.sort(np.array(chosen, dtype=np.int64))


def interpolative_factors(down: np.ndarray, up: np.ndarray, head_dim: int, *,
                          balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(T down, U T^-1) for one group in the layout above: the same keys, r coordinates stored as the latent
    (``balanced``: as many from every head, :func:`select_pairs`)."""
    down = np.asarray(down, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    rows, r = _check(up, head_dim, "interpolative_factors")
    if down.ndim != 2 or down.shape[0] != r:
        raise ValueError(f"interpolative_factors: down must be ({r}, in) for rank {r}, got shape {down.shape}")
    sel = rope_pairs(rows, head_dim)[select_pairs(up, head_dim, balanced=balanced)]
    order = np.concatenate([sel[:, 0], sel[:, 1]])  # lower members, then upper members
    t = up[order]
    new_up = np.linalg.solve(t.T, up.T).T
    new_up[order] = np.eye(r)  # exact unit rows (the solve leaves ~1e-16 residue): kernels recognize them
    return t @ down, new_up


def pair_layout(up: np.ndarray, head_dim: int) -> np.ndarray | None:
    """The selected pairs' indices (into :func:`rope_pairs`, in latent order) if ``up`` is in the interpolative
    layout, exactly (unit rows e_i and e_{r/2+i} at pair i's members); else None."""
    up = np.asarray(up)
    if up.ndim != 2 or up.shape[1] % 2 or head_dim < 2 or head_dim % 2 or up.shape[0] % head_dim:
        return None
    rows, r = up.shape
    pairs = rope_pairs(rows, head_dim)
    unit = (np.count_nonzero(up, axis=1) == 1) & (np.abs(up).max(axis=1) == 1) & (up.max(axis=1) == 1)
    col = np.argmax(up, axis=1)
    found = []
    for i in range(r // 2):
        lo = np.flatnonzero(unit & (col == i))
        hi = np.flatnonzero(unit & (col == r // 2 + i))
        if len(lo) != 1 or len(hi) != 1:
            return None
        match = np.flatnonzero((pairs[:, 0] == lo[0]) & (pairs[:, 1] == hi[0]))
        if len(match) != 1:
            return None
        found.append(int(match[0]))
    return np.array(found, dtype=np.int64)
