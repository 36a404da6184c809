"""Tests of palu_c._C.latent_decode_attention (csrc/latent_attention.c, csrc/py_latent_attention.c): one decode
step of attention over a latent KV cache, the scalar CPU reference of the future CUDA kernel.

The file opens with an independent NumPy float64 reference that does it the plain way: rebuild the full keys
and values of every cached slot from the latents (K = latent @ up^T + bias, V likewise, per head group),
apply RoPE with rotate_half, repeat KV heads for GQA, mask the left padding, softmax, weighted sum of V. It
does not use the code's folded-value shortcut. No torch here: this file runs under AddressSanitizer.

Tolerance (stated, not tuned): |out - ref| <= atol + rtol * |ref| with rtol = 1e-4, atol = 1e-5. The code
does float32 arithmetic (dot products of up to 192 terms for keys, D = 64 terms for scores, one rounding per
float32 cos/sin): each float32 result carries a relative error of at most n * eps32 / 2 ~ 192 * 6e-8 ~ 1.2e-5
in the worst case and ~sqrt(n) * eps32 ~ 1e-6 typically; inputs are drawn so that keys, queries and logits are
O(1) (up-projections scaled by 1/sqrt(rank)), so those errors stay well under 1e-4 relative and outputs
that average to small magnitudes are covered by atol = 1e-5 (about 100 x eps32).
"""

from __future__ import annotations

import numpy as np
import pytest

import palu_c
from memory_growth import assert_no_growth

_C = palu_c._C
RTOL, ATOL = 1e-4, 1e-5


# ---- independent reference ------------------------------------------------------------------------------


def ref_rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate((-x[..., half:], x[..., :half]), axis=-1)


def ref_decode_attention(q, k_latent, v_latent, positions, pad_start, k_ups, v_ups, group_size, inv_freq,
                         attention_scaling, scaling, k_bias=None, v_bias=None) -> np.ndarray:
    """Float64 reference: full K and V per slot, RoPE, GQA repeat, masked softmax attention. Returns (B, H, D)."""
    q = q.astype(np.float64)
    B, H, D = q.shape
    T = k_latent.shape[1]
    Hkv = len(k_ups) * group_size

    def rebuild(latent, ups, bias):
        parts, off = [], 0
        for u in ups:
            r = u.shape[1]
            parts.append(latent[..., off:off + r].astype(np.float64) @ u.astype(np.float64).T)
            off += r
        full = np.concatenate(parts, axis=-1)  # (B, T, Hkv*D)
        if bias is not None:
            full = full + bias.astype(np.float64)
        return full.reshape(B, T, Hkv, D)

    keys = rebuild(k_latent, k_ups, k_bias)
    values = rebuild(v_latent, v_ups, v_bias)
    angles = positions.astype(np.float64)[..., None] * inv_freq.astype(np.float64)  # (B, T, D/2)
    emb = np.concatenate((angles, angles), axis=-1)
    cos = (np.cos(emb) * attention_scaling)[:, :, None, :]
    sin = (np.sin(emb) * attention_scaling)[:, :, None, :]
    keys = keys * cos + ref_rotate_half(keys) * sin
    n_rep = H // Hkv
    keys = np.repeat(keys, n_rep, axis=2)  # (B, T, H, D): query head h reads KV head h // n_rep
    values = np.repeat(values, n_rep, axis=2)
    scores = np.einsum("bhd,bthd->bht", q, keys) * scaling
    pad = np.arange(T)[None, :] < np.asarray(pad_start)[:, None]  # (B, T)
    scores = np.where(pad[:, None, :], -np.inf, scores)
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bht,bthd->bhd", p, values)


# ---- inputs ---------------------------------------------------------------------------------------------


def hf_inv_freq(D: int, base: float = 10000.0) -> np.ndarray:
    return (1.0 / base ** (np.arange(0, D, 2, dtype=np.float64) / D)).astype(np.float32)


