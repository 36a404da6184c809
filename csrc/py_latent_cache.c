/* py_latent_cache.c -- binding of latent_cache.c: the heap types palu_c._C.LatentCache and LatentCacheBuffer.
 *
 * LatentCache owns one palu_latent_cache (the host cache of one Palu attention layer). Its methods convert and
 * validate NumPy input, release the GIL around the numeric work and map errors to exceptions. Read-only
 * metadata are getters; the storage itself is exposed without copies through LatentCacheBuffer objects
 * (`cache.buffer(name)`), which implement the buffer protocol (np.asarray(cache.buffer("positions")) is a
 * zero-copy view).
 *
 * Ownership and safety rules:
 * - a LatentCacheBuffer holds a strong reference to its cache and counts in `exports`; while any export is
 *   alive, methods that change the storage (append, crop, select, reset) raise BufferError, as bytearray does,
 *   so no view can outlive a reallocation;
 * - `busy` is set while a method works with the GIL released (append, read, decode attention); a second
 *   thread calling into the same cache meanwhile gets a RuntimeError instead of a data race.
 *
 * Shape legend: B batch, T tokens of one append, S slots read, C capacity, W window capacity, R summed rank.
 */
#include "py_common.h"
#include "latent_cache.h"

#include <string.h>

typedef struct palu_lc_object {
    PyObject_HEAD
    palu_latent_cache cache; /* owned; zeroed when init failed */
    int initialized;         /* cache was set up by palu_latent_cache_init */
    int busy;                /* a method is using the storage with the GIL released */
    Py_ssize_t exports;      /* live LatentCacheBuffer objects */
} palu_lc_object;

typedef struct palu_lcb_object {
    PyObject_HEAD
    PyObject *owner;         /* owned: the LatentCache */
    void *data;              /* borrowed from owner's storage, valid while exports > 0 keeps it in place */
    int ndim;
    Py_ssize_t shape[3], strides[3], itemsize, len;
    char format[2];
} palu_lcb_object;

/* ---- helpers ------------------------------------------------------------------------------------------ */

static PyObject *module_of(PyObject *self) { return PyType_GetModuleByDef(Py_TYPE(self), &palu_module_def); }

static int check_idle(palu_lc_object *self, const char *func, int mutating)
{
    if (!self->initialized) {
        PyErr_Format(PyExc_ValueError, "%s: this LatentCache was not initialized", func);
        return -1;
    }
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError, "%s: the cache is in use by another thread; a LatentCache serves one "
                                         "thread at a time", func);
        return -1;
    }
    if (mutating && self->exports > 0) {
        PyErr_Format(PyExc_BufferError, "%s: %zd buffer view(s) of this cache are alive; release them (del the "
                                        "arrays or memoryviews made from cache.buffer(...)) before changing the cache",
                     func, self->exports);
        return -1;
    }
    return 0;
}

/* A PyMem array of the ints of `seq` (a list/tuple of ints >= 1); *n gets its length. NULL with an exception. */
static int64_t *read_ranks(PyObject *seq_obj, const char *name, Py_ssize_t *n)
{
    PyObject *seq = PySequence_Fast(seq_obj, "");
    if (seq == NULL) {
        PyErr_Format(PyExc_TypeError, "LatentCache: `%s` must be a sequence of ints (one rank per head group), got "
                                      "%.200s", name, Py_TYPE(seq_obj)->tp_name);
        return NULL;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(seq);
    int64_t *out = NULL;
    if (len == 0) {
        PyErr_Format(PyExc_ValueError, "LatentCache: `%s` is empty; give one rank per head group", name);
        goto fail;
    }
    if ((out = (int64_t *)PyMem_Malloc((size_t)len * sizeof(int64_t))) == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyBool_Check(item) || !PyLong_Check(item)) {
            PyErr_Format(PyExc_TypeError, "LatentCache: `%s[%zd]` must be an int, got %.200s", name, i,
                         Py_TYPE(item)->tp_name);
            goto fail;
        }
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) goto fail;
        if (v < 1 || v > (1LL << 24)) {
            PyErr_Format(PyExc_ValueError, "LatentCache: `%s[%zd]` must be a rank in [1, 2^24], got %lld", name, i, v);
            goto fail;
        }
        out[i] = (int64_t)v;
    }
    *n = len;
    Py_DECREF(seq);
    return out;
