#!/usr/bin/env bash
# One H200 call for branch direct-out, second build (v9's direct output as a template instance): the v9 tests and
# the beyond-one-wave tests, memcheck, then call times of NEW against main's (BASE) alternately.
#   NEW=build/objs_do4 BASE=build/objs_m10 bash python/gpu_direct_v9.sh
source python/gpu_lib.sh
step "link ${NEW:?}"; link_objects "$NEW"
decode_tests "v9 or beyond_one_wave"
sanitize "v9 and float16 and (b3-t7 or beyond_one_wave)" "" ""
time_sets "$NEW ${BASE:?}" --impl auto --shapes llama2-7b --batches 1,8 --tokens 4096,16384,65536
step "done"
