/* py_latent_attention.c -- binding of latent_attention.c: _C.latent_decode_attention and
 * _C.latent_cache_decode_attention.
 *
 * Converts and validates every argument (float32 only, C-contiguous copies when needed, consistent shapes),
 * concatenates the per-group up-projections into the flat layout the C function takes, releases the GIL
 * around the numeric call and returns a new (B, H, D) float32 array.
 *
 * Shape legend: B batch, T cached slots, H query heads, Hkv KV heads, D head_dim, G KV heads per group,
 * NG groups, r_g rank of group g, Rk / Rv summed key / value ranks.
 */
#include "py_common.h"
#include "latent_attention.h"

#include <string.h>

#define FUNC "latent_decode_attention"

/* A new reference to a C-contiguous float32 array with exactly `nd` dimensions (no NaN/Inf, not empty),
 * or NULL with TypeError/ValueError naming `name`. */
static PyArrayObject *f32_array(PyObject *obj, const char *name, int nd)
{
    PyArrayObject *arr = palu_py_float_array(obj, name, FUNC, nd, nd, 0);
    if (arr != NULL && PyArray_TYPE(arr) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be float32, got float64; convert it with .astype(np.float32)",
                     FUNC, name);
        Py_CLEAR(arr);
    }
    return arr;
}

/* A new reference to a C-contiguous int32 array with exactly `nd` dimensions (not empty), or NULL. */
static PyArrayObject *i32_array(PyObject *obj, const char *name, int nd)
{
    PyArrayObject *arr = NULL, *out = NULL;
    if (obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be an int32 array, got None", FUNC, name);
        return NULL;
    }
    if ((arr = (PyArrayObject *)PyArray_FROM_O(obj)) == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be a NumPy int32 array, got %.200s", FUNC, name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyArray_TYPE(arr) != NPY_INT32) {
        PyObject *dname = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be int32, got %S; convert it with .astype(np.int32)", FUNC, name,
                     dname ? dname : Py_None);
        Py_XDECREF(dname);
    } else if (PyArray_NDIM(arr) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` must be %d-dimensional, got %d dimensions", FUNC, name, nd,
                     PyArray_NDIM(arr));
    } else if (PyArray_SIZE(arr) == 0) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is empty (shape has a zero); nothing to compute", FUNC, name);
    } else {
        out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, NPY_INT32, NPY_ARRAY_IN_ARRAY);
    }
    Py_DECREF(arr);
    return out;
}

/* Read `ups_obj` (a list/tuple of (rows, r_g) float32 arrays) into a PyMem buffer holding them one after
 * another, row-major, and a PyMem array of their ranks. Sets *n_groups. Returns 0, or -1 with an exception
 * set (and nothing allocated). */
static int read_ups(PyObject *ups_obj, const char *name, npy_intp rows, float **flat_out, int64_t **ranks_out,
                    Py_ssize_t *n_groups)
{
    PyObject *seq = NULL;
    PyArrayObject **arrs = NULL;
    float *flat = NULL;
    int64_t *ranks = NULL;
    Py_ssize_t n = 0;
    int rc = -1;
    char item_name[64];
    if (!PyList_Check(ups_obj) && !PyTuple_Check(ups_obj)) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be a list of 2-D float32 arrays (one per head group), got %.200s",
                     FUNC, name, Py_TYPE(ups_obj)->tp_name);
        goto done;
    }
    if ((seq = PySequence_Fast(ups_obj, "")) == NULL) goto done;
    n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is empty; give one (G*D, r_g) up-projection per head group", FUNC,
                     name);
        goto done;
    }
    arrs = (PyArrayObject **)PyMem_Calloc((size_t)n, sizeof(*arrs));
    ranks = (int64_t *)PyMem_Malloc((size_t)n * sizeof(*ranks));
    if (arrs == NULL || ranks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t total = 0;
    for (Py_ssize_t g = 0; g < n; g++) {
        snprintf(item_name, sizeof item_name, "%s[%zd]", name, g);
        if ((arrs[g] = f32_array(PySequence_Fast_GET_ITEM(seq, g), item_name, 2)) == NULL) goto done;
        if (PyArray_DIM(arrs[g], 0) != rows) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` must have G*D = %zd rows (group_size x head_dim), got shape (%zd, %zd)",
                         FUNC, item_name, rows, PyArray_DIM(arrs[g], 0), PyArray_DIM(arrs[g], 1));
            goto done;
        }
        ranks[g] = (int64_t)PyArray_DIM(arrs[g], 1);
        total += (size_t)PyArray_SIZE(arrs[g]);
    }
    if ((flat = (float *)PyMem_Malloc(total * sizeof(float))) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t off = 0;
    for (Py_ssize_t g = 0; g < n; g++) {
        memcpy(flat + off, PyArray_DATA(arrs[g]), (size_t)PyArray_NBYTES(arrs[g]));
        off += (size_t)PyArray_SIZE(arrs[g]);
    }
    *flat_out = flat;
    *ranks_out = ranks;
    *n_groups = n;
    flat = NULL;
    ranks = NULL;
    rc = 0;
done:
    if (arrs != NULL)
        for (Py_ssize_t g = 0; g < n; g++) Py_XDECREF(arrs[g]);
    PyMem_Free(arrs);
    PyMem_Free(flat);
    PyMem_Free(ranks);
    Py_XDECREF(seq);
    return rc;
}