def make_case(rng, B, Hkv, n_rep, D, G, T, bias, ranks_k=None, ranks_v=None, pad_start=None):
    NG = Hkv // G
    cands = [r for r in (1, 7, 16, 32, 48, G * D) if r <= G * D]

    def draw_ranks():
        # distinct ranks per group where the candidates allow, full rank G*D among them in some draws
        return [int(r) for r in np.resize(rng.permutation(cands), NG)]

    ranks_k = ranks_k or draw_ranks()
    ranks_v = ranks_v or draw_ranks()
    f32 = np.float32
    k_ups = [(rng.standard_normal((G * D, r)) / np.sqrt(r)).astype(f32) for r in ranks_k]
    v_ups = [(rng.standard_normal((G * D, r)) / np.sqrt(r)).astype(f32) for r in ranks_v]
    k_latent = rng.standard_normal((B, T, sum(ranks_k))).astype(f32)
    v_latent = rng.standard_normal((B, T, sum(ranks_v))).astype(f32)
    if pad_start is None:
        pad_start = rng.integers(0, T, size=B).astype(np.int32)
        pad_start[0] = 0  # one sequence without padding, the others random (T - 1 = only the newest slot)
        if B > 2:
            pad_start[-1] = T - 1
    pad_start = np.asarray(pad_start, dtype=np.int32)
    positions = np.empty((B, T), dtype=np.int32)
    for b in range(B):
        start = int(rng.integers(0, 5000))  # prompt offset: large angles exercise the phase accuracy
        positions[b] = start + np.arange(T) - pad_start[b]
        positions[b, :pad_start[b]] = -1  # padding slots may hold anything: never read
        # padding latents far from the others: attending them by mistake would move the output a lot
        k_latent[b, :pad_start[b]] = 1e3
        v_latent[b, :pad_start[b]] = -1e3
    args = dict(
        q=rng.standard_normal((B, Hkv * n_rep, D)).astype(f32),
        k_latent=k_latent, v_latent=v_latent, positions=positions, pad_start=pad_start,
        k_ups=k_ups, v_ups=v_ups, group_size=G, inv_freq=hf_inv_freq(D),
        attention_scaling=float(rng.uniform(0.5, 1.5)), scaling=D ** -0.5,
    )
    if bias:
        args["k_bias"] = (0.5 * rng.standard_normal(Hkv * D)).astype(f32)
        args["v_bias"] = (0.5 * rng.standard_normal(Hkv * D)).astype(f32)
    return args


def check_close(out, ref):
    assert out.dtype == np.float32 and out.shape == ref.shape
    err = np.abs(out.astype(np.float64) - ref)
    bound = ATOL + RTOL * np.abs(ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"max excess at {worst}: |{out[worst]} - {ref[worst]}| = {err[worst]:.3e} > {bound[worst]:.3e}"


# ---- correctness ----------------------------------------------------------------------------------------

HKV_G = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 3)]  # every divisor G of Hkv in {1, 2, 3}


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [1, 7, 129])
@pytest.mark.parametrize("D", [16, 64])
@pytest.mark.parametrize("n_rep", [1, 3])
@pytest.mark.parametrize("Hkv,G", HKV_G)
@pytest.mark.parametrize("B", [1, 3])
def test_matches_reference(rng, B, Hkv, G, n_rep, D, T, bias):
    args = make_case(rng, B, Hkv, n_rep, D, G, T, bias)
    out = _C.latent_decode_attention(**args)
    check_close(out, ref_decode_attention(**args))


def test_full_rank_distinct_groups(rng):
    # two groups, one at full rank G*D and one at a low rank, with GQA and biases
    args = make_case(rng, 2, 4, 2, 64, 2, 19, True, ranks_k=[128, 16], ranks_v=[48, 128])
    check_close(_C.latent_decode_attention(**args), ref_decode_attention(**args))


