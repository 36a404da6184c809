/* py_quant.c -- palu_c._C.quantize and the QuantizedTensor heap type (binding of csrc/quant.c).
 *
 * QuantizedTensor owns three C-allocated, read-only NumPy arrays (payload, scales, zeros) and hands them
 * out without copying, so NumPy (and DLPack consumers through ndarray.__dlpack__) see the packed storage
 * itself. Instances are created only by quantize(); the type is a heap type stored in the module state.
 *
 * Shape legend: the input (..., n) is viewed as (rows, n); G = n / group_size; W = ceil(n*bits / 32).
 */
#include "py_common.h"
#include "quant.h"

#include <structmember.h>

typedef struct palu_qt_object {
    PyObject_HEAD
    palu_quant_params params; /* bits, group_size (effective, never 0), symmetric, clip */
    npy_intp rows;            /* product of all dims but the last */
    npy_intp n;               /* last-axis length */
    Py_ssize_t nbytes;        /* payload + scales (+ zeros) bytes, fixed at creation */
    PyObject *shape;          /* owned: tuple, the original shape */
    PyObject *dtype;          /* owned: numpy dtype of the original array (dequantize returns it) */
    PyObject *payload;        /* owned: ndarray (rows, W) uint32, read-only */
    PyObject *scales;         /* owned: ndarray (rows, G) float32, read-only */
    PyObject *zeros;          /* owned: ndarray (rows, G) float32, read-only; NULL when symmetric */
} palu_qt_object;

/* ---- the type ----------------------------------------------------------------------------------- */

static int qt_traverse(PyObject *self, visitproc visit, void *arg)
{
    palu_qt_object *qt = (palu_qt_object *)self;
    Py_VISIT(Py_TYPE(self)); /* instances of heap types own a reference to their type */
    Py_VISIT(qt->shape);
    Py_VISIT(qt->dtype);
    Py_VISIT(qt->payload);
    Py_VISIT(qt->scales);
    Py_VISIT(qt->zeros);
    return 0;
}

static int qt_clear(PyObject *self)
{
    palu_qt_object *qt = (palu_qt_object *)self;
    Py_CLEAR(qt->shape);
    Py_CLEAR(qt->dtype);
    Py_CLEAR(qt->payload);
    Py_CLEAR(qt->scales);
    Py_CLEAR(qt->zeros);
    return 0;
}

static void qt_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    (void)qt_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *qt_new(PyTypeObject *Py_UNUSED(type), PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwargs))
{
    PyErr_SetString(PyExc_TypeError,
                    "QuantizedTensor cannot be constructed directly; use palu_c.quantize(x, bits, ...)");
    return NULL;
}

/* True when `arr` still has the size and layout this object created it with (the arrays are handed out,
 * so a caller could reshape or resize them in place; dequantize must then refuse rather than misread). */
static int array_intact(PyObject *arr, int type, npy_intp d0, npy_intp d1)
{
    PyArrayObject *a = (PyArrayObject *)arr;
    return PyArray_TYPE(a) == type && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISALIGNED(a) &&
           PyArray_SIZE(a) == d0 * d1;
}

static PyObject *qt_dequantize(PyObject *self, PyObject *Py_UNUSED(args))
{
    palu_qt_object *qt = (palu_qt_object *)self;
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &palu_module_def); /* borrowed */
    PyArrayObject *out = NULL;
    npy_intp dims[NPY_MAXDIMS];
    Py_ssize_t nd = PyTuple_GET_SIZE(qt->shape); /* built by quantize from a valid array: 1..NPY_MAXDIMS ints */
    palu_status st;
    npy_intp W = (npy_intp)palu_quant_row_words((size_t)qt->n, qt->params.bits);
    npy_intp G = qt->n / (npy_intp)qt->params.group_size;
    if (module == NULL) goto cleanup;
    if (!array_intact(qt->payload, NPY_UINT32, qt->rows, W) || !array_intact(qt->scales, NPY_FLOAT32, qt->rows, G) ||
        (qt->zeros != NULL && !array_intact(qt->zeros, NPY_FLOAT32, qt->rows, G))) {
        PyErr_SetString(PyExc_RuntimeError,
                        "QuantizedTensor.dequantize: payload/scales/zeros were resized in place; cannot decode");
        goto cleanup;
    }
    for (Py_ssize_t d = 0; d < nd; d++) dims[d] = (npy_intp)PyLong_AsSsize_t(PyTuple_GET_ITEM(qt->shape, d));
    Py_INCREF(qt->dtype); /* PyArray_Empty steals it */
    out = (PyArrayObject *)PyArray_Empty((int)nd, dims, (PyArray_Descr *)qt->dtype, 0);
    if (out == NULL) goto cleanup;
    {
        const uint32_t *payload = (const uint32_t *)PyArray_DATA((PyArrayObject *)qt->payload);
        const float *scales = (const float *)PyArray_DATA((PyArrayObject *)qt->scales);
        const float *zeros = qt->zeros ? (const float *)PyArray_DATA((PyArrayObject *)qt->zeros) : NULL;
        void *dst = PyArray_DATA(out);
        palu_dtype dt = palu_py_dtype(out);
        Py_BEGIN_ALLOW_THREADS
        st = palu_dequantize(payload, scales, zeros, (size_t)qt->rows, (size_t)qt->n, &qt->params, dst, dt);
        Py_END_ALLOW_THREADS
    }
    if (st != PALU_OK) {
        Py_CLEAR(out);
        palu_py_raise(module, st, "QuantizedTensor.dequantize");
    }
