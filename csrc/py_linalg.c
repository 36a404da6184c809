/* py_linalg.c -- bindings for svd.c and lowrank.c: convert and validate arguments, release the GIL
 * around the numeric work, return NumPy arrays allocated here. Method-name parsing and defaults live in
 * palu_c/linalg.py; everything that decides correctness is checked here too, so _C is safe to call directly. */
#include "py_common.h"
#include "lowrank.h"
#include "svd.h"

enum { SVD_EXACT = 0, SVD_RANDOMIZED = 1 };

static PyObject *new_matrix(int nd, npy_intp d0, npy_intp d1, int type)
{
    npy_intp dims[2] = {d0, d1};
    return PyArray_SimpleNew(nd, dims, type);
}

/* _C.svd(a, rank, method, oversample, power_iters, seed) -> (U, S, Vt) */
static PyObject *py_svd(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"a", "rank", "method", "oversample", "power_iters", "seed", NULL};
    PyObject *a_obj, *result = NULL;
    long long rank, oversample, power_iters;
    unsigned long long seed;
    int method;
    PyArrayObject *a = NULL, *u = NULL, *s = NULL, *vt = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLiLLK:svd", kwlist, &a_obj, &rank, &method, &oversample,
                                     &power_iters, &seed))
        return NULL;
    if ((a = palu_py_float_array(a_obj, "a", "svd", 2, 2, 0)) == NULL) return NULL;
    npy_intp m = PyArray_DIM(a, 0), n = PyArray_DIM(a, 1), mn = m < n ? m : n;
    if (rank < 1 || rank > mn) {
        PyErr_Format(PyExc_ValueError, "svd: rank must be in [1, min(m, n)] = [1, %zd] for a %zd x %zd matrix, got %lld",
                     mn, m, n, rank);
        goto done;
    }
    if (method != SVD_EXACT && method != SVD_RANDOMIZED) {
        PyErr_Format(PyExc_ValueError, "svd: unknown method code %d", method);
        goto done;
    }
    int type = PyArray_TYPE(a);
    u = (PyArrayObject *)new_matrix(2, m, (npy_intp)rank, type);
    s = (PyArrayObject *)new_matrix(1, (npy_intp)rank, 0, type);
    vt = (PyArrayObject *)new_matrix(2, (npy_intp)rank, n, type);
    if (!u || !s || !vt) goto done;
    palu_status st;
    palu_dtype dt = palu_py_dtype(a);
    const void *ap = PyArray_DATA(a);
    void *up = PyArray_DATA(u), *sp = PyArray_DATA(s), *vtp = PyArray_DATA(vt);
    Py_BEGIN_ALLOW_THREADS
    if (method == SVD_EXACT)
        st = palu_svd_exact(dt, ap, m, n, rank, up, sp, vtp);
    else
        st = palu_svd_randomized(dt, ap, m, n, rank, oversample, power_iters, seed, up, sp, vtp);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, "svd");
        goto done;
    }
    result = PyTuple_Pack(3, u, s, vt);
done:
    Py_XDECREF(a);
    Py_XDECREF(u);
    Py_XDECREF(s);
    Py_XDECREF(vt);
    return result;
}

/* Convert `ranks` (a sequence of ints) into a malloc'ed int64 array of length n_groups. */
static int64_t *parse_ranks(PyObject *ranks_obj, Py_ssize_t *n_out)
{
    PyObject *seq = PySequence_Fast(ranks_obj, "lowrank_factor_grouped: `ranks` must be a sequence of ints");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t *ranks = NULL;
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "lowrank_factor_grouped: `ranks` is empty; give one rank per group");
        goto done;
    }
    ranks = (int64_t *)PyMem_Malloc(sizeof(int64_t) * (size_t)n);
    if (ranks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (PyBool_Check(item) || !PyIndex_Check(item)) {
            PyErr_Format(PyExc_TypeError, "lowrank_factor_grouped: ranks[%zd] must be an int, got %.100s", i,
                         Py_TYPE(item)->tp_name);
            goto fail;
        }
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) goto fail;
        ranks[i] = v;
    }
    *n_out = n;
    goto done;
fail:
    PyMem_Free(ranks);
    ranks = NULL;
done:
    Py_DECREF(seq);
    return ranks;
}