def test_identity_up_projection_single_slot_returns_value_latent(rng):
    # G = 1, rank D, identity up-projections, one slot: softmax of one score is exactly 1, so out = hv exactly
    B, Hkv, D = 2, 3, 16
    eye = np.eye(D, dtype=np.float32)
    args = dict(q=rng.standard_normal((B, Hkv, D)).astype(np.float32),
                k_latent=rng.standard_normal((B, 1, Hkv * D)).astype(np.float32),
                v_latent=rng.standard_normal((B, 1, Hkv * D)).astype(np.float32),
                positions=np.array([[5], [0]], dtype=np.int32), pad_start=np.zeros(B, np.int32),
                k_ups=[eye] * Hkv, v_ups=[eye] * Hkv, group_size=1, inv_freq=hf_inv_freq(D),
                attention_scaling=1.0, scaling=D ** -0.5)
    out = _C.latent_decode_attention(**args)
    np.testing.assert_array_equal(out, args["v_latent"].reshape(B, Hkv, D))


def test_padding_slots_are_never_read(rng):
    args = make_case(rng, 3, 2, 2, 16, 1, 7, True, pad_start=[3, 0, 6])
    out = _C.latent_decode_attention(**args)
    for name in ("k_latent", "v_latent"):
        args[name] = args[name].copy()
        args[name][0, :3] = rng.standard_normal(args[name][0, :3].shape)
        args[name][2, :6] = rng.standard_normal(args[name][2, :6].shape)
    args["positions"] = args["positions"].copy()
    args["positions"][0, :3] = 12345
    np.testing.assert_array_equal(_C.latent_decode_attention(**args), out)


def test_gqa_query_heads_share_their_kv_head(rng):
    # identical queries on the n_rep heads of one KV head give identical outputs
    args = make_case(rng, 1, 2, 3, 16, 2, 7, False)
    args["q"][:, 1] = args["q"][:, 0]
    args["q"][:, 4] = args["q"][:, 3]
    out = _C.latent_decode_attention(**args)
    np.testing.assert_array_equal(out[:, 1], out[:, 0])
    np.testing.assert_array_equal(out[:, 4], out[:, 3])
    assert not np.array_equal(out[:, 3], out[:, 0])  # different KV heads


def test_non_contiguous_inputs(rng):
    args = make_case(rng, 3, 2, 3, 16, 2, 7, True)
    ref = ref_decode_attention(**args)
    nc = dict(args)
    nc["q"] = np.ascontiguousarray(args["q"].transpose(1, 0, 2)).transpose(1, 0, 2)
    nc["k_latent"] = np.repeat(args["k_latent"], 2, axis=2)[:, :, ::2]
    nc["v_latent"] = np.asfortranarray(args["v_latent"])
    nc["positions"] = np.asfortranarray(args["positions"])
    nc["pad_start"] = np.repeat(args["pad_start"], 2)[::2]
    nc["k_ups"] = [np.asfortranarray(u) for u in args["k_ups"]]
    nc["v_ups"] = tuple(np.repeat(u, 2, axis=1)[:, ::2] for u in args["v_ups"])
    nc["inv_freq"] = np.repeat(args["inv_freq"], 2)[::2]
    nc["k_bias"] = np.repeat(args["k_bias"], 2)[1::2]
    for name in ("q", "k_latent", "v_latent", "positions", "pad_start", "inv_freq", "k_bias"):
        assert not nc[name].flags.c_contiguous, name
    check_close(_C.latent_decode_attention(**nc), ref)
    np.testing.assert_array_equal(_C.latent_decode_attention(**nc), _C.latent_decode_attention(**args))


def test_positional_arguments_and_result_is_fresh(rng):
    a = make_case(rng, 1, 1, 1, 16, 1, 7, True)
    out = _C.latent_decode_attention(a["q"], a["k_latent"], a["v_latent"], a["positions"], a["pad_start"],
                                     a["k_ups"], a["v_ups"], a["group_size"], a["inv_freq"],
                                     a["attention_scaling"], a["scaling"], a["k_bias"], a["v_bias"])
    assert out.flags.c_contiguous and out.flags.owndata and out.shape == (1, 1, 16)
    check_close(out, ref_decode_attention(**a))


# ---- bad inputs -----------------------------------------------------------------------------------------


class _FakeCudaTensor:
    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise AssertionError("device data must never be read on the CPU path")


