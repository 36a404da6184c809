/* py_latent_decode.c -- bindings of the CUDA latent decode attention and latent append (kernels/latent_decode.cu,
 * kernels/latent_append.cu): _C.latent_decode_cuda, _C.latent_decode_cuda_workspace, _C.latent_append_cuda.
 *
 * Tensors arrive as DLPack capsules made by palu_c/latent_kernels.py with the caller's current torch stream
 * (py_dlpack.h); this file checks device, dtype, shape and strides against each other, naming the argument and
 * the value, releases the GIL around the launch and calls every capsule's deleter on every path. Built without
 * CUDA, each function raises NotImplementedError.
 *
 * Shape legend: B batch, C capacity (slots), T slots filled, S new tokens, H query heads, Hkv KV heads, D head_dim,
 * G group size, NG groups, Rk / Rv summed ranks, Z = (H / Hkv) * G * Rv.
 */
#include "py_common.h"

#include "py_dlpack.h"

#ifdef PALU_WITH_CUDA
#include "latent_append.cuh"
#include "latent_decode.cuh"
#endif

#include <string.h>

#ifndef PALU_WITH_CUDA
static PyObject *no_cuda(const char *func)
{
    PyErr_Format(PyExc_NotImplementedError,
                 "%s: palu_c was built without CUDA; rebuild it where nvcc is available (PALU_C_CUDA=1) to run the "
                 "CUDA kernels, or use the CPU path",
                 func);
    return NULL;
}
#endif

#ifdef PALU_WITH_CUDA

/* Read a sequence of ints >= 1 into a PyMem array of int64 (*n entries). 0, or -1 with an exception set. */
static int read_ranks(PyObject *obj, const char *name, const char *func, int64_t **out, Py_ssize_t *n)
{
    *out = NULL;
    PyObject *seq = PySequence_Fast(obj, "");
    if (seq == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be a sequence of ints (one rank per head group), got %.200s", func,
                     name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    const Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    int rc = -1;
    if (len == 0) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is empty; give one rank per head group", func, name);
        goto done;
    }
    if ((*out = (int64_t *)PyMem_Malloc((size_t)len * sizeof(int64_t))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyBool_Check(item) || !PyLong_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s: `%s[%zd]` must be an int, got %.200s", func, name, i,
                         Py_TYPE(item)->tp_name);
            goto done;
        }
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) goto done;
        if (v < 1) {
            PyErr_Format(PyExc_ValueError, "%s: `%s[%zd]` = %lld; ranks must be >= 1", func, name, i, v);
            goto done;
        }
        (*out)[i] = (int64_t)v;
    }
    *n = len;
    rc = 0;
done:
    if (rc < 0) {
        PyMem_Free(*out);
        *out = NULL;
    }
    Py_DECREF(seq);
    return rc;
}

/* A validated CUDA tensor: data pointer, shape and element strides (compact when the producer gave none). */
typedef struct view {
    void *data;
    int ndim;
    int64_t shape[4], strides[4];
    int is_int32;     /* int32 tensor (positions, pad_start) */
    palu_dtype dtype; /* floating tensors */
    int device;
} view;

/* Take the capsule `cap` (argument `name`) into `dl` and describe it in `v`: a CUDA tensor of `ndim` axes,
 * int32 when want_int32 else floating, non-empty, last axis contiguous, no negative strides. */
