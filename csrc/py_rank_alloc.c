/* py_rank_alloc.c -- binding of palu_rank_alloc (rank_alloc.h) as palu_c._C.allocate_ranks.
 *
 * _C.allocate_ranks(scores, sizes, budget, method, multiple_of, minimum, spectra, costs) -> int64 (N,)
 *   scores  (N,) float32/float64, finite          sizes  (N,) integer dtype (not bool)
 *   budget  float                                   method "proportional" | "greedy"
 *   multiple_of, minimum  int                       spectra None or a sequence of N 1-D float arrays
 *   costs   None or (N,) float32/float64, finite
 * The public wrapper (palu_c/ranks.py) converts other real inputs to these dtypes first; value checks
 * (signs, caps, budget) live in the numeric file so that every caller gets them.
 */
#include "py_common.h"
#include "rank_alloc.h"

#define FUNC "allocate_ranks"

/* New reference to a C-contiguous float64 vector of `obj` (float32/float64 in), or NULL with an exception.
 * `n_expected` < 0 accepts any length; `allow_empty` admits zero-length vectors. */
static PyArrayObject *f64_vector(PyObject *obj, const char *name, npy_intp n_expected, int allow_empty)
{
    PyArrayObject *arr = palu_py_float_array(obj, name, FUNC, 1, 1, allow_empty ? PALU_ARR_ALLOW_EMPTY : 0);
    PyArrayObject *out = NULL;
    if (arr == NULL) goto done;
    if (n_expected >= 0 && PyArray_DIM(arr, 0) != n_expected) {
        PyErr_Format(PyExc_ValueError, FUNC ": `%s` has %zd entries but `scores` has %zd; pass one per item", name,
                     (Py_ssize_t)PyArray_DIM(arr, 0), (Py_ssize_t)n_expected);
        goto done;
    }
    out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY); /* float32 -> 64 */
done:
    Py_XDECREF(arr);
    return out;
}

/* New reference to a C-contiguous int64 vector of length n from an integer array, or NULL with an exception. */
static PyArrayObject *sizes_vector(PyObject *obj, npy_intp n)
{
    PyArrayObject *arr = NULL, *out = NULL;
    if (obj == Py_None) {
        PyErr_SetString(PyExc_TypeError, FUNC ": `sizes` must be an integer array, got None");
        goto done;
    }
    arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (arr == NULL) goto done;
    if (!PyArray_ISINTEGER(arr)) {
        PyObject *dname = PyObject_Str((PyObject *)PyArray_DESCR(arr));
        PyErr_Format(PyExc_TypeError, FUNC ": `sizes` must hold integers (the largest rank of each item), got dtype "
                     "%S", dname ? dname : Py_None);
        Py_XDECREF(dname);
        goto done;
    }
    if (PyArray_NDIM(arr) != 1 || PyArray_DIM(arr, 0) != n) {
        PyErr_Format(PyExc_ValueError, FUNC ": `sizes` must be 1-D with one entry per score (%zd), got %d-D with "
                     "%zd entries", (Py_ssize_t)n, PyArray_NDIM(arr), (Py_ssize_t)PyArray_SIZE(arr));
        goto done;
    }
    if (PyArray_TYPE(arr) == NPY_UINT64 || PyArray_TYPE(arr) == NPY_ULONGLONG) {
        /* no safe cast to int64: range-check here (numpy's unsafe cast would wrap) */
        PyArrayObject *c = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, NPY_UINT64, NPY_ARRAY_IN_ARRAY);
        if (c == NULL) goto done;
        const npy_uint64 *v = PyArray_DATA(c);
        for (npy_intp i = 0; i < n; i++)
            if (v[i] > (npy_uint64)INT64_MAX) {
                PyErr_Format(PyExc_ValueError, FUNC ": `sizes`[%zd] = %llu is too large (at most 2^53)", (Py_ssize_t)i,
                             (unsigned long long)v[i]);
                Py_DECREF(c);
                goto done;
            }
        out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)c, NPY_INT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        Py_DECREF(c);
    } else {
        out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, NPY_INT64, NPY_ARRAY_IN_ARRAY);
    }
done:
    Py_XDECREF(arr);
    return out;
}