cleanup:
    return (PyObject *)out;
}

static PyObject *qt_repr(PyObject *self)
{
    palu_qt_object *qt = (palu_qt_object *)self;
    return PyUnicode_FromFormat("QuantizedTensor(shape=%R, dtype=%S, bits=%d, group_size=%zd, symmetric=%s, "
                                "nbytes=%zd)",
                                qt->shape, qt->dtype, qt->params.bits, (Py_ssize_t)qt->params.group_size,
                                qt->params.symmetric ? "True" : "False",
                                qt->nbytes);
}

static PyObject *qt_get_layout_version(PyObject *Py_UNUSED(self), void *Py_UNUSED(closure))
{
    return PyLong_FromLong(PALU_QUANT_LAYOUT_VERSION);
}

static PyObject *qt_get_nbytes(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(((palu_qt_object *)self)->nbytes);
}

static PyObject *qt_get_bits(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(((palu_qt_object *)self)->params.bits);
}

static PyObject *qt_get_group_size(PyObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(((palu_qt_object *)self)->params.group_size);
}

static PyObject *qt_get_symmetric(PyObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(((palu_qt_object *)self)->params.symmetric);
}

static PyObject *qt_get_clip(PyObject *self, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(((palu_qt_object *)self)->params.clip);
}