static int take_view(PyObject *cap, const char *name, const char *func, int ndim, int want_int32, int writable,
                     palu_dl_tensor *dl, view *v)
{
    memset(v, 0, sizeof *v);
    if (palu_dl_take(cap, name, func, dl) < 0) return -1;
    if (palu_dl_check(dl, kDLCUDA, writable, name, func) < 0) return -1;
    const DLTensor *t = dl->t;
    if (t->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` must have %d dimensions, got %d", func, name, ndim, (int)t->ndim);
        return -1;
    }
    if (want_int32) {
        if (t->dtype.code != kDLInt || t->dtype.bits != 32 || t->dtype.lanes != 1) {
            PyErr_Format(PyExc_TypeError, "%s: `%s` must be int32 (DLPack code %u, bits %u given); convert it with "
                         ".to(torch.int32)", func, name, (unsigned)t->dtype.code, (unsigned)t->dtype.bits);
            return -1;
        }
        v->is_int32 = 1;
    } else if (palu_dl_dtype(t->dtype, &v->dtype, name, func) < 0) {
        return -1;
    }
    int64_t compact = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        if (t->shape[d] <= 0) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` is empty (axis %d has length %lld)", func, name, d,
                         (long long)t->shape[d]);
            return -1;
        }
        v->shape[d] = t->shape[d];
        v->strides[d] = t->strides ? t->strides[d] : compact;
        if (v->strides[d] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` has a negative stride on axis %d; pass a .contiguous() copy", func,
                         name, d);
            return -1;
        }
        compact *= t->shape[d];
    }
    if (v->shape[ndim - 1] > 1 && v->strides[ndim - 1] != 1) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` must be contiguous along its last axis (stride %lld)", func, name,
                     (long long)v->strides[ndim - 1]);
        return -1;
    }
    if (t->data == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` has a NULL data pointer", func, name);
        return -1;
    }
    v->data = (char *)t->data + t->byte_offset;
    v->ndim = ndim;
    v->device = (int)t->device.device_id;
    return 0;
}

/* shape[axis] == want, else ValueError naming both. */
static int want_dim(const view *v, int axis, int64_t want, const char *name, const char *what, const char *func)
{
    if (v->shape[axis] == want) return 0;
    PyErr_Format(PyExc_ValueError, "%s: `%s`.shape[%d] must be %s = %lld, got %lld", func, name, axis, what,
                 (long long)want, (long long)v->shape[axis]);
    return -1;
}

/* Compact row-major (so that a flat index is valid), else ValueError. */
static int want_contiguous(const view *v, const char *name, const char *func)
{
    int64_t expect = 1;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] > 1 && v->strides[d] != expect) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` must be contiguous; pass a .contiguous() copy", func, name);
            return -1;
        }
        expect *= v->shape[d];
    }
    return 0;
}

static int same_device(const view *v, int device, const char *name, const char *func)
{
    if (v->device == device) return 0;
    PyErr_Format(PyExc_ValueError, "%s: `%s` is on cuda:%d but `q` is on cuda:%d; put every tensor on one device", func,
                 name, v->device, device);
    return -1;
}

static int read_stream(PyObject *obj, const char *func, void **stream)
{
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: `stream` must be an int (torch.cuda.Stream.cuda_stream), got %.200s", func,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *stream = PyLong_AsVoidPtr(obj);
    return (*stream == NULL && PyErr_Occurred()) ? -1 : 0;
}

static palu_dtype dtype_from_name(const char *s, int *ok)
{
    *ok = 1;
    if (strcmp(s, "float16") == 0) return PALU_DTYPE_F16;
    if (strcmp(s, "bfloat16") == 0) return PALU_DTYPE_BF16;
    if (strcmp(s, "float32") == 0) return PALU_DTYPE_F32;
    *ok = 0;
    return PALU_DTYPE_F32;
}
#endif /* PALU_WITH_CUDA */

/* latent_decode_cuda_workspace(batch, heads, kv_heads, head_dim, group_size, length, k_ranks, v_ranks, dtype,
 *                              device, impl=0) -> (floats, impl_used) */
static PyObject *py_latent_decode_cuda_workspace(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"batch", "heads", "kv_heads", "head_dim", "group_size", "length", "k_ranks", "v_ranks",
                             "dtype", "device", "impl", NULL};
    const char *func = "latent_decode_cuda_workspace";
    long long B, H, Hkv, D, G, T;
    PyObject *kr_obj, *vr_obj;
    const char *dtype_name;
    int device, impl = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "LLLLLLOOsi|i:latent_decode_cuda_workspace", kwlist, &B, &H, &Hkv,
                                     &D, &G, &T, &kr_obj, &vr_obj, &dtype_name, &device, &impl))
        return NULL;
#ifndef PALU_WITH_CUDA
    (void)module, (void)kr_obj, (void)vr_obj, (void)dtype_name, (void)device, (void)impl;
    return no_cuda(func);
