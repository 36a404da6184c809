/* py_hadamard.c -- bindings of the Hadamard-type transform: hadamard, hadamard_matrix (CPU, NumPy) and
 * hadamard_cuda (DLPack capsules of torch CUDA tensors, on the caller's stream).
 *
 * The construction and conventions are documented in hadamard.h; palu_c/hadamard.py is the public wrapper.
 */
#include "py_common.h"

#include "py_dlpack.h"
#include "hadamard.h"

#ifdef PALU_WITH_CUDA
#include "hadamard.cuh"
#endif

/* hadamard(x, axis, inverse) -> new C-contiguous ndarray of x's dtype, transformed along `axis`. */
static PyObject *palu_py_hadamard(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "axis", "inverse", NULL};
    PyObject *x_obj = NULL;
    Py_ssize_t axis = -1;
    int inverse = 0;
    PyArrayObject *arr = NULL, *work = NULL;
    PyObject *swapped = NULL, *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|np:hadamard", kwlist, &x_obj, &axis, &inverse)) return NULL;

    arr = palu_py_float_array(x_obj, "x", "hadamard", 1, NPY_MAXDIMS, 0);
    if (arr == NULL) goto done;
    const int nd = PyArray_NDIM(arr);
    if (axis < -nd || axis >= nd) {
        PyErr_Format(PyExc_ValueError, "hadamard: `axis` %zd is out of range for an array with %d dimension(s) "
                     "(use %d..%d)", axis, nd, -nd, nd - 1);
        goto done;
    }
    if (axis < 0) axis += nd;
    /* Swapping `axis` with the last one (and back afterwards) is enough: rows are independent. */
    if (axis != nd - 1) {
        swapped = PyArray_SwapAxes(arr, (int)axis, nd - 1);
        if (swapped == NULL) goto done;
    }
    /* Always a fresh array we own: the input is never written, even when conversion made no copy. */
    work = (PyArrayObject *)PyArray_NewCopy(swapped ? (PyArrayObject *)swapped : arr, NPY_CORDER);
    if (work == NULL) goto done;

    palu_hadamard_plan plan;
    palu_status st = palu_hadamard_plan_init(&plan, (size_t)PyArray_DIM(work, nd - 1));
    if (st == PALU_OK) {
        void *data = PyArray_DATA(work);
        size_t rows = (size_t)(PyArray_SIZE(work) / PyArray_DIM(work, nd - 1));
        palu_dtype dt = palu_py_dtype(work);
        Py_BEGIN_ALLOW_THREADS
        st = palu_hadamard_rows(&plan, data, rows, dt, inverse);
        Py_END_ALLOW_THREADS
    }
    if (st != PALU_OK) {
        palu_py_raise(module, st, "hadamard");
        goto done;
    }
    if (axis != nd - 1) {
        Py_CLEAR(swapped);
        swapped = PyArray_SwapAxes(work, (int)axis, nd - 1);
        if (swapped == NULL) goto done;
        result = PyArray_NewCopy((PyArrayObject *)swapped, NPY_CORDER);
    } else {
        result = (PyObject *)work;
        work = NULL;
    }
done:
    Py_XDECREF(arr);
    Py_XDECREF(swapped);
    Py_XDECREF(work);
    return result;
}

/* hadamard_matrix(n, dtype) -> (n, n) ndarray H with hadamard(x) == x @ H.T. */
static PyObject *palu_py_hadamard_matrix(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"n", "dtype", NULL};
    Py_ssize_t n = 0;
    PyArray_Descr *descr = NULL;
    PyObject *result = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|O&:hadamard_matrix", kwlist, &n, PyArray_DescrConverter2,
                                     &descr))
        return NULL;
    int type = descr ? descr->type_num : NPY_FLOAT64;
    if (type != NPY_FLOAT32 && type != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "hadamard_matrix: `dtype` must be float32 or float64, got %S", (PyObject *)descr);
        goto done;
    }
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "hadamard_matrix: `n` must be >= 1, got %zd", n);
        goto done;
    }
    if ((size_t)n > (size_t)NPY_MAX_INTP / (size_t)n) {
        PyErr_Format(PyExc_ValueError, "hadamard_matrix: `n` = %zd is too large for an n x n array", n);
        goto done;
    }
    npy_intp dims[2] = {n, n};
    result = PyArray_SimpleNew(2, dims, type);
    if (result == NULL) goto done;
    void *data = PyArray_DATA((PyArrayObject *)result);
    palu_dtype dt = type == NPY_FLOAT32 ? PALU_DTYPE_F32 : PALU_DTYPE_F64;
    palu_status st;
    Py_BEGIN_ALLOW_THREADS
    st = palu_hadamard_matrix((size_t)n, data, dt);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        Py_CLEAR(result);
        palu_py_raise(module, st, "hadamard_matrix");
    }
