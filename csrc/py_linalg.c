/* py_linalg.c -- bindings (placeholder until its owner lands the real file). */
#include "py_common.h"

int palu_linalg_module_init(PyObject *mod)
{
    (void)mod;
    return 0;
}
