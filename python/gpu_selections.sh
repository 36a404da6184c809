# pytest -k selections of tests/gpu shared by the GPU drivers (sourced by gpu_lib.sh and gpu_check.sh).
# MULTIBLOCK_K: the v9, v10 and v11 cases whose CTAs walk many blocks, fp16 only. Their buffers are reused, so they
# exercise hand-offs that a one-block case never does (v9's were flagged by racecheck there until its lanes arrived
# for themselves, runs 145-151); ~4 minutes under racecheck.
MULTIBLOCK_K='not bfloat16 and (v11_irregular or ((v9 or v10) and (irregular or long_ranges)))'