done:
    Py_XDECREF(descr);
    return result;
}

/* hadamard_cuda(x, out, stream, inverse=False) -> None. x, out: DLPack capsules of CUDA tensors of one
 * shape and dtype (float32/float16/bfloat16), rows contiguous; stream: the cudaStream_t as an int. */
static PyObject *palu_py_hadamard_cuda(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "out", "stream", "inverse", NULL};
    PyObject *x_cap = NULL, *out_cap = NULL, *stream_obj = NULL;
    int inverse = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO|p:hadamard_cuda", kwlist, &x_cap, &out_cap, &stream_obj,
                                     &inverse))
        return NULL;
#ifndef PALU_WITH_CUDA
    (void)module;
    PyErr_SetString(PyExc_RuntimeError, "hadamard_cuda: palu_c was built without CUDA; reinstall with nvcc available "
                                        "(PALU_C_CUDA=1)");
    return NULL;
#else
    PyObject *result = NULL;
    palu_dl_tensor x = {0}, out = {0};
    palu_dl_rows xr, outr;
    if (!PyLong_Check(stream_obj)) {
        PyErr_Format(PyExc_TypeError, "hadamard_cuda: `stream` must be an int (torch.cuda.Stream.cuda_stream), got "
                     "%.200s", Py_TYPE(stream_obj)->tp_name);
        return NULL;
    }
    void *stream = PyLong_AsVoidPtr(stream_obj);
    if (stream == NULL && PyErr_Occurred()) return NULL;

    if (palu_dl_take(x_cap, "x", "hadamard_cuda", &x) < 0) goto done;
    if (palu_dl_take(out_cap, "out", "hadamard_cuda", &out) < 0) goto done;
    if (palu_dl_check(&x, kDLCUDA, 0, "x", "hadamard_cuda") < 0) goto done;
    if (palu_dl_check(&out, kDLCUDA, 1, "out", "hadamard_cuda") < 0) goto done;
    if (palu_dl_same_layout(&x, &out, "x", "out", "hadamard_cuda") < 0) goto done;
    if (palu_dl_as_rows(&x, 0, "x", "hadamard_cuda", &xr) < 0) goto done;
    if (palu_dl_as_rows(&out, 1, "out", "hadamard_cuda", &outr) < 0) goto done;

    palu_status st;
    Py_BEGIN_ALLOW_THREADS
    st = palu_hadamard_cuda(xr.data, xr.row_stride, outr.data, outr.row_stride, xr.rows, xr.n, xr.dtype, inverse,
                            (int)xr.device.device_id, stream);
    Py_END_ALLOW_THREADS
    if (st != PALU_OK) {
        palu_py_raise(module, st, "hadamard_cuda");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    palu_dl_release(&out);
    palu_dl_release(&x);
    return result;
#endif
}

static PyMethodDef palu_hadamard_methods[] = {
    {"hadamard", (PyCFunction)(void (*)(void))palu_py_hadamard, METH_VARARGS | METH_KEYWORDS,
     "hadamard(x, axis=-1, inverse=False) -> ndarray (see palu_c.hadamard)."},
    {"hadamard_matrix", (PyCFunction)(void (*)(void))palu_py_hadamard_matrix, METH_VARARGS | METH_KEYWORDS,
     "hadamard_matrix(n, dtype=float64) -> (n, n) ndarray (see palu_c.hadamard_matrix)."},
    {"hadamard_cuda", (PyCFunction)(void (*)(void))palu_py_hadamard_cuda, METH_VARARGS | METH_KEYWORDS,
     "hadamard_cuda(x, out, stream, inverse=False) -> None: x, out DLPack capsules of CUDA tensors."},
    {NULL, NULL, 0, NULL},
};

int palu_hadamard_module_init(PyObject *mod) { return PyModule_AddFunctions(mod, palu_hadamard_methods); }
