/* py_dlpack.c -- DLPack capsule intake (see py_dlpack.h). Binding side: no kernels, no CUDA headers. */
#include "py_common.h"

#include "py_dlpack.h"

#include <string.h>

/* Capsule names (dlpack.h, "Python specification for DLPack"); the capsule keeps the pointer, so static. */
static const char palu_dl_name_legacy[] = "dltensor";
static const char palu_dl_name_legacy_used[] = "used_dltensor";
static const char palu_dl_name_versioned[] = "dltensor_versioned";
static const char palu_dl_name_versioned_used[] = "used_dltensor_versioned";

static const char *device_type_name(int32_t type)
{
    switch (type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda";
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed";
    case kDLROCM: return "rocm";
    case kDLOpenCL: return "opencl";
    case kDLVulkan: return "vulkan";
    case kDLMetal: return "metal";
    case kDLOneAPI: return "oneapi";
    default: return "unknown";
    }
}

int palu_dl_take(PyObject *capsule, const char *name, const char *func, palu_dl_tensor *dl)
{
    memset(dl, 0, sizeof *dl);
    if (capsule == NULL || !PyCapsule_CheckExact(capsule)) {
        PyErr_Format(PyExc_TypeError,
                     "%s: `%s` must be a DLPack capsule (the result of tensor.__dlpack__(stream=...)), got %.200s",
                     func, name, capsule ? Py_TYPE(capsule)->tp_name : "NULL");
        return -1;
    }
    if (PyCapsule_IsValid(capsule, palu_dl_name_versioned)) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(capsule, palu_dl_name_versioned);
        if (m == NULL) return -1;
        if (PyCapsule_SetName(capsule, palu_dl_name_versioned_used) < 0) return -1;
        if (m->version.major != DLPACK_MAJOR_VERSION) {
            unsigned major = m->version.major, minor = m->version.minor;
            /* dlpack.h: on a major mismatch only the deleter may be touched, and it must be called */
            if (m->deleter) m->deleter(m);
            PyErr_Format(PyExc_ValueError, "%s: `%s` is a DLPack %u.%u tensor; palu_c reads DLPack %d.x", func,
                         name, major, minor, DLPACK_MAJOR_VERSION);
            return -1;
        }
        dl->versioned = m;
        dl->t = &m->dl_tensor;
        dl->read_only = (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
        return 0;
    }
    if (PyCapsule_IsValid(capsule, palu_dl_name_legacy)) {
        DLManagedTensor *m = PyCapsule_GetPointer(capsule, palu_dl_name_legacy);
        if (m == NULL) return -1;
        if (PyCapsule_SetName(capsule, palu_dl_name_legacy_used) < 0) return -1;
        dl->legacy = m;
        dl->t = &m->dl_tensor;
        return 0;
    }
    const char *cname = PyCapsule_GetName(capsule);
    if (cname == NULL) PyErr_Clear();
    if (cname && (strcmp(cname, palu_dl_name_legacy_used) == 0 || strcmp(cname, palu_dl_name_versioned_used) == 0))
        PyErr_Format(PyExc_ValueError,
                     "%s: `%s` is a DLPack capsule that was already consumed; call tensor.__dlpack__() again", func,
                     name);
    else
        PyErr_Format(PyExc_TypeError, "%s: `%s` is a capsule named %s, not a DLPack tensor", func, name,
                     cname ? cname : "(null)");
    return -1;
}

void palu_dl_release(palu_dl_tensor *dl)
{
    if (dl->versioned && dl->versioned->deleter) dl->versioned->deleter(dl->versioned);
    if (dl->legacy && dl->legacy->deleter) dl->legacy->deleter(dl->legacy);
    memset(dl, 0, sizeof *dl);
}

int palu_dl_check(const palu_dl_tensor *dl, DLDeviceType device_type, int writable, const char *name,
                  const char *func)
{
    const DLTensor *t = dl->t;
    if ((int32_t)t->device.device_type != (int32_t)device_type) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is on %s:%d; this function needs a %s tensor", func, name,
                     device_type_name(t->device.device_type), (int)t->device.device_id,
                     device_type_name(device_type));
        return -1;
    }
    if (t->ndim < 1 || t->shape == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` must have at least 1 dimension, got %d", func, name, (int)t->ndim);
        return -1;
    }
    if (writable && dl->read_only) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` was exported read-only; pass a writable tensor", func, name);
        return -1;
    }
    return 0;
}

int palu_dl_dtype(DLDataType dt, palu_dtype *out, const char *name, const char *func)
{
    if (dt.lanes == 1 && dt.code == kDLFloat && dt.bits == 32) *out = PALU_DTYPE_F32;
    else if (dt.lanes == 1 && dt.code == kDLFloat && dt.bits == 64) *out = PALU_DTYPE_F64;
    else if (dt.lanes == 1 && dt.code == kDLFloat && dt.bits == 16) *out = PALU_DTYPE_F16;
    else if (dt.lanes == 1 && dt.code == kDLBfloat && dt.bits == 16) *out = PALU_DTYPE_BF16;
    else {
        PyErr_Format(PyExc_TypeError,
                     "%s: `%s` has DLPack dtype (code %u, bits %u, lanes %u), not a floating type palu_c reads; "
                     "convert it to float32, float16 or bfloat16",
                     func, name, (unsigned)dt.code, (unsigned)dt.bits, (unsigned)dt.lanes);
        return -1;
    }
    return 0;
}