static PyMemberDef qt_members[] = {
    {"shape", T_OBJECT, offsetof(palu_qt_object, shape), READONLY, "Original shape (tuple)."},
    {"dtype", T_OBJECT, offsetof(palu_qt_object, dtype), READONLY,
     "Original dtype (numpy.dtype); dequantize() returns it."},
    {"payload", T_OBJECT, offsetof(palu_qt_object, payload), READONLY,
     "Packed codes, read-only uint32 ndarray (rows, ceil(n*bits/32)); layout in docs/quant_format.md."},
    {"scales", T_OBJECT, offsetof(palu_qt_object, scales), READONLY,
     "Per-group scales, read-only float32 ndarray (rows, n // group_size)."},
    {"zeros", T_OBJECT, offsetof(palu_qt_object, zeros), READONLY,
     "Per-group float32 zero points (rows, n // group_size), read-only; None when symmetric."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef qt_getset[] = {
    {"bits", qt_get_bits, NULL, "Bits per code: 2, 3, 4 or 8.", NULL},
    {"group_size", qt_get_group_size, NULL,
     "Elements per group along the last axis (the whole last axis when quantize got group_size=None).", NULL},
    {"symmetric", qt_get_symmetric, NULL,
     "True: scale only (codes centred on 2^(bits-1) - 1); False: scale and float32 zero point.", NULL},
    {"clip", qt_get_clip, NULL, "Clip factor applied to each group's range (or absmax).", NULL},
    {"nbytes", qt_get_nbytes, NULL, "Exact bytes held: payload + scales (+ zeros).", NULL},
    {"layout_version", qt_get_layout_version, NULL, "Version of the packed layout (PALU_QUANT_LAYOUT_VERSION).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef qt_methods[] = {
    {"dequantize", qt_dequantize, METH_NOARGS,
     "dequantize() -> ndarray of the original shape and dtype, rebuilt from codes, scales and zeros."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot qt_slots[] = {
    {Py_tp_doc, "A tensor quantized group-wise along its last axis; create it with palu_c.quantize."},
    {Py_tp_new, qt_new},
    {Py_tp_dealloc, qt_dealloc},
    {Py_tp_traverse, qt_traverse},
    {Py_tp_clear, qt_clear},
    {Py_tp_repr, qt_repr},
    {Py_tp_members, qt_members},
    {Py_tp_getset, qt_getset},
    {Py_tp_methods, qt_methods},
    {0, NULL},
};

static PyType_Spec qt_spec = {
    .name = "palu_c.QuantizedTensor",
    .basicsize = sizeof(palu_qt_object),
    .itemsize = 0,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = qt_slots,
};

/* ---- quantize ----------------------------------------------------------------------------------- */

/* A new C-contiguous (d0, d1) array of `type`, or NULL with an exception set. */
static PyObject *new_2d(int type, npy_intp d0, npy_intp d1)
{
    npy_intp dims[2] = {d0, d1};
    return PyArray_SimpleNew(2, dims, type);
}

static PyObject *palu_py_quantize(PyObject *module, PyObject *args)
{
    PyObject *x_obj, *group_obj;
    int bits, symmetric;
    double clip;
    PyArrayObject *x = NULL;
    palu_qt_object *qt = NULL;
    PyObject *result = NULL;
    PyTypeObject *tp; /* borrowed from the module state */
    palu_quant_params params;
    palu_status st;
    npy_intp n, rows, W, G;
    if (!PyArg_ParseTuple(args, "OiOpd:quantize", &x_obj, &bits, &group_obj, &symmetric, &clip)) return NULL;

    x = palu_py_float_array(x_obj, "x", "quantize", 1, NPY_MAXDIMS, 0);
    if (x == NULL) goto cleanup;
    n = PyArray_DIM(x, PyArray_NDIM(x) - 1);
    rows = PyArray_SIZE(x) / n;
    params = (palu_quant_params){.bits = bits, .group_size = (size_t)n, .symmetric = symmetric != 0, .clip = clip};
    if (group_obj != Py_None) {
        Py_ssize_t g = PyNumber_AsSsize_t(group_obj, PyExc_OverflowError);
        if (g == -1 && PyErr_Occurred()) goto cleanup;
        if (g < 1) {
            PyErr_Format(PyExc_ValueError, "quantize: group_size must be >= 1 or None, got %zd", g);
            goto cleanup;
        }
        params.group_size = (size_t)g;
    }
    if ((st = palu_quant_check(&params, (size_t)n)) != PALU_OK) {
        palu_py_raise(module, st, "quantize");
        goto cleanup;
    }

    tp = palu_get_state(module)->quantized_tensor_type;
    qt = (palu_qt_object *)tp->tp_alloc(tp, 0); /* zero-filled; holds a reference to tp */
    if (qt == NULL) goto cleanup;
    qt->params = params;
    qt->rows = rows;
    qt->n = n;
    W = (npy_intp)palu_quant_row_words((size_t)n, bits);
    G = n / (npy_intp)params.group_size;
    if ((qt->shape = PyObject_GetAttrString((PyObject *)x, "shape")) == NULL) goto cleanup;
    qt->dtype = (PyObject *)PyArray_DESCR(x);
    Py_INCREF(qt->dtype);
    if ((qt->payload = new_2d(NPY_UINT32, rows, W)) == NULL) goto cleanup;
    if ((qt->scales = new_2d(NPY_FLOAT32, rows, G)) == NULL) goto cleanup;
    if (!symmetric && (qt->zeros = new_2d(NPY_FLOAT32, rows, G)) == NULL) goto cleanup;
    qt->nbytes = (Py_ssize_t)(PyArray_NBYTES((PyArrayObject *)qt->payload) +
                              PyArray_NBYTES((PyArrayObject *)qt->scales) +
                              (qt->zeros ? PyArray_NBYTES((PyArrayObject *)qt->zeros) : 0));
    {
        const void *src = PyArray_DATA(x);
        palu_dtype dt = palu_py_dtype(x);
        uint32_t *payload = (uint32_t *)PyArray_DATA((PyArrayObject *)qt->payload);
        float *scales = (float *)PyArray_DATA((PyArrayObject *)qt->scales);
        float *zeros = qt->zeros ? (float *)PyArray_DATA((PyArrayObject *)qt->zeros) : NULL;
        Py_BEGIN_ALLOW_THREADS
        st = palu_quantize(src, dt, (size_t)rows, (size_t)n, &params, payload, scales, zeros);
        Py_END_ALLOW_THREADS
    }
    if (st != PALU_OK) {
        palu_py_raise(module, st, "quantize");
        goto cleanup;
    }
    /* Read-only only once filled: the arrays are the stored format, handed out without copies. */
    PyArray_CLEARFLAGS((PyArrayObject *)qt->payload, NPY_ARRAY_WRITEABLE);
    PyArray_CLEARFLAGS((PyArrayObject *)qt->scales, NPY_ARRAY_WRITEABLE);
    if (qt->zeros) PyArray_CLEARFLAGS((PyArrayObject *)qt->zeros, NPY_ARRAY_WRITEABLE);
    result = (PyObject *)qt;
    qt = NULL;
cleanup:
    Py_XDECREF(x);
    Py_XDECREF(qt);
    return result;
}

static PyMethodDef quant_methods[] = {
    {"quantize", palu_py_quantize, METH_VARARGS,
     "quantize(x, bits, group_size, symmetric, clip) -> QuantizedTensor (see palu_c.quantize)."},
    {NULL, NULL, 0, NULL},
};

int palu_quant_module_init(PyObject *mod)
{
    palu_module_state *st = palu_get_state(mod);
    if (PyModule_AddFunctions(mod, quant_methods) < 0) return -1;
    if (PyModule_AddIntConstant(mod, "QUANT_LAYOUT_VERSION", PALU_QUANT_LAYOUT_VERSION) < 0) return -1;
    PyObject *tp = PyType_FromModuleAndSpec(mod, &qt_spec, NULL);
    if (tp == NULL) return -1;
    Py_XSETREF(st->quantized_tensor_type, (PyTypeObject *)tp); /* the state owns this reference */
    return PyModule_AddObjectRef(mod, "QuantizedTensor", tp);
}