#else
    PyObject *result = NULL;
    int64_t *kr = NULL, *vr = NULL;
    Py_ssize_t nk = 0, nv = 0;
    if (read_ranks(kr_obj, "k_ranks", func, &kr, &nk) < 0 || read_ranks(vr_obj, "v_ranks", func, &vr, &nv) < 0)
        goto done;
    if (nk != nv) {
        PyErr_Format(PyExc_ValueError, "%s: %zd k ranks but %zd v ranks; give one of each per head group", func, nk, nv);
        goto done;
    }
    int ok = 0;
    palu_latent_decode_args a;
    memset(&a, 0, sizeof a);
    a.dtype = dtype_from_name(dtype_name, &ok);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: `dtype` must be 'float16' or 'bfloat16', got %s", func, dtype_name);
        goto done;
    }
    a.batch = B, a.heads = H, a.kv_heads = Hkv, a.head_dim = D, a.group_size = G, a.length = T, a.n_groups = nk;
    a.k_ranks = kr, a.v_ranks = vr, a.impl = impl;
    int64_t floats = 0;
    int used = 0;
    palu_status st;
    Py_BEGIN_ALLOW_THREADS
    st = palu_latent_decode_cuda_workspace(&a, device, &floats);
    if (st == PALU_OK) st = palu_latent_decode_cuda_impl(&a, device, &used);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, func);
        goto done;
    }
    result = Py_BuildValue("(Li)", (long long)floats, used);
done:
    PyMem_Free(kr);
    PyMem_Free(vr);
    return result;
#endif
}

/* latent_decode_cuda(q, k_latent, v_latent, positions, pad_start, k_up, inv_freq, k_bias, out, workspace,
 *                    length, k_ranks, v_ranks, group_size, attention_scaling, scaling, stream, impl=0,
 *                    k_pairs=None) -> None
 * Tensors are DLPack capsules (k_bias and k_pairs may be None). See kernels/latent_decode.cuh for the contract. */
static PyObject *py_latent_decode_cuda(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q", "k_latent", "v_latent", "positions", "pad_start", "k_up", "inv_freq", "k_bias",
                             "out", "workspace", "length", "k_ranks", "v_ranks", "group_size", "attention_scaling",
                             "scaling", "stream", "impl", "k_pairs", NULL};
    const char *func = "latent_decode_cuda";
    PyObject *caps[11];
    caps[10] = Py_None;
    PyObject *kr_obj, *vr_obj, *stream_obj;
    long long T, G;
    double att_scaling, scaling;
    int impl = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOLOOLddO|iO:latent_decode_cuda", kwlist,
                                     &caps[0], &caps[1], &caps[2], &caps[3], &caps[4], &caps[5], &caps[6], &caps[7],
                                     &caps[8], &caps[9], &T, &kr_obj, &vr_obj, &G, &att_scaling, &scaling, &stream_obj,
                                     &impl, &caps[10]))
        return NULL;
#ifndef PALU_WITH_CUDA
    (void)module, (void)caps, (void)kr_obj, (void)vr_obj, (void)stream_obj;
    return no_cuda(func);