def _bad_cases(a):
    """(argument, replacement value, exception, message fragment) for every argument of the binding."""
    f64 = np.float64
    B, H, D = a["q"].shape
    T = a["k_latent"].shape[1]
    nan_q = a["q"].copy()
    nan_q[0, 0, 0] = np.nan
    neg_pos = a["positions"].copy()
    neg_pos[0, -1] = -3
    k_up0 = a["k_ups"][0]
    return [
        ("q", a["q"].astype(f64), TypeError, "`q` must be float32"),
        ("q", a["q"][0], ValueError, "`q` must be 3-dimensional"),
        ("q", nan_q, ValueError, "`q` contains 1 NaN/Inf"),
        ("q", a["q"][:, :, :D - 1], ValueError, "must be even"),
        ("q", np.zeros((B, 0, D), np.float32), ValueError, "`q` is empty"),
        ("q", a["q"][:, :1] if H > 1 else np.repeat(a["q"], 1, axis=1)[:, :0], ValueError, "q"),
        ("q", _FakeCudaTensor(), TypeError, "`q`"),
        ("q", "text", TypeError, "`q`"),
        ("k_latent", a["k_latent"][:, :, 1:], ValueError, "`k_latent` must have shape"),
        ("k_latent", a["k_latent"][:1] if B > 1 else a["k_latent"][:, :, :, None], ValueError, "`k_latent`"),
        ("k_latent", a["k_latent"].astype(np.int32), TypeError, "`k_latent` must be float32 or float64"),
        ("k_latent", a["k_latent"][:, :0], ValueError, "`k_latent` is empty"),
        ("v_latent", a["v_latent"][:, :, 1:], ValueError, "`v_latent` must have shape"),
        ("v_latent", a["v_latent"][:, :T - 1] if T > 1 else a["v_latent"][:, :, :1], ValueError, "`v_latent`"),
        ("v_latent", a["v_latent"].astype(f64), TypeError, "`v_latent` must be float32"),
        ("positions", a["positions"].astype(np.int64), TypeError, "`positions` must be int32"),
        ("positions", a["positions"].astype(np.float32), TypeError, "`positions` must be int32"),
        ("positions", a["positions"][0], ValueError, "`positions` must be 2-dimensional"),
        ("positions", a["positions"][:, :1] if T > 1 else a["positions"][:, [0, 0]], ValueError, "`positions` must have shape"),
        ("positions", neg_pos, ValueError, "positions[0, %d] = -3 is negative" % (T - 1)),
        ("positions", None, TypeError, "`positions`"),
        ("pad_start", np.full(B, T, np.int32), ValueError, "pad_start[0] = %d is out of range" % T),
        ("pad_start", np.full(B, -1, np.int32), ValueError, "pad_start[0] = -1 is out of range"),
        ("pad_start", a["pad_start"].astype(np.int64), TypeError, "`pad_start` must be int32"),
        ("pad_start", np.zeros(B + 1, np.int32), ValueError, "`pad_start` must have shape"),
        ("pad_start", np.zeros((B, 1), np.int32), ValueError, "`pad_start` must be 1-dimensional"),
        ("k_ups", k_up0, TypeError, "`k_ups` must be a list"),
        ("k_ups", [], ValueError, "`k_ups` is empty"),
        ("k_ups", [k_up0[1:]] + a["k_ups"][1:], ValueError, "`k_ups[0]` must have G*D"),
        ("k_ups", [k_up0.astype(f64)] + a["k_ups"][1:], TypeError, "`k_ups[0]` must be float32"),
        ("k_ups", [k_up0[:, 0]] + a["k_ups"][1:], ValueError, "`k_ups[0]` must be 2-dimensional"),
        ("k_ups", [k_up0, "x"], TypeError, "`k_ups[1]`"),
        ("k_ups", a["k_ups"] + [k_up0], ValueError, "groups"),
        ("v_ups", a["v_ups"] + [a["v_ups"][0]], ValueError, "`v_ups` has"),
        ("v_ups", [a["v_ups"][0][:, :0]] + a["v_ups"][1:], ValueError, "`v_ups[0]` is empty"),
        ("v_ups", None, TypeError, "`v_ups` must be a list"),
        ("group_size", 0, ValueError, "`group_size` must be >= 1"),
        ("group_size", -2, ValueError, "`group_size` must be >= 1"),
        ("group_size", a["group_size"] + 1, ValueError, "rows"),
        ("group_size", "1", TypeError, "`group_size` must be an int"),
        ("group_size", 1.0, TypeError, "`group_size` must be an int"),
        ("group_size", True, TypeError, "`group_size` must be an int"),
        ("group_size", 2**70, ValueError, "`group_size` = 1180591620717411303424 is out of range"),
        ("group_size", 2**62, ValueError, "`group_size` must be >= 1"),
        ("inv_freq", a["inv_freq"][1:], ValueError, "`inv_freq` must have shape"),
        ("inv_freq", a["inv_freq"].astype(f64), TypeError, "`inv_freq` must be float32"),
        ("inv_freq", np.full(D // 2, np.inf, np.float32), ValueError, "`inv_freq` contains"),
        ("attention_scaling", float("inf"), ValueError, "must be finite"),
        ("attention_scaling", "1", TypeError, "`attention_scaling` must be a float"),
        ("scaling", None, TypeError, "`scaling` must be a float"),
        ("scaling", float("nan"), ValueError, "must be finite"),
        ("scaling", 1e300, ValueError, "must be finite"),  # overflows float32
        ("k_bias", np.zeros(3, np.float32), ValueError, "`k_bias` must have shape"),
        ("k_bias", np.zeros(a["k_bias"].shape, f64), TypeError, "`k_bias` must be float32"),
        ("v_bias", np.zeros(a["v_bias"].shape + (1,), np.float32), ValueError, "`v_bias` must be 1-dimensional"),
        ("v_bias", np.full(a["v_bias"].shape, np.nan, np.float32), ValueError, "`v_bias` contains"),
    ]


def test_bad_inputs_raise_clear_errors(rng):
    a = make_case(rng, 2, 2, 3, 16, 1, 7, True, ranks_k=[16, 7], ranks_v=[7, 16])
    for name, value, exc, fragment in _bad_cases(a):
        args = dict(a)
        args[name] = value
        with pytest.raises(exc) as info:
            _C.latent_decode_attention(**args)
        assert fragment in str(info.value), (name, str(info.value))
        assert str(info.value).startswith("latent_decode_attention"), (name, str(info.value))


def test_heads_not_multiple_of_kv_heads(rng):
    a = make_case(rng, 1, 2, 1, 16, 1, 7, False)
    a["q"] = rng.standard_normal((1, 3, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="not a multiple of the 2 KV heads"):
        _C.latent_decode_attention(**a)


def test_missing_and_unknown_arguments(rng):
    a = make_case(rng, 1, 1, 1, 16, 1, 7, False)
    del a["scaling"]
    with pytest.raises(TypeError):
        _C.latent_decode_attention(**a)
    a["scaling"], a["bogus"] = 0.25, 1
    with pytest.raises(TypeError):
        _C.latent_decode_attention(**a)


def test_concurrent_calls_from_threads(rng):
    # the GIL is released around the numeric call: threads must get exactly the single-threaded results
    from concurrent.futures import ThreadPoolExecutor

    cases = [make_case(rng, 3, 3, 3, 64, 3, 129, True) for _ in range(4)]
    expected = [_C.latent_decode_attention(**a) for a in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda a: _C.latent_decode_attention(**a), cases * 4))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, expected[i % len(cases)])


# ---- resources ------------------------------------------------------------------------------------------


def test_no_memory_growth_over_10000_calls(rng):
    a = make_case(rng, 2, 2, 2, 16, 2, 7, True)
    bad = dict(a, pad_start=np.full(2, 7, np.int32))  # fails in C, after every conversion succeeded
    bad_ups = dict(a, v_ups=[a["v_ups"][0], "x"])  # fails half-way through reading the up-projections

    def once() -> None:
        _C.latent_decode_attention(**a)
        for b in (bad, bad_ups):
            try:
                _C.latent_decode_attention(**b)
            except (TypeError, ValueError):
                pass

    assert_no_growth(once)