/* Read an int argument (not bool) into *out; -1 with a TypeError naming `name` otherwise. */
static int read_int(PyObject *obj, const char *name, long long *out)
{
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be an int, got %.200s", FUNC, name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` = %S is out of range", FUNC, name, obj);
        return -1;
    }
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* Read a real number (int or float, not bool) into *out; -1 with a TypeError naming `name` otherwise. */
static int read_real(PyObject *obj, const char *name, double *out)
{
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be a float, got %.200s", FUNC, name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyFloat_AsDouble(obj);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int check_shape(PyArrayObject *arr, const char *name, int nd, const npy_intp *want, const char *legend)
{
    for (int i = 0; i < nd; i++) {
        if (PyArray_DIM(arr, i) == want[i]) continue;
        if (nd == 1)
            PyErr_Format(PyExc_ValueError, "%s: `%s` must have shape %s = (%zd,), got (%zd,)", FUNC, name, legend,
                         want[0], PyArray_DIM(arr, 0));
        else if (nd == 2)
            PyErr_Format(PyExc_ValueError, "%s: `%s` must have shape %s = (%zd, %zd), got (%zd, %zd)", FUNC, name,
                         legend, want[0], want[1], PyArray_DIM(arr, 0), PyArray_DIM(arr, 1));
        else
            PyErr_Format(PyExc_ValueError, "%s: `%s` must have shape %s = (%zd, %zd, %zd), got (%zd, %zd, %zd)", FUNC,
                         name, legend, want[0], want[1], want[2], PyArray_DIM(arr, 0), PyArray_DIM(arr, 1),
                         PyArray_DIM(arr, 2));
        return -1;
    }
    return 0;
}

/* The arguments both entry points share, converted and checked against each other. */
typedef struct step_args {
    PyArrayObject *q, *pad, *freq, *kb, *vb; /* owned (kb, vb NULL when not given) */
    float *k_up, *v_up;                      /* PyMem: the groups' up-projections one after another */
    int64_t *k_ranks, *v_ranks;              /* PyMem: NG ranks each */
    Py_ssize_t groups;                       /* NG */
    long long group_size;                    /* G */
    double attention_scaling, scaling;
    npy_intp B, H, D, Hkv;
} step_args;

static void step_args_release(step_args *a)
{
    Py_XDECREF(a->q);
    Py_XDECREF(a->pad);
    Py_XDECREF(a->freq);
    Py_XDECREF(a->kb);
    Py_XDECREF(a->vb);
    PyMem_Free(a->k_up);
    PyMem_Free(a->v_up);
    PyMem_Free(a->k_ranks);
    PyMem_Free(a->v_ranks);
    memset(a, 0, sizeof *a);
}

/* Fill `a` from the Python objects; 0, or -1 with an exception set (call step_args_release either way). */
static int step_args_read(step_args *a, PyObject *q_obj, PyObject *pad_obj, PyObject *kups_obj, PyObject *vups_obj,
                          PyObject *gs_obj, PyObject *freq_obj, PyObject *as_obj, PyObject *sc_obj, PyObject *kb_obj,
                          PyObject *vb_obj)
{
    Py_ssize_t nv = 0;
    if (read_int(gs_obj, "group_size", &a->group_size) < 0 ||
        read_real(as_obj, "attention_scaling", &a->attention_scaling) < 0 || read_real(sc_obj, "scaling", &a->scaling) < 0)
        return -1;
    if ((a->q = f32_array(q_obj, "q", 3)) == NULL) return -1;
    a->B = PyArray_DIM(a->q, 0), a->H = PyArray_DIM(a->q, 1), a->D = PyArray_DIM(a->q, 2);
    if (a->D % 2 != 0) {
        PyErr_Format(PyExc_ValueError, "%s: head_dim (q.shape[2]) must be even for RoPE, got %zd", FUNC, a->D);
        return -1;
    }
    if (a->group_size < 1 || a->group_size > PY_SSIZE_T_MAX / a->D) {
        PyErr_Format(PyExc_ValueError, "%s: `group_size` must be >= 1 (and G*D must fit an index), got %lld", FUNC,
                     a->group_size);
        return -1;
    }
    const npy_intp rows = (npy_intp)a->group_size * a->D;
    if (read_ups(kups_obj, "k_ups", rows, &a->k_up, &a->k_ranks, &a->groups) < 0) return -1;
    if (read_ups(vups_obj, "v_ups", rows, &a->v_up, &a->v_ranks, &nv) < 0) return -1;
    if (a->groups != nv) {
        PyErr_Format(PyExc_ValueError, "%s: `k_ups` has %zd groups but `v_ups` has %zd; give one of each per group",
                     FUNC, a->groups, nv);
        return -1;
    }
    a->Hkv = (npy_intp)(a->groups * a->group_size);
    if (a->H % a->Hkv != 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s: q has %zd heads, not a multiple of the %zd KV heads (len(k_ups) x group_size = %zd x %lld)",
                     FUNC, a->H, a->Hkv, a->groups, a->group_size);
        return -1;
    }
    const npy_intp want_pad[1] = {a->B}, want_freq[1] = {a->D / 2}, want_bias[1] = {a->Hkv * a->D};
    if ((a->pad = i32_array(pad_obj, "pad_start", 1)) == NULL) return -1;
    if (check_shape(a->pad, "pad_start", 1, want_pad, "(B,)") < 0) return -1;
    if ((a->freq = f32_array(freq_obj, "inv_freq", 1)) == NULL) return -1;
    if (check_shape(a->freq, "inv_freq", 1, want_freq, "(D/2,)") < 0) return -1;
    if (kb_obj != Py_None) {
        if ((a->kb = f32_array(kb_obj, "k_bias", 1)) == NULL) return -1;
        if (check_shape(a->kb, "k_bias", 1, want_bias, "(Hkv*D,)") < 0) return -1;
    }
    if (vb_obj != Py_None) {
        if ((a->vb = f32_array(vb_obj, "v_bias", 1)) == NULL) return -1;
        if (check_shape(a->vb, "v_bias", 1, want_bias, "(Hkv*D,)") < 0) return -1;
    }
    return 0;
}