#else
    static const char *names[11] = {"q", "k_latent", "v_latent", "positions", "pad_start",
                                    "k_up", "inv_freq", "k_bias", "out", "workspace", "k_pairs"};
    static const int ndims[11] = {3, 3, 3, 2, 1, 1, 1, 1, 2, 1, 2};
    static const int ints[11] = {0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1};
    static const int writable[11] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0};
    palu_dl_tensor dl[11];
    view v[11];
    memset(dl, 0, sizeof dl);
    memset(v, 0, sizeof v);
    int64_t *kr = NULL, *vr = NULL;
    Py_ssize_t nk = 0, nv = 0;
    PyObject *result = NULL;
    void *stream = NULL;
    if (read_stream(stream_obj, func, &stream) < 0) goto done;
    if (read_ranks(kr_obj, "k_ranks", func, &kr, &nk) < 0 || read_ranks(vr_obj, "v_ranks", func, &vr, &nv) < 0)
        goto done;
    if (nk != nv) {
        PyErr_Format(PyExc_ValueError, "%s: %zd k ranks but %zd v ranks; give one of each per head group", func, nk, nv);
        goto done;
    }
    for (int i = 0; i < 11; i++) {
        if ((i == 7 || i == 10) && caps[i] == Py_None) continue;
        if (take_view(caps[i], names[i], func, ndims[i], ints[i], writable[i], &dl[i], &v[i]) < 0) goto done;
    }
    const view *q = &v[0], *kl = &v[1], *vl = &v[2], *pos = &v[3], *pad = &v[4], *kup = &v[5], *freq = &v[6];
    const view *kb = caps[7] == Py_None ? NULL : &v[7], *out = &v[8], *ws = &v[9];
    const view *kp = caps[10] == Py_None ? NULL : &v[10];
    const int dev = q->device;
    for (int i = 1; i < 11; i++)
        if ((i != 7 || kb) && (i != 10 || kp) && same_device(&v[i], dev, names[i], func) < 0) goto done;
    const int64_t B = q->shape[0], H = q->shape[1], D = q->shape[2], NG = nk;
    if (G < 1 || NG * G < 1 || H % (NG * G) != 0) {
        PyErr_Format(PyExc_ValueError, "%s: q has %lld heads, not a multiple of len(k_ranks) x group_size = %lld x %lld",
                     func, (long long)H, (long long)NG, G);
        goto done;
    }
    const int64_t Hkv = NG * G, n_rep = H / Hkv;
    int64_t Rk = 0, Rv = 0;
    for (Py_ssize_t g = 0; g < NG; g++) Rk += kr[g], Rv += vr[g];
    if (T < 1 || T > kl->shape[1] || T > vl->shape[1] || T > pos->shape[1]) {
        PyErr_Format(PyExc_ValueError, "%s: `length` = %lld must be in [1, capacity]; k_latent / v_latent / positions "
                     "hold %lld / %lld / %lld slots", func, T, (long long)kl->shape[1], (long long)vl->shape[1],
                     (long long)pos->shape[1]);
        goto done;
    }
    if (q->dtype != PALU_DTYPE_F16 && q->dtype != PALU_DTYPE_BF16) {
        PyErr_Format(PyExc_TypeError, "%s: `q` must be float16 or bfloat16, got %s", func, palu_dtype_name(q->dtype));
        goto done;
    }
    if (kl->dtype != q->dtype || vl->dtype != q->dtype || kup->dtype != q->dtype) {
        PyErr_Format(PyExc_TypeError, "%s: `k_latent` (%s), `v_latent` (%s) and `k_up` (%s) must have q's dtype %s",
                     func, palu_dtype_name(kl->dtype), palu_dtype_name(vl->dtype), palu_dtype_name(kup->dtype),
                     palu_dtype_name(q->dtype));
        goto done;
    }
    if (freq->dtype != PALU_DTYPE_F32 || ws->dtype != PALU_DTYPE_F32 || (kb && kb->dtype != PALU_DTYPE_F32)) {
        PyErr_Format(PyExc_TypeError, "%s: `inv_freq`, `k_bias` and `workspace` must be float32", func);
        goto done;
    }
    if (want_contiguous(q, "q", func) < 0 || want_contiguous(pad, "pad_start", func) < 0 ||
        want_contiguous(kup, "k_up", func) < 0 || want_contiguous(freq, "inv_freq", func) < 0 ||
        want_contiguous(out, "out", func) < 0 || want_contiguous(ws, "workspace", func) < 0 ||
        (kb && want_contiguous(kb, "k_bias", func) < 0) || (kp && want_contiguous(kp, "k_pairs", func) < 0))
        goto done;
    if (want_dim(kl, 0, B, "k_latent", "batch", func) < 0 || want_dim(kl, 2, Rk, "k_latent", "sum(k_ranks)", func) < 0 ||
        want_dim(vl, 0, B, "v_latent", "batch", func) < 0 || want_dim(vl, 2, Rv, "v_latent", "sum(v_ranks)", func) < 0 ||
        want_dim(pos, 0, B, "positions", "batch", func) < 0 || want_dim(pad, 0, B, "pad_start", "batch", func) < 0 ||
        want_dim(kup, 0, G * D * Rk, "k_up", "group_size * head_dim * sum(k_ranks)", func) < 0 ||
        want_dim(freq, 0, D / 2, "inv_freq", "head_dim / 2", func) < 0 ||
        (kb && want_dim(kb, 0, Hkv * D, "k_bias", "kv_heads * head_dim", func) < 0) ||
        want_dim(out, 0, B, "out", "batch", func) < 0 ||
        want_dim(out, 1, n_rep * G * Rv, "out", "(heads / kv_heads) * group_size * sum(v_ranks)", func) < 0 ||
        (kp && (want_dim(kp, 0, NG, "k_pairs", "len(k_ranks)", func) < 0 ||
                want_dim(kp, 1, G * D / 2, "k_pairs", "group_size * head_dim / 2", func) < 0)))
        goto done;

    palu_latent_decode_args a;
    memset(&a, 0, sizeof a);
    a.batch = B, a.heads = H, a.kv_heads = Hkv, a.head_dim = D, a.group_size = G, a.length = T, a.n_groups = NG;
    a.k_ranks = kr, a.v_ranks = vr, a.dtype = q->dtype, a.impl = impl;
    a.q = q->data;
    a.k_latent = kl->data, a.k_batch_stride = kl->strides[0], a.k_token_stride = kl->strides[1];
    a.v_latent = vl->data, a.v_batch_stride = vl->strides[0], a.v_token_stride = vl->strides[1];
    a.positions = (const int32_t *)pos->data, a.pos_batch_stride = pos->strides[0];
    a.pad_start = (const int32_t *)pad->data;
    a.k_up = kup->data, a.k_bias = kb ? (const float *)kb->data : NULL, a.inv_freq = (const float *)freq->data;
    a.k_pairs = kp ? (const int32_t *)kp->data : NULL;
    a.attention_scaling = (float)att_scaling, a.scaling = (float)scaling;
    a.out = out->data, a.out_dtype = out->dtype;
    a.workspace = (float *)ws->data, a.workspace_floats = ws->shape[0];
    palu_status st;
    Py_BEGIN_ALLOW_THREADS
    st = palu_latent_decode_cuda(&a, dev, stream);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, func);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    for (int i = 10; i >= 0; i--) palu_dl_release(&dl[i]);
    PyMem_Free(kr);
    PyMem_Free(vr);
    return result;
