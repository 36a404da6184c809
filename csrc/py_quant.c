/* py_quant.c -- bindings (placeholder until its owner lands the real file). */
#include "py_common.h"

int palu_quant_module_init(PyObject *mod)
{
    (void)mod;
    return 0;
}
