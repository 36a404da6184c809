/* py_common.c -- status -> exception mapping and argument conversion shared by the bindings. */
#include "py_common.h"

PyObject *palu_py_raise(PyObject *module, palu_status status, const char *func)
{
    PyObject *cls;
    switch (status) {
    case PALU_ERR_VALUE: cls = PyExc_ValueError; break;
    case PALU_ERR_TYPE: cls = PyExc_TypeError; break;
    case PALU_ERR_NOMEM: return PyErr_NoMemory();
    case PALU_ERR_LINALG: {
        palu_module_state *st = module ? palu_get_state(module) : NULL;
        cls = (st && st->linalg_error) ? st->linalg_error : PyExc_RuntimeError;
        break;
    }
    case PALU_ERR_UNSUPPORTED: cls = PyExc_NotImplementedError; break;
    case PALU_ERR_CUDA:
    case PALU_ERR_INTERNAL:
    default: cls = PyExc_RuntimeError; break;
    }
    PyErr_Format(cls, "%s: %s", func, palu_last_error());
    return NULL;
}

PyArrayObject *palu_py_float_array(PyObject *obj, const char *name, const char *func, int min_nd, int max_nd,
                                   int flags)
{
    PyArrayObject *arr = NULL, *out = NULL;
    if (obj == NULL || obj == Py_None) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be an array, got None", func, name);
        return NULL;
    }
    arr = (PyArrayObject *)PyArray_FROM_O(obj);
    if (arr == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be a NumPy array or DLPack tensor, got %.200s", func, name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    int type = PyArray_TYPE(arr);
    if (type != NPY_FLOAT32 && type != NPY_FLOAT64) {
        PyArray_Descr *d = PyArray_DESCR(arr);
        PyObject *dname = PyObject_Str((PyObject *)d);
        PyErr_Format(PyExc_TypeError, "%s: `%s` must be float32 or float64, got %S; convert it with .astype(np.float32)",
                     func, name, dname ? dname : Py_None);
        Py_XDECREF(dname);
        goto fail;
    }
    int nd = PyArray_NDIM(arr);
    if (nd < min_nd || nd > max_nd) {
        if (min_nd == max_nd)
            PyErr_Format(PyExc_ValueError, "%s: `%s` must be %d-dimensional, got %d dimensions", func, name, min_nd,
                         nd);
        else
            PyErr_Format(PyExc_ValueError, "%s: `%s` must have %d to %d dimensions, got %d", func, name, min_nd,
                         max_nd, nd);
        goto fail;
    }
    if (!(flags & PALU_ARR_ALLOW_EMPTY) && PyArray_SIZE(arr) == 0) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is empty (shape has a zero); nothing to compute", func, name);
        goto fail;
    }
    out = (PyArrayObject *)PyArray_FROM_OTF((PyObject *)arr, type, NPY_ARRAY_IN_ARRAY);
    if (out == NULL) goto fail;
    Py_CLEAR(arr);
    if (!(flags & PALU_ARR_ALLOW_NONFINITE)) {
        size_t bad;
        const void *data = PyArray_DATA(out);
        size_t n = (size_t)PyArray_SIZE(out);
        palu_dtype dt = palu_py_dtype(out);
        Py_BEGIN_ALLOW_THREADS
        bad = palu_count_nonfinite(data, n, dt);
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` contains %zu NaN/Inf value(s); clean the input first", func, name,
                         bad);
            goto fail;
        }
    }
    return out;
fail:
    Py_XDECREF(arr);
    Py_XDECREF(out);
    return NULL;
}