#endif
}

/* latent_append_cuda(k_cache, v_cache, pos_cache, k_new, v_new, pos_new, start, stream) -> None */
static PyObject *py_latent_append_cuda(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"k_cache", "v_cache", "pos_cache", "k_new", "v_new", "pos_new", "start", "stream", NULL};
    const char *func = "latent_append_cuda";
    PyObject *caps[6], *stream_obj;
    long long start;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOLO:latent_append_cuda", kwlist, &caps[0], &caps[1], &caps[2],
                                     &caps[3], &caps[4], &caps[5], &start, &stream_obj))
        return NULL;
#ifndef PALU_WITH_CUDA
    (void)module, (void)caps, (void)start, (void)stream_obj;
    return no_cuda(func);
#else
    static const char *names[6] = {"k_cache", "v_cache", "pos_cache", "k_new", "v_new", "pos_new"};
    static const int ndims[6] = {3, 3, 2, 3, 3, 2};
    static const int ints[6] = {0, 0, 1, 0, 0, 1};
    static const int writable[6] = {1, 1, 1, 0, 0, 0};
    palu_dl_tensor dl[6];
    view v[6];
    memset(dl, 0, sizeof dl);
    memset(v, 0, sizeof v);
    PyObject *result = NULL;
    void *stream = NULL;
    if (read_stream(stream_obj, func, &stream) < 0) goto done;
    for (int i = 0; i < 6; i++)
        if (take_view(caps[i], names[i], func, ndims[i], ints[i], writable[i], &dl[i], &v[i]) < 0) goto done;
    const view *kc = &v[0], *vc = &v[1], *pc = &v[2], *kn = &v[3], *vn = &v[4], *pn = &v[5];
    for (int i = 1; i < 6; i++) {
        if (v[i].device != kc->device) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` is on cuda:%d but `k_cache` is on cuda:%d", func, names[i],
                         v[i].device, kc->device);
            goto done;
        }
    }
    const int64_t B = kc->shape[0], C = kc->shape[1], S = kn->shape[1];
    if (vc->dtype != kc->dtype || kn->dtype != kc->dtype || vn->dtype != kc->dtype) {
        PyErr_Format(PyExc_TypeError, "%s: `v_cache` (%s), `k_new` (%s), `v_new` (%s) must have k_cache's dtype %s", func,
                     palu_dtype_name(vc->dtype), palu_dtype_name(kn->dtype), palu_dtype_name(vn->dtype),
                     palu_dtype_name(kc->dtype));
        goto done;
    }
    if (want_dim(vc, 0, B, "v_cache", "batch", func) < 0 || want_dim(vc, 1, C, "v_cache", "capacity", func) < 0 ||
        want_dim(pc, 0, B, "pos_cache", "batch", func) < 0 || want_dim(pc, 1, C, "pos_cache", "capacity", func) < 0 ||
        want_dim(kn, 0, B, "k_new", "batch", func) < 0 || want_dim(kn, 2, kc->shape[2], "k_new", "Rk", func) < 0 ||
        want_dim(vn, 0, B, "v_new", "batch", func) < 0 || want_dim(vn, 1, S, "v_new", "new tokens", func) < 0 ||
        want_dim(vn, 2, vc->shape[2], "v_new", "Rv", func) < 0 || want_dim(pn, 0, B, "pos_new", "batch", func) < 0 ||
        want_dim(pn, 1, S, "pos_new", "new tokens", func) < 0)
        goto done;
    if (start < 0 || start + S > C) {
        PyErr_Format(PyExc_ValueError, "%s: `start` = %lld with %lld new tokens does not fit the %lld-slot cache", func,
                     start, (long long)S, (long long)C);
        goto done;
    }
    palu_latent_append_args a;
    memset(&a, 0, sizeof a);
    a.batch = B, a.tokens = S, a.start = start, a.capacity = C, a.k_width = kc->shape[2], a.v_width = vc->shape[2];
    a.dtype = kc->dtype;
    a.k_cache = kc->data, a.kc_batch_stride = kc->strides[0], a.kc_token_stride = kc->strides[1];
    a.v_cache = vc->data, a.vc_batch_stride = vc->strides[0], a.vc_token_stride = vc->strides[1];
    a.pos_cache = (int32_t *)pc->data, a.pc_batch_stride = pc->strides[0];
    a.k_new = kn->data, a.kn_batch_stride = kn->strides[0], a.kn_token_stride = kn->strides[1];
    a.v_new = vn->data, a.vn_batch_stride = vn->strides[0], a.vn_token_stride = vn->strides[1];
    a.pos_new = (const int32_t *)pn->data, a.pn_batch_stride = pn->strides[0], a.pn_token_stride = pn->strides[1];
    palu_status st;
    Py_BEGIN_ALLOW_THREADS
    st = palu_latent_append_cuda(&a, kc->device, stream);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, func);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    for (int i = 5; i >= 0; i--) palu_dl_release(&dl[i]);
    return result;
#endif
}

static PyMethodDef latent_decode_methods[] = {
    {"latent_decode_cuda", (PyCFunction)(void (*)(void))py_latent_decode_cuda, METH_VARARGS | METH_KEYWORDS,
     "latent_decode_cuda(q, k_latent, v_latent, positions, pad_start, k_up, inv_freq, k_bias, out, workspace, *, "
     "length, k_ranks, v_ranks, group_size, attention_scaling, scaling, stream, impl=0, k_pairs=None) -> None: "
     "fused decode "
     "attention over latents on CUDA, writing z (B, Z) (see palu_c.latent_kernels)."},
    {"latent_decode_cuda_workspace", (PyCFunction)(void (*)(void))py_latent_decode_cuda_workspace,
     METH_VARARGS | METH_KEYWORDS,
     "latent_decode_cuda_workspace(batch, heads, kv_heads, head_dim, group_size, length, k_ranks, v_ranks, dtype, "
     "device, impl=0) -> (float32 workspace elements, implementation 1 or 2)."},
    {"latent_append_cuda", (PyCFunction)(void (*)(void))py_latent_append_cuda, METH_VARARGS | METH_KEYWORDS,
     "latent_append_cuda(k_cache, v_cache, pos_cache, k_new, v_new, pos_new, start, stream) -> None: write new "
     "tokens' latents and positions into slots [start, start + S)."},
    {NULL, NULL, 0, NULL},
};

int palu_latent_decode_module_init(PyObject *mod) { return PyModule_AddFunctions(mod, latent_decode_methods); }