int palu_dl_as_rows(const palu_dl_tensor *dl, int writable, const char *name, const char *func,
                    palu_dl_rows *out)
{
    const DLTensor *t = dl->t;
    const int nd = t->ndim;
    memset(out, 0, sizeof *out);
    if (palu_dl_dtype(t->dtype, &out->dtype, name, func) < 0) return -1;
    int64_t rows = 1;
    for (int d = 0; d < nd; d++) {
        if (t->shape[d] <= 0) {
            PyErr_Format(PyExc_ValueError, "%s: `%s` is empty (axis %d has length %lld); nothing to compute", func,
                         name, d, (long long)t->shape[d]);
            return -1;
        }
        if (d < nd - 1) {
            if (rows > INT64_MAX / t->shape[d]) {
                PyErr_Format(PyExc_ValueError, "%s: `%s` has too many elements", func, name);
                return -1;
            }
            rows *= t->shape[d];
        }
    }
    const int64_t n = t->shape[nd - 1];
    int64_t row_stride = n;
    if (t->strides != NULL) {
        for (int d = 0; d < nd; d++) {
            if (t->strides[d] < 0) {
                PyErr_Format(PyExc_ValueError, "%s: `%s` has a negative stride on axis %d; pass a .contiguous() copy",
                             func, name, d);
                return -1;
            }
        }
        if (n > 1 && t->strides[nd - 1] != 1) {
            PyErr_Format(PyExc_ValueError,
                         "%s: `%s` must be contiguous along its last axis (stride %lld); pass a .contiguous() copy",
                         func, name, (long long)t->strides[nd - 1]);
            return -1;
        }
        /* Collapse the leading axes (innermost first, length-1 axes ignored) onto one row stride. */
        int64_t expect = -1;
        for (int d = nd - 2; d >= 0; d--) {
            if (t->shape[d] == 1) continue;
            if (expect < 0) {
                row_stride = t->strides[d];
            } else if (t->strides[d] != expect) {
                PyErr_Format(PyExc_ValueError,
                             "%s: `%s` has strides that do not collapse to rows of one stride (axis %d); pass a "
                             ".contiguous() copy",
                             func, name, d);
                return -1;
            }
            if (t->strides[d] != 0 && t->shape[d] > INT64_MAX / t->strides[d]) {
                PyErr_Format(PyExc_ValueError, "%s: `%s` has strides too large to address", func, name);
                return -1;
            }
            expect = t->strides[d] * t->shape[d];
        }
    }
    if (writable && rows > 1 && row_stride < n) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` has overlapping rows (row stride %lld < %lld); pass a fresh tensor",
                     func, name, (long long)row_stride, (long long)n);
        return -1;
    }
    if (t->data == NULL) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` has a NULL data pointer", func, name);
        return -1;
    }
    out->data = (char *)t->data + t->byte_offset;
    out->rows = rows;
    out->n = n;
    out->row_stride = row_stride;
    out->device = t->device;
    return 0;
}

int palu_dl_same_layout(const palu_dl_tensor *a, const palu_dl_tensor *b, const char *name_a, const char *name_b,
                        const char *func)
{
    const DLTensor *ta = a->t, *tb = b->t;
    if (ta->device.device_type != tb->device.device_type || ta->device.device_id != tb->device.device_id) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` is on %s:%d but `%s` is on %s:%d; put both on one device", func,
                     name_a, device_type_name(ta->device.device_type), (int)ta->device.device_id, name_b,
                     device_type_name(tb->device.device_type), (int)tb->device.device_id);
        return -1;
    }
    if (ta->dtype.code != tb->dtype.code || ta->dtype.bits != tb->dtype.bits || ta->dtype.lanes != tb->dtype.lanes) {
        PyErr_Format(PyExc_TypeError, "%s: `%s` and `%s` must have the same dtype (DLPack code/bits %u/%u vs %u/%u)",
                     func, name_a, name_b, (unsigned)ta->dtype.code, (unsigned)ta->dtype.bits,
                     (unsigned)tb->dtype.code, (unsigned)tb->dtype.bits);
        return -1;
    }
    int same = ta->ndim == tb->ndim;
    for (int d = 0; same && d < ta->ndim; d++) same = ta->shape[d] == tb->shape[d];
    if (!same) {
        PyErr_Format(PyExc_ValueError, "%s: `%s` and `%s` must have the same shape (ndim %d vs %d)", func, name_a,
                     name_b, (int)ta->ndim, (int)tb->ndim);
        return -1;
    }
    return 0;
}
