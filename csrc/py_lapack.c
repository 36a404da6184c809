/* py_lapack.c -- fills the palu_lapack table (lapack.h) from SciPy's exported LAPACK/BLAS capsules.
 *
 * Runs once per process from the module's exec slot, before any numeric function can be called.
 * Re-running it (a second interpreter, a reload) writes the same pointers again, which is harmless.
 */
#include "py_common.h"
#include "lapack.h"

palu_lapack_api palu_lapack;

/* Look `name` up in `capi` (a dict of capsules) and return its pointer, or NULL with ImportError. */
static void *capsule_pointer(PyObject *capi, const char *module_name, const char *name)
{
    PyObject *cap = PyDict_GetItemString(capi, name); /* borrowed */
    if (cap == NULL || !PyCapsule_CheckExact(cap)) {
        PyErr_Format(PyExc_ImportError,
                     "palu_c: %s does not export %s; upgrade SciPy (pip install -U scipy)", module_name, name);
        return NULL;
    }
    return PyCapsule_GetPointer(cap, PyCapsule_GetName(cap));
}

static PyObject *load_capi(const char *module_name)
{
    PyObject *mod = PyImport_ImportModule(module_name);
    if (mod == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_ImportError,
                     "palu_c needs SciPy for LAPACK/BLAS but could not import %s; install it with `pip install scipy`",
                     module_name);
        return NULL;
    }
    PyObject *capi = PyObject_GetAttrString(mod, "__pyx_capi__");
    Py_DECREF(mod);
    if (capi != NULL && !PyDict_Check(capi)) {
        Py_CLEAR(capi);
        PyErr_Format(PyExc_ImportError, "palu_c: %s.__pyx_capi__ is not a dict", module_name);
    }
    return capi;
}

int palu_lapack_module_init(PyObject *mod)
{
    (void)mod;
    int rc = -1;
    palu_lapack_api api;
    PyObject *lapack = load_capi("scipy.linalg.cython_lapack");
    PyObject *blas = lapack ? load_capi("scipy.linalg.cython_blas") : NULL;
    if (blas == NULL) goto done;

#define PALU_LOAD(table, modname, field)                                                                      \
    if ((api.field = (void *)capsule_pointer(table, modname, #field)) == NULL) goto done;
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", sgesdd)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dgesdd)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", sgesvd)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dgesvd)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", sgeqrf)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dgeqrf)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", sorgqr)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dorgqr)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", sgetrf)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dgetrf)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", slaswp)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dlaswp)
    PALU_LOAD(lapack, "scipy.linalg.cython_lapack", dpotrf)
    PALU_LOAD(blas, "scipy.linalg.cython_blas", sgemm)
    PALU_LOAD(blas, "scipy.linalg.cython_blas", dgemm)
    PALU_LOAD(blas, "scipy.linalg.cython_blas", dtrsm)
    PALU_LOAD(blas, "scipy.linalg.cython_blas", dtrmm)
#undef PALU_LOAD
    palu_lapack = api;
    rc = 0;
done:
    Py_XDECREF(lapack);
    Py_XDECREF(blas);
    return rc;
}