static PyArrayObject *new_out(const step_args *a)
{
    const npy_intp dims[3] = {a->B, a->H, a->D};
    return (PyArrayObject *)PyArray_SimpleNew(3, (npy_intp *)dims, NPY_FLOAT32);
}

/* _C.latent_decode_attention(q, k_latent, v_latent, positions, pad_start, k_ups, v_ups, group_size, inv_freq,
 *                            attention_scaling, scaling, k_bias=None, v_bias=None) -> out (B, H, D) float32 */
static PyObject *py_latent_decode_attention(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q", "k_latent", "v_latent", "positions", "pad_start", "k_ups", "v_ups", "group_size",
                             "inv_freq", "attention_scaling", "scaling", "k_bias", "v_bias", NULL};
    PyObject *q_obj, *kl_obj, *vl_obj, *pos_obj, *pad_obj, *kups_obj, *vups_obj, *freq_obj;
    PyObject *gs_obj, *as_obj, *sc_obj, *kb_obj = Py_None, *vb_obj = Py_None, *result = NULL;
    PyArrayObject *kl = NULL, *vl = NULL, *pos = NULL, *out = NULL;
    step_args a;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOOOO|OO:latent_decode_attention", kwlist, &q_obj,
                                     &kl_obj, &vl_obj, &pos_obj, &pad_obj, &kups_obj, &vups_obj, &gs_obj,
                                     &freq_obj, &as_obj, &sc_obj, &kb_obj, &vb_obj))
        return NULL;
    if (step_args_read(&a, q_obj, pad_obj, kups_obj, vups_obj, gs_obj, freq_obj, as_obj, sc_obj, kb_obj, vb_obj) < 0)
        goto done;
    npy_intp Rk = 0, Rv = 0;
    for (Py_ssize_t g = 0; g < a.groups; g++) {
        Rk += (npy_intp)a.k_ranks[g];
        Rv += (npy_intp)a.v_ranks[g];
    }
    if ((kl = f32_array(kl_obj, "k_latent", 3)) == NULL) goto done;
    const npy_intp T = PyArray_DIM(kl, 1);
    const npy_intp want_kl[3] = {a.B, T, Rk}, want_vl[3] = {a.B, T, Rv}, want_pos[2] = {a.B, T};
    if (check_shape(kl, "k_latent", 3, want_kl, "(B, T, sum of k ranks)") < 0) goto done;
    if ((vl = f32_array(vl_obj, "v_latent", 3)) == NULL) goto done;
    if (check_shape(vl, "v_latent", 3, want_vl, "(B, T, sum of v ranks)") < 0) goto done;
    if ((pos = i32_array(pos_obj, "positions", 2)) == NULL) goto done;
    if (check_shape(pos, "positions", 2, want_pos, "(B, T)") < 0) goto done;
    if ((out = new_out(&a)) == NULL) goto done;

    const palu_latent_attn_shape shape = {.batch = a.B, .tokens = T, .heads = a.H, .kv_heads = a.Hkv,
                                          .head_dim = a.D, .group_size = a.group_size, .k_ranks = a.k_ranks,
                                          .v_ranks = a.v_ranks};
    const float *qp = PyArray_DATA(a.q), *klp = PyArray_DATA(kl), *vlp = PyArray_DATA(vl), *fp = PyArray_DATA(a.freq);
    const float *kbp = a.kb ? PyArray_DATA(a.kb) : NULL, *vbp = a.vb ? PyArray_DATA(a.vb) : NULL;
    const int32_t *posp = PyArray_DATA(pos), *padp = PyArray_DATA(a.pad);
    float *op = PyArray_DATA(out);
    const float as = (float)a.attention_scaling, sc = (float)a.scaling;
    palu_status st;
    Py_BEGIN_ALLOW_THREADS
    st = palu_latent_decode_attention_ref(&shape, qp, klp, vlp, posp, padp, a.k_up, a.v_up, kbp, vbp, fp, as, sc, op);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, FUNC);
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(kl);
    Py_XDECREF(vl);
    Py_XDECREF(pos);
    Py_XDECREF(out);
    step_args_release(&a);
    return result;
}