/* _C.lowrank_factor_grouped(w, ranks, group_rows, gram) -> (down, [up_g ...], shift) */
static PyObject *py_lowrank_factor_grouped(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"w", "ranks", "group_rows", "gram", NULL};
    PyObject *w_obj, *ranks_obj, *gram_obj = Py_None, *result = NULL, *ups_list = NULL;
    long long group_rows;
    PyArrayObject *w = NULL, *gram = NULL, *gram64 = NULL, *down = NULL, *ups_flat = NULL;
    int64_t *ranks = NULL;
    Py_ssize_t n_groups = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOL|O:lowrank_factor_grouped", kwlist, &w_obj, &ranks_obj,
                                     &group_rows, &gram_obj))
        return NULL;
    if ((w = palu_py_float_array(w_obj, "w", "lowrank_factor", 2, 2, 0)) == NULL) goto done;
    if ((ranks = parse_ranks(ranks_obj, &n_groups)) == NULL) goto done;
    npy_intp out = PyArray_DIM(w, 0), in = PyArray_DIM(w, 1);
    if (group_rows < 1 || out % group_rows != 0 || out / group_rows != n_groups) {
        PyErr_Format(PyExc_ValueError,
                     "lowrank_factor_grouped: w has %zd rows; group_rows=%lld must divide it into exactly len(ranks)=%zd groups",
                     out, group_rows, n_groups);
        goto done;
    }
    int64_t max_r = group_rows < in ? group_rows : in, rank_sum = 0, up_elems = 0;
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        if (ranks[g] < 1 || ranks[g] > max_r) {
            PyErr_Format(PyExc_ValueError,
                         "lowrank_factor: rank %lld (group %zd) is out of range; it must be in [1, min(group_rows, in)] = [1, %lld]",
                         (long long)ranks[g], g, (long long)max_r);
            goto done;
        }
        rank_sum += ranks[g];
        up_elems += group_rows * ranks[g];
    }
    if (gram_obj != Py_None) {
        if ((gram = palu_py_float_array(gram_obj, "gram", "lowrank_factor", 2, 2, 0)) == NULL) goto done;
        if (PyArray_DIM(gram, 0) != in || PyArray_DIM(gram, 1) != in) {
            PyErr_Format(PyExc_ValueError, "lowrank_factor: gram must be (in, in) = (%zd, %zd) for w of shape (%zd, %zd), got (%zd, %zd)",
                         in, in, out, in, PyArray_DIM(gram, 0), PyArray_DIM(gram, 1));
            goto done;
        }
        gram64 = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)gram, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY);
        if (gram64 == NULL) goto done;
    }
    int type = PyArray_TYPE(w);
    down = (PyArrayObject *)new_matrix(2, (npy_intp)rank_sum, in, type);
    ups_flat = (PyArrayObject *)new_matrix(1, (npy_intp)up_elems, 0, type);
    if (!down || !ups_flat) goto done;
    double shift = 0.0;
    palu_status st;
    palu_dtype dt = palu_py_dtype(w);
    const void *wp = PyArray_DATA(w);
    const double *gp = gram64 ? (const double *)PyArray_DATA(gram64) : NULL;
    void *dp = PyArray_DATA(down), *upp = PyArray_DATA(ups_flat);
    Py_BEGIN_ALLOW_THREADS
    st = palu_lowrank_factor_grouped(dt, wp, out, in, group_rows, ranks, n_groups, gp, dp, upp, &shift);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, "lowrank_factor");
        goto done;
    }
    /* Hand each group its own contiguous array (copies of the flat buffer's slices: small, and the
     * caller gets independent arrays it may keep or modify). */
    if ((ups_list = PyList_New(n_groups)) == NULL) goto done;
    npy_intp off = 0;
    for (Py_ssize_t g = 0; g < n_groups; g++) {
        PyArrayObject *up_g = (PyArrayObject *)new_matrix(2, (npy_intp)group_rows, (npy_intp)ranks[g], type);
        if (up_g == NULL) goto done;
        memcpy(PyArray_DATA(up_g), (char *)PyArray_DATA(ups_flat) + off * PyArray_ITEMSIZE(ups_flat),
               (size_t)PyArray_NBYTES(up_g));
        off += (npy_intp)(group_rows * ranks[g]);
        PyList_SET_ITEM(ups_list, g, (PyObject *)up_g);
    }
    result = Py_BuildValue("(OOd)", down, ups_list, shift);
done:
    PyMem_Free(ranks);
    Py_XDECREF(w);
    Py_XDECREF(gram);
    Py_XDECREF(gram64);
    Py_XDECREF(down);
    Py_XDECREF(ups_flat);
    Py_XDECREF(ups_list);
    return result;
}

static PyMethodDef linalg_methods[] = {
    {"svd", (PyCFunction)(void (*)(void))py_svd, METH_VARARGS | METH_KEYWORDS,
     "svd(a, rank, method, oversample, power_iters, seed) -> (U, S, Vt); method 0 exact, 1 randomized."},
    {"lowrank_factor_grouped", (PyCFunction)(void (*)(void))py_lowrank_factor_grouped, METH_VARARGS | METH_KEYWORDS,
     "lowrank_factor_grouped(w, ranks, group_rows, gram=None) -> (down, ups, shift)."},
    {NULL, NULL, 0, NULL},
};

int palu_linalg_module_init(PyObject *mod)
{
    if (PyModule_AddFunctions(mod, linalg_methods) < 0) return -1;
    if (PyModule_AddIntConstant(mod, "SVD_EXACT", SVD_EXACT) < 0) return -1;
    return PyModule_AddIntConstant(mod, "SVD_RANDOMIZED", SVD_RANDOMIZED);
}