fail:
    PyMem_Free(out);
    Py_DECREF(seq);
    return NULL;
}

/* An optional int keyword: None -> *out = dflt; else an int >= low. */
static int read_opt_int(PyObject *obj, const char *name, long long low, long long dflt, long long *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = dflt;
        return 0;
    }
    if (PyBool_Check(obj) || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "LatentCache: `%s` must be an int or None, got %.200s", name,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = PyLong_AsLongLong(obj);
    if (*out == -1 && PyErr_Occurred()) return -1;
    if (*out < low) {
        PyErr_Format(PyExc_ValueError, "LatentCache: `%s` must be >= %lld, got %lld", name, low, *out);
        return -1;
    }
    return 0;
}

/* A new reference to a C-contiguous array of `npy_type` with exactly `nd` dims (not empty), or NULL. */
static PyArrayObject *typed_array(PyObject *obj, int npy_type, const char *type_name, const char *name,
                                  const char *func, int nd)
{
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_O(obj), *out = NULL;
    if (arr == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be a NumPy %s array, got %.200s", func, name, type_name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    if (PyArray_TYPE(arr) != npy_type) {
        PyObject *dname = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be %s, got %S; convert it with .astype(np.%s)", func, name,
                     type_name, dname ? dname : Py_None, type_name);
        Py_XDECREF(dname);
    } else if (PyArray_NDIM(arr) != nd) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` must be %d-dimensional, got %d dimensions", func, name, nd,
                     PyArray_NDIM(arr));
    } else if (PyArray_SIZE(arr) == 0) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is empty (a dimension is 0)", func, name);
    } else {
        out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, npy_type, NPY_ARRAY_IN_ARRAY);
    }
    Py_DECREF(arr);
    return out;
}

/* ---- LatentCache ---------------------------------------------------------------------------------------- */

static PyObject *lc_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"k_ranks", "v_ranks", "bits", "residual", "quant_group", NULL};
    PyObject *k_obj, *v_obj, *bits_obj = Py_None, *res_obj = NULL, *qg_obj = Py_None, *result = NULL;
    int64_t *k_ranks = NULL, *v_ranks = NULL;
    Py_ssize_t nk = 0, nv = 0;
    long long bits, residual, quant_group;
    palu_lc_object *self = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$OOO:LatentCache", kwlist, &k_obj, &v_obj, &bits_obj, &res_obj,
                                     &qg_obj))
        return NULL;
    if ((k_ranks = read_ranks(k_obj, "k_ranks", &nk)) == NULL) goto done;
    if ((v_ranks = read_ranks(v_obj, "v_ranks", &nv)) == NULL) goto done;
    if (nk != nv) {
        PyErr_Format(PyExc_ValueError, "LatentCache: `k_ranks` has %zd groups, `v_ranks` %zd; give both per group", nk,
                     nv);
        goto done;
    }
    if (read_opt_int(bits_obj, "bits", 0, 0, &bits) < 0 || read_opt_int(res_obj, "residual", 0, 128, &residual) < 0 ||
        read_opt_int(qg_obj, "quant_group", 1, 0, &quant_group) < 0)
        goto done;
    if (bits != 0 && bits != 2 && bits != 3 && bits != 4 && bits != 8) {
        PyErr_Format(PyExc_ValueError, "LatentCache: `bits` must be one of {2, 3, 4, 8} or None, got %lld", bits);
        goto done;
    }
    if (bits_obj != Py_None && bits == 0) {
        PyErr_Format(PyExc_ValueError, "LatentCache: `bits` must be one of {2, 3, 4, 8} or None, got 0");
        goto done;
    }
    if ((self = (palu_lc_object *)type->tp_alloc(type, 0)) == NULL) goto done;
    palu_status st = palu_latent_cache_init(&self->cache, nk, k_ranks, v_ranks, (int)bits, residual, quant_group);
    if (st != PALU_OK) {
        PyObject *mod = PyType_GetModuleByDef(type, &palu_module_def);
        if (mod != NULL) palu_py_raise(mod, st, "LatentCache");
        goto done;
    }
    self->initialized = 1;
    result = (PyObject *)self;
    self = NULL;
done:
    Py_XDECREF(self);
    PyMem_Free(k_ranks);
    PyMem_Free(v_ranks);
    return result;
}

static void lc_dealloc(PyObject *op)
{
    palu_lc_object *self = (palu_lc_object *)op;
    PyTypeObject *tp = Py_TYPE(op);
    palu_latent_cache_free(&self->cache);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *ranks_tuple(const palu_latent_side *s)
{
    PyObject *t = PyTuple_New(s->n_groups);
    if (t == NULL) return NULL;
    for (int64_t g = 0; g < s->n_groups; g++) {
        PyObject *v = PyLong_FromLongLong(s->ranks[g]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, g, v);
    }
    return t;
}

#define LC(self) (&((palu_lc_object *)(self))->cache)
static PyObject *lc_get_k_ranks(PyObject *self, void *c) { (void)c; return ranks_tuple(&LC(self)->k); }
static PyObject *lc_get_v_ranks(PyObject *self, void *c) { (void)c; return ranks_tuple(&LC(self)->v); }
static PyObject *lc_get_bits(PyObject *self, void *c)
{
    (void)c;
    return LC(self)->bits ? PyLong_FromLong(LC(self)->bits) : Py_NewRef(Py_None);
}
static PyObject *lc_get_quant_group(PyObject *self, void *c)
{
    (void)c;
    return LC(self)->quant_group ? PyLong_FromLongLong(LC(self)->quant_group) : Py_NewRef(Py_None);
}
static PyObject *lc_get_residual(PyObject *self, void *c) { (void)c; return PyLong_FromLongLong(LC(self)->residual); }
static PyObject *lc_get_batch(PyObject *self, void *c) { (void)c; return PyLong_FromLongLong(LC(self)->batch); }
static PyObject *lc_get_length(PyObject *self, void *c) { (void)c; return PyLong_FromLongLong(LC(self)->length); }
static PyObject *lc_get_sealed(PyObject *self, void *c) { (void)c; return PyLong_FromLongLong(LC(self)->sealed); }
static PyObject *lc_get_capacity(PyObject *self, void *c) { (void)c; return PyLong_FromLongLong(LC(self)->capacity); }
static PyObject *lc_get_window_capacity(PyObject *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(LC(self)->window_cap);
}
static PyObject *lc_get_nbytes(PyObject *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(palu_latent_cache_nbytes(LC(self)));
}
static PyObject *lc_get_reserved_bytes(PyObject *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(palu_latent_cache_reserved_bytes(LC(self)));
}

/* append(hk, hv, positions): hk (B, T, Rk), hv (B, T, Rv) float32, positions (B, T) int32. */
static PyObject *lc_append(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"hk", "hv", "positions", NULL};
    const char *func = "LatentCache.append";
    palu_lc_object *self = (palu_lc_object *)op;
    PyObject *hk_obj, *hv_obj, *pos_obj, *result = NULL;
    PyArrayObject *hk = NULL, *hv = NULL, *pos = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO:append", kwlist, &hk_obj, &hv_obj, &pos_obj)) return NULL;
    if (check_idle(self, func, 1) < 0) return NULL;
    if ((hk = typed_array(hk_obj, NPY_FLOAT32, "float32", "hk", func, 3)) == NULL) goto done;
    if ((hv = typed_array(hv_obj, NPY_FLOAT32, "float32", "hv", func, 3)) == NULL) goto done;
    if ((pos = typed_array(pos_obj, NPY_INT32, "int32", "positions", func, 2)) == NULL) goto done;
    const npy_intp B = PyArray_DIM(hk, 0), T = PyArray_DIM(hk, 1);
    if (PyArray_DIM(hk, 2) != self->cache.k.width || PyArray_DIM(hv, 0) != B || PyArray_DIM(hv, 1) != T ||
        PyArray_DIM(hv, 2) != self->cache.v.width || PyArray_DIM(pos, 0) != B || PyArray_DIM(pos, 1) != T) {
        PyErr_Format(PyExc_ValueError, "%s: expected hk (B, T, %lld), hv (B, T, %lld), positions (B, T); got hk "
                                       "(%zd, %zd, %zd), hv (%zd, %zd, %zd), positions (%zd, %zd)",
                     func, (long long)self->cache.k.width, (long long)self->cache.v.width, B, T, PyArray_DIM(hk, 2),
                     PyArray_DIM(hv, 0), PyArray_DIM(hv, 1), PyArray_DIM(hv, 2), PyArray_DIM(pos, 0),
                     PyArray_DIM(pos, 1));
        goto done;
    }
    {
        const float *hkp = PyArray_DATA(hk), *hvp = PyArray_DATA(hv);
        const int32_t *pp = PyArray_DATA(pos);
        palu_status st;
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        st = palu_latent_cache_append(&self->cache, B, T, hkp, hvp, pp);
        Py_END_ALLOW_THREADS
        self->busy = 0;
        if (st != PALU_OK) {
            PyObject *mod = module_of(op);
            if (mod != NULL) palu_py_raise(mod, st, func);
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(hk);
    Py_XDECREF(hv);
    Py_XDECREF(pos);
    return result;
}

/* read(start=0) -> (hk (B, S, Rk) float32, hv (B, S, Rv) float32, positions (B, S) int32), fresh arrays. */
static PyObject *lc_read(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"start", NULL};
    const char *func = "LatentCache.read";
    palu_lc_object *self = (palu_lc_object *)op;
    long long start = 0;
    PyObject *hk = NULL, *hv = NULL, *pos = NULL, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|L:read", kwlist, &start)) return NULL;
    if (check_idle(self, func, 0) < 0) return NULL;
    const palu_latent_cache *c = &self->cache;
    if (start < 0 || start > c->length) {
        PyErr_Format(PyExc_ValueError, "%s: `start` must be in [0, length] = [0, %lld], got %lld", func,
                     (long long)c->length, start);
        return NULL;
    }
    const npy_intp B = c->batch, S = c->length - start;
    npy_intp dk[3] = {B, S, c->k.width}, dv[3] = {B, S, c->v.width}, dp[2] = {B, S};
    if ((hk = PyArray_SimpleNew(3, dk, NPY_FLOAT32)) == NULL || (hv = PyArray_SimpleNew(3, dv, NPY_FLOAT32)) == NULL ||
        (pos = PyArray_SimpleNew(2, dp, NPY_INT32)) == NULL)
        goto done;
    {
        float *hkp = PyArray_DATA((PyArrayObject *)hk), *hvp = PyArray_DATA((PyArrayObject *)hv);
        int32_t *pp = PyArray_DATA((PyArrayObject *)pos);
        palu_status st;
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        st = palu_latent_cache_read(c, start, hkp, hvp, pp);
        Py_END_ALLOW_THREADS
        self->busy = 0;
        if (st != PALU_OK) {
            PyObject *mod = module_of(op);
            if (mod != NULL) palu_py_raise(mod, st, func);
            goto done;
        }
    }
    result = PyTuple_Pack(3, hk, hv, pos);
done:
    Py_XDECREF(hk);
    Py_XDECREF(hv);
    Py_XDECREF(pos);
    return result;
}

static PyObject *lc_crop(PyObject *op, PyObject *arg)
{
    const char *func = "LatentCache.crop";
    palu_lc_object *self = (palu_lc_object *)op;
    if (PyBool_Check(arg) || !PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s: `keep` must be an int, got %.200s", func, Py_TYPE(arg)->tp_name);
        return NULL;
    }
    long long keep = PyLong_AsLongLong(arg);
    if (keep == -1 && PyErr_Occurred()) return NULL;
    if (check_idle(self, func, 1) < 0) return NULL;
    palu_status st = palu_latent_cache_crop(&self->cache, keep);
    if (st != PALU_OK) {
        PyObject *mod = module_of(op);
        return mod ? palu_py_raise(mod, st, func) : NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *lc_select(PyObject *op, PyObject *arg)
{
    const char *func = "LatentCache.select";
    palu_lc_object *self = (palu_lc_object *)op;
    if (check_idle(self, func, 1) < 0) return NULL;
    PyArrayObject *idx = typed_array(arg, NPY_INT64, "int64", "index", func, 1);
    if (idx == NULL) return NULL;
    palu_status st = palu_latent_cache_select(&self->cache, PyArray_DATA(idx), PyArray_DIM(idx, 0));
    Py_DECREF(idx);
    if (st != PALU_OK) {
        PyObject *mod = module_of(op);
        return mod ? palu_py_raise(mod, st, func) : NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *lc_reset(PyObject *op, PyObject *Py_UNUSED(arg))
{
    palu_lc_object *self = (palu_lc_object *)op;
    if (check_idle(self, "LatentCache.reset", 1) < 0) return NULL;
    palu_latent_cache_reset(&self->cache);
    Py_RETURN_NONE;
}

/* buffer(name) -> LatentCacheBuffer, a read-only zero-copy view of one storage buffer (capacity included). */
static PyObject *lc_buffer(PyObject *op, PyObject *arg)
{
    const char *func = "LatentCache.buffer";
    palu_lc_object *self = (palu_lc_object *)op;
    if (check_idle(self, func, 0) < 0) return NULL;
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (name == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s: `name` must be a str, got %.200s", func, Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const palu_latent_cache *c = &self->cache;
    const palu_latent_side *s = name[0] == 'v' ? &c->v : &c->k;
    const char *field = (name[0] == 'k' || name[0] == 'v') && name[1] == '_' ? name + 2 : NULL;
    void *data = NULL;
    Py_ssize_t d1 = c->capacity, d2 = 0, item = 4;
    char fmt = 'f';
    int quantized_field = 0;
    if (strcmp(name, "positions") == 0) {
        data = c->positions;
        fmt = 'i';
    } else if (field && strcmp(field, "latent") == 0 && c->bits == 0) {
        data = s->latent;
        d2 = s->width;
    } else if (field && strcmp(field, "codes") == 0) {
        data = s->codes;
        d2 = s->word_off[s->n_groups];
        fmt = 'I';
        quantized_field = 1;
    } else if (field && (strcmp(field, "scales") == 0 || strcmp(field, "zeros") == 0)) {
        data = strcmp(field, "scales") == 0 ? s->scales : s->zeros;
        d2 = s->scale_off[s->n_groups];
        quantized_field = 1;
    } else if (field && strcmp(field, "window") == 0) {
        data = s->window;
        d1 = c->window_cap;
        d2 = s->width;
        quantized_field = 1;
    } else {
        PyErr_Format(PyExc_ValueError, "%s: unknown buffer %R for this cache; it has 'positions', %s", func, arg,
                     c->bits ? "'k_codes', 'k_scales', 'k_zeros', 'k_window' and the same for v"
                             : "'k_latent' and 'v_latent'");
        return NULL;
    }
    if (quantized_field && c->bits == 0) {
        PyErr_Format(PyExc_ValueError, "%s: %R exists only in quantized caches; this one holds 'positions', "
                                       "'k_latent' and 'v_latent'", func, arg);
        return NULL;
    }
    PyObject *mod = module_of(op);
    if (mod == NULL) return NULL;
    PyTypeObject *tp = palu_get_state(mod)->latent_cache_buffer_type;
    palu_lcb_object *buf = (palu_lcb_object *)tp->tp_alloc(tp, 0);
    if (buf == NULL) return NULL;
    buf->owner = Py_NewRef(op);
    buf->data = data;
    buf->itemsize = item;
    buf->format[0] = fmt;
    buf->format[1] = '\0';
    buf->shape[0] = c->batch;
    buf->shape[1] = d1;
    buf->ndim = d2 ? 3 : 2;
    if (d2) buf->shape[2] = d2;
    buf->strides[buf->ndim - 1] = item;
    for (int i = buf->ndim - 2; i >= 0; i--) buf->strides[i] = buf->strides[i + 1] * buf->shape[i + 1];
    buf->len = buf->shape[0] * buf->strides[0];
    if (data == NULL) buf->len = 0; /* nothing allocated yet: an empty view */
    self->exports++;
    return (PyObject *)buf;
}

static PyObject *lc_repr(PyObject *op)
{
    const palu_latent_cache *c = LC(op);
    PyObject *kr = ranks_tuple(&c->k), *vr = kr ? ranks_tuple(&c->v) : NULL, *out = NULL;
    if (vr != NULL) {
        if (c->bits)
            out = PyUnicode_FromFormat("LatentCache(k_ranks=%R, v_ranks=%R, bits=%d, residual=%lld, batch=%lld, "
                                       "length=%lld, sealed=%lld)", kr, vr, c->bits, (long long)c->residual,
                                       (long long)c->batch, (long long)c->length, (long long)c->sealed);
        else
            out = PyUnicode_FromFormat("LatentCache(k_ranks=%R, v_ranks=%R, batch=%lld, length=%lld)", kr, vr,
                                       (long long)c->batch, (long long)c->length);
    }
    Py_XDECREF(kr);
    Py_XDECREF(vr);
    return out;
}

static PyGetSetDef lc_getset[] = {
    {"k_ranks", lc_get_k_ranks, NULL, "Key latent rank of every head group (tuple).", NULL},
    {"v_ranks", lc_get_v_ranks, NULL, "Value latent rank of every head group (tuple).", NULL},
    {"bits", lc_get_bits, NULL, "Bits per quantized latent code (2, 3, 4, 8), or None.", NULL},
    {"residual", lc_get_residual, NULL, "Size of the full-precision window of newest tokens (quantized caches).", NULL},
    {"quant_group", lc_get_quant_group, NULL, "Channels per scale inside a head group, or None (whole group).", NULL},
    {"batch", lc_get_batch, NULL, "Sequences held (0 before the first append).", NULL},
    {"length", lc_get_length, NULL, "Slots filled (the same for every sequence).", NULL},
    {"sealed", lc_get_sealed, NULL, "Slots [0, sealed) are quantized.", NULL},
    {"capacity", lc_get_capacity, NULL, "Slots allocated (a multiple of 256).", NULL},
    {"window_capacity", lc_get_window_capacity, NULL, "Slots allocated in the full-precision window.", NULL},
    {"nbytes", lc_get_nbytes, NULL, "True bytes held for the filled slots (codes, scales, zeros, window, positions).",
     NULL},
    {"reserved_bytes", lc_get_reserved_bytes, NULL, "Bytes of every allocated buffer, capacity included.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef lc_methods[] = {
    {"append", (PyCFunction)(void (*)(void))lc_append, METH_VARARGS | METH_KEYWORDS,
     "append(hk, hv, positions): add T tokens; hk (B, T, Rk), hv (B, T, Rv) float32, positions (B, T) int32."},
    {"read", (PyCFunction)(void (*)(void))lc_read, METH_VARARGS | METH_KEYWORDS,
     "read(start=0) -> (hk, hv, positions): copies of slots [start, length) as attention reads them."},
    {"crop", lc_crop, METH_O, "crop(keep): keep the first `keep` slots (quantized slots past the new window "
                              "boundary return to the window as their dequantized values)."},
    {"select", lc_select, METH_O, "select(index): new batch order, sequence i <- old index[i] (int64, 1-D)."},
    {"reset", lc_reset, METH_NOARGS, "reset(): drop every token and buffer."},
    {"buffer", lc_buffer, METH_O,
     "buffer(name) -> read-only zero-copy buffer ('positions', 'k_latent', 'k_codes', 'k_scales', 'k_zeros', "
     "'k_window', and v_ alike); the cache refuses changes while one is alive."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lc_slots[] = {
    {Py_tp_doc, "LatentCache(k_ranks, v_ranks, *, bits=None, residual=128, quant_group=None)\n\n"
                "Host latent KV cache of one Palu attention layer (docs/design/latent_cache.md): per slot the key "
                "and value latents and the RoPE position; quantized latents keep the newest `residual` slots exact."},
    {Py_tp_new, lc_new},
    {Py_tp_dealloc, lc_dealloc},
    {Py_tp_repr, lc_repr},
    {Py_tp_getset, lc_getset},
    {Py_tp_methods, lc_methods},
    {0, NULL},
};

static PyType_Spec lc_spec = {
    .name = "palu_c._C.LatentCache",
    .basicsize = sizeof(palu_lc_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lc_slots,
};

/* ---- LatentCacheBuffer ------------------------------------------------------------------------------------ */

static int lcb_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    palu_lcb_object *self = (palu_lcb_object *)op;
    if (flags & PyBUF_WRITABLE) {
        PyErr_SetString(PyExc_BufferError, "LatentCacheBuffer: the cache's storage is read-only");
        return -1;
    }
    view->obj = Py_NewRef(op);
    view->buf = self->data;
    view->len = self->len;
    view->readonly = 1;
    view->itemsize = self->itemsize;
    view->format = (flags & PyBUF_FORMAT) ? self->format : NULL;
    view->ndim = self->ndim;
    view->shape = (flags & PyBUF_ND) ? self->shape : NULL;
    view->strides = (flags & PyBUF_STRIDES) ? self->strides : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

static void lcb_dealloc(PyObject *op)
{
    palu_lcb_object *self = (palu_lcb_object *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (self->owner != NULL) ((palu_lc_object *)self->owner)->exports--;
    Py_CLEAR(self->owner);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static int lcb_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(((palu_lcb_object *)op)->owner);
    return 0;
}

static PyObject *lcb_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    PyErr_Format(PyExc_TypeError, "cannot create %.100s objects directly; use LatentCache.buffer(name)", type->tp_name);
    return NULL;
}

static PyType_Slot lcb_slots[] = {
    {Py_tp_doc, "A read-only zero-copy view of one LatentCache storage buffer (buffer protocol); while it lives "
                "the cache refuses changes."},
    {Py_tp_new, lcb_new},
    {Py_tp_dealloc, lcb_dealloc},
    {Py_tp_traverse, lcb_traverse},
    {Py_bf_getbuffer, lcb_getbuffer},
    {0, NULL},
};

static PyType_Spec lcb_spec = {
    .name = "palu_c._C.LatentCacheBuffer",
    .basicsize = sizeof(palu_lcb_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lcb_slots,
};

/* ---- shared with py_latent_attention.c -------------------------------------------------------------------- */

const palu_latent_cache *palu_py_latent_cache_acquire(PyObject *module, PyObject *obj, const char *func)
{
    PyTypeObject *tp = palu_get_state(module)->latent_cache_type;
    if (!PyObject_TypeCheck(obj, tp)) {
        PyErr_Format(PyExc_TypeError, "%s: `cache` must be a palu_c._C.LatentCache, got %.200s", func,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    palu_lc_object *self = (palu_lc_object *)obj;
    if (check_idle(self, func, 0) < 0) return NULL;
    self->busy = 1;
    return &self->cache;
}

void palu_py_latent_cache_release(PyObject *obj) { ((palu_lc_object *)obj)->busy = 0; }

int palu_latent_cache_module_init(PyObject *mod)
{
    palu_module_state *st = palu_get_state(mod);
    if (PyModule_AddIntConstant(mod, "LATENT_CACHE_VERSION", PALU_LATENT_CACHE_VERSION) < 0) return -1;
    if (PyModule_AddIntConstant(mod, "LATENT_CACHE_CHUNK", PALU_LATENT_CACHE_CHUNK) < 0) return -1;
    PyObject *tp = PyType_FromModuleAndSpec(mod, &lc_spec, NULL);
    if (tp == NULL) return -1;
    Py_XSETREF(st->latent_cache_type, (PyTypeObject *)tp);
    if (PyModule_AddObjectRef(mod, "LatentCache", tp) < 0) return -1;
    tp = PyType_FromModuleAndSpec(mod, &lcb_spec, NULL);
    if (tp == NULL) return -1;
    Py_XSETREF(st->latent_cache_buffer_type, (PyTypeObject *)tp);
    return PyModule_AddObjectRef(mod, "LatentCacheBuffer", tp);
}
