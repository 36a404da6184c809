/* module.c -- palu_c._C: module definition (multi-phase init with per-module state) and build_info.
 *
 * Each binding file registers its own functions and types through a *_module_init(mod) hook called
 * from palu_exec below; this file owns only the module object, its state and build facts.
 */
#define PALU_IMPORT_ARRAY
#include "py_common.h"

#ifdef PALU_WITH_CUDA
#include "cuda_runtime_info.cuh"
#endif

#ifndef PALU_VERSION
#define PALU_VERSION "0+unknown"
#endif

static PyObject *palu_build_info(PyObject *module, PyObject *Py_UNUSED(args))
{
    (void)module;
    PyObject *info = PyDict_New();
    if (info == NULL) return NULL;
    PyObject *v = NULL;
#define PALU_SET(key, expr)                                                                                   \
    if ((v = (expr)) == NULL || PyDict_SetItemString(info, key, v) < 0) goto fail;                            \
    Py_CLEAR(v);
    PALU_SET("version", PyUnicode_FromString(PALU_VERSION))
    PALU_SET("lapack_route", PyUnicode_FromString("scipy.linalg.cython_lapack/cython_blas capsules"))
#ifdef PALU_WITH_CUDA
    int count = 0, runtime = 0;
    const char *err = palu_cuda_device_count(&count);
    palu_cuda_runtime_version(&runtime);
    PALU_SET("cuda_compiled", Py_NewRef(Py_True))
    PALU_SET("cuda_archs", PyUnicode_FromString("sm_90a, compute_90 (PTX)"))
    PALU_SET("cuda_runtime_version", PyLong_FromLong(runtime))
    PALU_SET("cuda_devices", PyLong_FromLong(count))
    PALU_SET("cuda_status", err ? PyUnicode_FromString(err) : Py_NewRef(Py_None))
#else
    PALU_SET("cuda_compiled", Py_NewRef(Py_False))
    PALU_SET("cuda_archs", Py_NewRef(Py_None))
    PALU_SET("cuda_runtime_version", Py_NewRef(Py_None))
    PALU_SET("cuda_devices", PyLong_FromLong(0))
    PALU_SET("cuda_status", PyUnicode_FromString("built without CUDA"))
#endif
#undef PALU_SET
    return info;
fail:
    Py_XDECREF(v);
    Py_DECREF(info);
    return NULL;
}

static PyMethodDef palu_methods[] = {
    {"build_info", palu_build_info, METH_NOARGS, "build_info() -> dict of build facts (see palu_c.build_info)."},
    {NULL, NULL, 0, NULL},
};

static int palu_exec(PyObject *mod)
{
    if (PyArray_ImportNumPyAPI() < 0) return -1;
    palu_module_state *st = palu_get_state(mod);
    PyObject *linalg = PyImport_ImportModule("numpy.linalg");
    if (linalg == NULL) return -1;
    st->linalg_error = PyObject_GetAttrString(linalg, "LinAlgError");
    Py_DECREF(linalg);
    if (st->linalg_error == NULL) return -1;
    if (palu_lapack_module_init(mod) < 0) return -1;
    if (palu_linalg_module_init(mod) < 0) return -1;
    if (palu_quant_module_init(mod) < 0) return -1;
    if (palu_rank_alloc_module_init(mod) < 0) return -1;
    if (palu_hadamard_module_init(mod) < 0) return -1;
    if (palu_latent_attention_module_init(mod) < 0) return -1;
    if (palu_latent_cache_module_init(mod) < 0) return -1;
    if (palu_latent_decode_module_init(mod) < 0) return -1;
    return 0;
}

static int palu_traverse(PyObject *mod, visitproc visit, void *arg)
{
    palu_module_state *st = palu_get_state(mod);
    Py_VISIT(st->linalg_error);
    Py_VISIT(st->quantized_tensor_type);
    Py_VISIT(st->latent_cache_type);
    Py_VISIT(st->latent_cache_buffer_type);
    return 0;
}

static int palu_clear(PyObject *mod)
{
    palu_module_state *st = palu_get_state(mod);
    Py_CLEAR(st->linalg_error);
    Py_CLEAR(st->quantized_tensor_type);
    Py_CLEAR(st->latent_cache_type);
    Py_CLEAR(st->latent_cache_buffer_type);
    return 0;
}

static void palu_free(void *mod) { (void)palu_clear((PyObject *)mod); }

static PyModuleDef_Slot palu_slots[] = {
    {Py_mod_exec, palu_exec},
    {0, NULL},
};

PyModuleDef palu_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "palu_c._C",
    .m_doc = "palu_c's C core: decomposition, quantization, Hadamard, rank allocation, CUDA launchers.",
    .m_size = sizeof(palu_module_state),
    .m_methods = palu_methods,
    .m_slots = palu_slots,
    .m_traverse = palu_traverse,
    .m_clear = palu_clear,
    .m_free = palu_free,
};

PyMODINIT_FUNC PyInit__C(void) { return PyModuleDef_Init(&palu_module_def); }