static PyObject *palu_py_allocate_ranks(PyObject *module, PyObject *args)
{
    PyObject *scores_obj, *sizes_obj, *spectra_obj, *costs_obj;
    PyObject *spectra_seq = NULL, *result = NULL;
    PyArrayObject *scores = NULL, *sizes = NULL, *costs = NULL, *out = NULL;
    PyArrayObject **spec = NULL;      /* (N,) owned references, or NULL */
    const double **spec_ptr = NULL;   /* (N,) borrowed data pointers of spec[] */
    int64_t *spec_len = NULL;         /* (N,) */
    npy_intp n = 0;
    double budget;
    const char *method_name;
    long long multiple_of, minimum;
    palu_rank_method method;
    palu_rank_problem problem;
    palu_status st;

    if (!PyArg_ParseTuple(args, "OOdsLLOO:allocate_ranks", &scores_obj, &sizes_obj, &budget, &method_name,
                          &multiple_of, &minimum, &spectra_obj, &costs_obj))
        return NULL;
    if (strcmp(method_name, "proportional") == 0) method = PALU_RANK_METHOD_PROPORTIONAL;
    else if (strcmp(method_name, "greedy") == 0) method = PALU_RANK_METHOD_GREEDY;
    else {
        PyErr_Format(PyExc_ValueError, FUNC ": unknown `method` '%s'; choose 'proportional' or 'greedy'",
                     method_name);
        goto done;
    }
    if ((scores = f64_vector(scores_obj, "scores", -1, 0)) == NULL) goto done;
    n = PyArray_DIM(scores, 0);
    if ((sizes = sizes_vector(sizes_obj, n)) == NULL) goto done;
    if (costs_obj != Py_None && (costs = f64_vector(costs_obj, "costs", n, 0)) == NULL) goto done;
    if (spectra_obj != Py_None) {
        if (PyArray_Check(spectra_obj) || PyUnicode_Check(spectra_obj) || PyBytes_Check(spectra_obj)) {
            PyErr_SetString(PyExc_TypeError, FUNC ": `spectra` must be a list of N 1-D arrays, one per item");
            goto done;
        }
        spectra_seq = PySequence_Fast(spectra_obj, FUNC ": `spectra` must be a list of N 1-D arrays, one per item");
        if (spectra_seq == NULL) goto done;
        if (PySequence_Fast_GET_SIZE(spectra_seq) != n) {
            PyErr_Format(PyExc_ValueError, FUNC ": `spectra` has %zd arrays but `scores` has %zd items; pass one "
                         "spectrum per item", PySequence_Fast_GET_SIZE(spectra_seq), (Py_ssize_t)n);
            goto done;
        }
        spec = PyMem_Calloc((size_t)n, sizeof *spec);
        spec_ptr = PyMem_Calloc((size_t)n, sizeof *spec_ptr);
        spec_len = PyMem_Calloc((size_t)n, sizeof *spec_len);
        if (!spec || !spec_ptr || !spec_len) {
            PyErr_NoMemory();
            goto done;
        }
        for (npy_intp i = 0; i < n; i++) {
            char name[48];
            snprintf(name, sizeof name, "spectra[%zd]", (Py_ssize_t)i);
            spec[i] = f64_vector(PySequence_Fast_GET_ITEM(spectra_seq, i), name, -1, 1);
            if (spec[i] == NULL) goto done;
            spec_ptr[i] = PyArray_DATA(spec[i]);
            spec_len[i] = (int64_t)PyArray_DIM(spec[i], 0);
        }
    }
    if ((out = (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_INT64)) == NULL) goto done;

    problem = (palu_rank_problem){
        .n = (size_t)n,
        .scores = PyArray_DATA(scores),
        .sizes = PyArray_DATA(sizes),
        .costs = costs ? PyArray_DATA(costs) : NULL,
        .budget = budget,
        .multiple_of = (int64_t)multiple_of,
        .minimum = (int64_t)minimum,
        .spectra = spec_ptr,
        .spectra_len = spec_len,
    };
    Py_BEGIN_ALLOW_THREADS
    st = palu_rank_alloc(&problem, method, (int64_t *)PyArray_DATA(out));
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, FUNC);
        goto done;
    }
    result = (PyObject *)out;
    out = NULL;
done:
    if (spec)
        for (npy_intp i = 0; i < n; i++) Py_XDECREF(spec[i]);
    PyMem_Free(spec);
    PyMem_Free(spec_ptr);
    PyMem_Free(spec_len);
    Py_XDECREF(spectra_seq);
    Py_XDECREF(scores);
    Py_XDECREF(sizes);
    Py_XDECREF(costs);
    Py_XDECREF(out);
    return result;
}

static PyMethodDef palu_rank_alloc_methods[] = {
    {"allocate_ranks", palu_py_allocate_ranks, METH_VARARGS,
     "allocate_ranks(scores, sizes, budget, method, multiple_of, minimum, spectra, costs) -> int64 ranks\n\n"
     "Low-level entry point; use palu_c.allocate_ranks (palu_c/ranks.py, rank_alloc.h for the exact rules)."},
    {NULL, NULL, 0, NULL},
};

int palu_rank_alloc_module_init(PyObject *mod) { return PyModule_AddFunctions(mod, palu_rank_alloc_methods); }
