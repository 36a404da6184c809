/* quant.h -- group-wise round-to-nearest quantization to 2, 3, 4 or 8 bits with bit-packed codes.
 *
 * This is the CPU reference path (and the oracle for the CUDA twin, which follows docs/quant_format.md).
 * No Python here (STYLE.md rule 1).
 *
 * Shape legend: the input is viewed as a C-contiguous (rows, n) matrix: n = the last-axis length, rows =
 * the product of all other dims. Each row is split into G = n / g groups of g consecutive elements
 * (g = group_size). W = palu_quant_row_words(n, bits) uint32 words hold one row's codes.
 *
 * Encoding of one group (b = bits; all arithmetic in double; "rint" = round half to even):
 *   asymmetric: lo = clip*min, hi = clip*max; scale = f32((hi - lo) / (2^b - 1)); zero = f32(lo)
 *               code = clamp(rint((x - zero) / scale), 0, 2^b - 1);   x' = code*scale + zero
 *   symmetric:  L = 2^(b-1) - 1; scale = f32(clip*absmax / L)
 *               code = clamp(rint(x / scale), -L, L) + L;             x' = (code - L)*scale
 *   f32() rounds to float32; the codes are computed from the STORED float32 scale and zero, so for
 *   clip = 1 every |x - x'| <= scale/2 up to the float32 rounding of scale and zero (a few float32 ulps of
 *   the group's absmax). A group whose stored scale is 0 (constant group, absmax 0, or a range that
 *   underflows float32) gets code 0 (asymmetric) or L (symmetric) everywhere and x' = zero (resp. 0).
 *
 * Packed layout, version PALU_QUANT_LAYOUT_VERSION (bump it on any change; docs/quant_format.md):
 *   payload (rows, W) uint32, W = ceil(n*b / 32). Per row, the n codes form one little-endian bit
 *   stream: code i occupies bits [i*b, i*b + b) of the stream, bit k of the stream being bit (k % 32) of
 *   word k / 32. 3-bit codes may straddle two words. Padding bits at the end of a row are zero.
 *   scales (rows, G) float32, group j of row r at scales[r*G + j]; zeros (rows, G) float32 likewise,
 *   asymmetric only (NULL for symmetric).
 */
#ifndef PALU_QUANT_H
#define PALU_QUANT_H

#include "palu.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PALU_QUANT_LAYOUT_VERSION 1

/* Quantization parameters shared by quantize and dequantize. */
typedef struct palu_quant_params {
    int bits;          /* 2, 3, 4 or 8 */
    size_t group_size; /* g >= 1, divides n */
    int symmetric;     /* 0: scale + float32 zero point per group; 1: scale only */
    double clip;       /* 0 < clip <= 1: the group's range (or absmax) is scaled by clip before encoding */
} palu_quant_params;

/* PALU_OK if `p` is valid for rows of length n (n >= 1), else PALU_ERR_VALUE with a message. */
palu_status palu_quant_check(const palu_quant_params *p, size_t n);

/* W: uint32 words per packed row of n codes of `bits` bits = ceil(n*bits / 32). */
size_t palu_quant_row_words(size_t n, int bits);

/* Quantize x (rows, n), C-contiguous, dtype F32 or F64, all finite, into payload (rows, W), scales
 * (rows, G) and zeros (rows, G; NULL when p->symmetric). Every output word is written (no pre-zeroing
 * needed). Errors: PALU_ERR_VALUE for bad parameters, a non-finite input or a float64 value beyond the
 * float32 range (the scales could not hold it); PALU_ERR_TYPE for another dtype. Outputs are then
 * unspecified. */
palu_status palu_quantize(const void *x, palu_dtype dt, size_t rows, size_t n, const palu_quant_params *p,
                          uint32_t *payload, float *scales, float *zeros);

/* Inverse of palu_quantize: write x' (rows, n), C-contiguous, dtype F32 or F64, into `out`. zeros must be
 * non-NULL exactly when !p->symmetric. */
palu_status palu_dequantize(const uint32_t *payload, const float *scales, const float *zeros, size_t rows,
                            size_t n, const palu_quant_params *p, void *out, palu_dtype dt);

/* Pack n codes (each < 2^bits) into one row of W words in the layout above (padding bits zeroed). */
void palu_quant_pack(const uint8_t *codes, size_t n, int bits, uint32_t *words);
/* Unpack one row of W words into n codes. */
void palu_quant_unpack(const uint32_t *words, size_t n, int bits, uint8_t *codes);

#ifdef __cplusplus
}
#endif
#endif /* PALU_QUANT_H */