/* _C.latent_cache_decode_attention(cache, q, pad_start, k_ups, v_ups, group_size, inv_freq, attention_scaling,
 *                                  scaling, k_bias=None, v_bias=None) -> out (B, H, D) float32
 * The same step reading latents and positions from a LatentCache (py_latent_cache.c), quantized or not. */
static PyObject *py_latent_cache_decode_attention(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"cache", "q", "pad_start", "k_ups", "v_ups", "group_size", "inv_freq",
                             "attention_scaling", "scaling", "k_bias", "v_bias", NULL};
    const char *func = "latent_cache_decode_attention";
    PyObject *cache_obj, *q_obj, *pad_obj, *kups_obj, *vups_obj, *freq_obj, *gs_obj, *as_obj, *sc_obj;
    PyObject *kb_obj = Py_None, *vb_obj = Py_None, *result = NULL;
    PyArrayObject *out = NULL;
    const palu_latent_cache *cache = NULL;
    step_args a;
    memset(&a, 0, sizeof a);
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOOOOO|OO:latent_cache_decode_attention", kwlist, &cache_obj,
                                     &q_obj, &pad_obj, &kups_obj, &vups_obj, &gs_obj, &freq_obj, &as_obj, &sc_obj,
                                     &kb_obj, &vb_obj))
        return NULL;
    if (step_args_read(&a, q_obj, pad_obj, kups_obj, vups_obj, gs_obj, freq_obj, as_obj, sc_obj, kb_obj, vb_obj) < 0)
        goto done;
    if ((out = new_out(&a)) == NULL) goto done;
    if ((cache = palu_py_latent_cache_acquire(module, cache_obj, func)) == NULL) goto done;
    if (a.groups != cache->k.n_groups) {
        PyErr_Format(PyExc_ValueError, "%s: %zd up-projection groups given, the cache has %lld head groups", func,
                     a.groups, (long long)cache->k.n_groups);
        palu_py_latent_cache_release(cache_obj);
        goto done;
    }
    {
        const palu_latent_attn_shape shape = {.batch = a.B, .tokens = cache->length, .heads = a.H, .kv_heads = a.Hkv,
                                              .head_dim = a.D, .group_size = a.group_size, .k_ranks = a.k_ranks,
                                              .v_ranks = a.v_ranks};
        const float *qp = PyArray_DATA(a.q), *fp = PyArray_DATA(a.freq);
        const float *kbp = a.kb ? PyArray_DATA(a.kb) : NULL, *vbp = a.vb ? PyArray_DATA(a.vb) : NULL;
        const int32_t *padp = PyArray_DATA(a.pad);
        float *op = PyArray_DATA(out);
        const float as = (float)a.attention_scaling, sc = (float)a.scaling;
        palu_status st;
        Py_BEGIN_ALLOW_THREADS
        st = palu_latent_cache_decode_attention_ref(&shape, cache, qp, padp, a.k_up, a.v_up, kbp, vbp, fp, as, sc, op);
        Py_END_ALLOW_THREADS
        palu_py_latent_cache_release(cache_obj);
        if (st != PALU_OK) {
            palu_py_raise(module, st, func);
            goto done;
        }
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(out);
    step_args_release(&a);
    return result;
}

static PyMethodDef latent_attention_methods[] = {
    {"latent_decode_attention", (PyCFunction)(void (*)(void))py_latent_decode_attention, METH_VARARGS | METH_KEYWORDS,
     "latent_decode_attention(q, k_latent, v_latent, positions, pad_start, k_ups, v_ups, group_size, inv_freq, "
     "attention_scaling, scaling, k_bias=None, v_bias=None) -> out (B, H, D) float32.\n\n"
     "One decode step of attention over a latent KV cache (CPU reference, csrc/latent_attention.h)."},
    {"latent_cache_decode_attention", (PyCFunction)(void (*)(void))py_latent_cache_decode_attention,
     METH_VARARGS | METH_KEYWORDS,
     "latent_cache_decode_attention(cache, q, pad_start, k_ups, v_ups, group_size, inv_freq, attention_scaling, "
     "scaling, k_bias=None, v_bias=None) -> out (B, H, D) float32.\n\n"
     "The same step reading the latents from a LatentCache (quantized slots dequantized on the fly)."},
    {NULL, NULL, 0, NULL},
};

int palu_latent_attention_module_init(PyObject *mod) { return PyModule_AddFunctions(mod, latent_attention_methods); }
