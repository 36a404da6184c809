/* py_common.h -- what the binding files (module.c, py_*.c) share: NumPy C-API set-up, module state,
 * status -> exception mapping and argument conversion helpers. Numeric files never include this.
 *
 * Every binding file includes this header instead of Python.h / numpy directly. module.c defines
 * PALU_IMPORT_ARRAY before including it, so the NumPy API table lives there and the other files see it
 * through PY_ARRAY_UNIQUE_SYMBOL.
 */
#ifndef PALU_PY_COMMON_H
#define PALU_PY_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL palu_ARRAY_API
#ifndef PALU_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "palu.h"

/* Per-module state (multi-phase init, reached through PyType_GetModuleByDef / PyModule_GetState). */
typedef struct palu_module_state {
    PyObject *linalg_error;              /* owned: numpy.linalg.LinAlgError */
    PyTypeObject *quantized_tensor_type; /* owned: palu_c._C.QuantizedTensor (py_quant.c) */
    PyTypeObject *latent_cache_type;     /* owned: palu_c._C.LatentCache (py_latent_cache.c) */
    PyTypeObject *latent_cache_buffer_type; /* owned: palu_c._C.LatentCacheBuffer (py_latent_cache.c) */
} palu_module_state;

extern PyModuleDef palu_module_def;

static inline palu_module_state *palu_get_state(PyObject *module)
{
    return (palu_module_state *)PyModule_GetState(module);
}

/* Raise the Python exception for `status` with "func: <thread-local detail>". Returns NULL. */
PyObject *palu_py_raise(PyObject *module, palu_status status, const char *func);

/* Flags for palu_py_float_array. */
enum {
    PALU_ARR_ALLOW_EMPTY = 1, /* accept arrays with zero elements */
    PALU_ARR_ALLOW_NONFINITE = 2 /* skip the NaN/Inf check */
};

/* Convert `obj` (ndarray, or anything np.asarray accepts) to a new reference to an aligned,
 * C-contiguous float32 or float64 ndarray with min_nd <= ndim <= max_nd. Non-contiguous input is
 * copied. Integer, bool, complex and float16 input is refused with a TypeError naming the dtype;
 * empty or non-finite input with a ValueError (unless flags allow). `name` is the argument name and
 * `func` the public function name, both used in messages. Returns NULL with an exception set. */
PyArrayObject *palu_py_float_array(PyObject *obj, const char *name, const char *func, int min_nd, int max_nd,
                                   int flags);

/* palu_dtype of a float32/float64 ndarray. */
static inline palu_dtype palu_py_dtype(PyArrayObject *arr)
{
    return PyArray_TYPE(arr) == NPY_FLOAT32 ? PALU_DTYPE_F32 : PALU_DTYPE_F64;
}

/* Per-file registration hooks called from the module's exec slot (module.c). Each adds its
 * functions/types to `mod` and returns 0, or -1 with an exception set. */
int palu_lapack_module_init(PyObject *mod);
int palu_linalg_module_init(PyObject *mod);
int palu_quant_module_init(PyObject *mod);
int palu_rank_alloc_module_init(PyObject *mod);
int palu_hadamard_module_init(PyObject *mod);
int palu_latent_attention_module_init(PyObject *mod);
int palu_latent_cache_module_init(PyObject *mod);
int palu_latent_decode_module_init(PyObject *mod);

/* py_latent_cache.c: the palu_latent_cache inside a LatentCache object, marked busy so that no other thread
 * touches it while the caller works with the GIL released; NULL with TypeError (not a LatentCache) or
 * RuntimeError (busy). Pair every success with palu_py_latent_cache_release(obj) (GIL held). */
struct palu_latent_cache;
const struct palu_latent_cache *palu_py_latent_cache_acquire(PyObject *module, PyObject *obj, const char *func);
void palu_py_latent_cache_release(PyObject *obj);

#endif /* PALU_PY_COMMON_H */
