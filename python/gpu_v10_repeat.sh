#!/usr/bin/env bash
# One H200 call: is v10 deterministic? The benchmark's correctness case (Llama-3-8B shapes, G 1, T 2051, batch 2,
# unequal padding, seed 1234) 40 times against float64 and bit for bit against the first result, then synccheck
# and initcheck on v10 tests. Log in $OUT/log.txt.
source python/gpu_lib.sh
OBJ=${OBJ:-build/objs_v10}
step "link $OBJ"; link_objects "$OBJ"
step "repeat"
timeout 120 python3 - <<'PY'
import sys, torch
sys.path.insert(0, "python")
from palu_c.bench import latent_case, reference_z, call
import palu_c.latent_kernels as lk
worst, first, diff = 0.0, None, 0
for it in range(40):
    gen = torch.Generator(device="cuda"); gen.manual_seed(1234 + (it % 4))
    c = latent_case(2, 32, 8, 128, 1, 2051, torch.float16, gen, pad_max=40)
    used = lk.latent_decode_workspace_size(2, 32, 8, 128, 1, c["T"], c["kr"], c["vr"], torch.float16, "cuda", "auto")[1]
    z = call(c, "auto").double(); ref = reference_z(c)
    err = (torch.linalg.norm(z - ref) / torch.linalg.norm(ref)).item()
    if it % 4 == 0:
        if first is None: first = z
        elif not torch.equal(first, z): diff += 1
    bad = not bool(torch.isfinite(z).all())
    worst = max(worst, err if not bad else float("inf"))
    if bad or err > 2e-3: print("iteration", it, "kernel", lk.KERNEL_NAMES[used], "err", err, "finite", not bad)
print("worst", worst, "runs differing from the first (same seed)", diff)
PY
step "synccheck / initcheck"
for tool in synccheck initcheck; do
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 python3 -m pytest -q \
    -p no:cacheprovider tests/gpu/test_latent_decode_cuda.py -k "v10 and float16 and (b2-t257 or b3-t1000)" > "$OUT/t.txt" 2>&1
  echo "$tool exit $?"; tail -3 "$OUT/t.txt"; grep -m5 -E "Invalid|Uninitialized|barrier|Error" "$OUT/t.txt"
done
rm -f "$OUT/t.txt"
step "done"
