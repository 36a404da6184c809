/* cuda_runtime_info.cuh -- facts about the CUDA runtime linked into the extension (for build_info).
 * C-callable; no Python here. */
#ifndef PALU_CUDA_RUNTIME_INFO_CUH
#define PALU_CUDA_RUNTIME_INFO_CUH

#ifdef __cplusplus
extern "C" {
#endif

/* Store the number of visible CUDA devices in *count (0 when there is no driver or GPU). Returns NULL on
 * success, else the CUDA error string (a static string), with *count = 0. */
const char *palu_cuda_device_count(int *count);
/* Store the CUDA runtime version (e.g. 13000) in *version. */
void palu_cuda_runtime_version(int *version);

#ifdef __cplusplus
}
#endif
#endif /* PALU_CUDA_RUNTIME_INFO_CUH */
