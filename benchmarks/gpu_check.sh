#!/usr/bin/env bash
# The GPU check of issue 29, in one command: the CUDA test subset (`pytest -m cuda`), `vqclip bench --device cuda`
# at 256, 512 and 1024 px in bf16, fp16 and fp32, and the reference implementation's step on the same GPU
# (benchmarks/reference_step.py --device cuda), and the throughput of --n 1, 4 and 16 images per batched step at
# 256 px in bf16 (images per second). Random weights throughout: nothing is downloaded.
#
#   benchmarks/gpu_check.sh                 # writes benchmarks/gpu_check.jsonl, prints a table at the end
#   PY=/path/to/python OUT=/tmp/g.jsonl benchmarks/gpu_check.sh
#   TESTS=0 benchmarks/gpu_check.sh         # the measurements only (a rerun after the tests passed)
#
# Output: one JSON object per line on stdout and in $OUT (each has a "check" field), then a short table.
# Without CUDA it runs what a CPU can (issue 29's CPU tests, the CUDA tests' collection with their skip
# reasons, a one-step CPU bench) and prints a "skipped" line for each GPU part. The reference's step needs
# taming-transformers and clip-anytorch (install commands in benchmarks/reference_step.py); without them it
# is skipped, saying so. Exit status: 1 if a test failed or a measurement errored, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-benchmarks/gpu_check.jsonl}
SIZES=${SIZES:-"256 512 1024"}
PRECISIONS=${PRECISIONS:-"bf16 fp16 fp32"}
STEPS=${STEPS:-3}
NS=${NS:-"1 4 16"}
export VQCLIP_GPU_CHECK_OUT="$OUT" PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
: >"$OUT"
status=0

emit() { # one JSON line, to stdout and $OUT
    echo "$1" | tee -a "$OUT"
}
skip() { # check, reason
    emit "$("$PY" -c 'import json, sys; print(json.dumps({"check": sys.argv[1], "skipped": sys.argv[2]}))' "$1" "$2")"
}

# ---- the machine ------------------------------------------------------------------------------------------
emit "$("$PY" - <<'EOF'
import json, os, platform
import torch
row = {"check": "machine", "python": platform.python_version(), "torch": torch.__version__,
       "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cores": os.cpu_count()}
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    row.update(gpu=torch.cuda.get_device_name(), capability=f"{major}.{minor}", arch_list=torch.cuda.get_arch_list(),
               memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
print(json.dumps(row))
EOF
)" || status=1
CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)

# ---- tests ------------------------------------------------------------------------------------------------
run_tests() { # check name, pytest arguments...
    local name=$1 xml
    shift
    xml=$(mktemp)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$xml" "$@" >&2
    local rc=$?
    emit "$("$PY" - "$xml" "$name" "$rc" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
path, name, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
except (OSError, ET.ParseError, AttributeError):
    counts, reasons = {}, []
print(json.dumps({"check": name, "rc": rc, **counts, "skip_reasons": reasons}))
EOF
)"
    rm -f "$xml"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=1 # 5: nothing collected
}

if [ "${TESTS:-1}" != 1 ]; then
    skip "tests" "TESTS=0: the tests were not run"
else
    run_tests "pytest -m cuda" -m cuda tests/
    if [ "$CUDA" != 1 ]; then
        # what a CPU can check of the same defects (each test fails on the code before the fix)
        run_tests "pytest issue-29 CPU tests" tests/test_generators.py tests/test_clip_names.py tests/test_memory_gpu.py \
            tests/test_gpu_users.py tests/test_versions.py tests/test_deterministic.py tests/test_pack.py
    fi
fi

# ---- vqclip bench and the reference's step ----------------------------------------------------------------
bench() { # device, size, precision, steps[, n images per step (check "throughput")]
    local row check=bench n=${5:-1}
    [ $# -ge 5 ] && check=throughput
    if row=$("$PY" -m vqclip bench --json --no-isolate --device "$1" --size "$2" --precision "$3" --steps "$4" --n "$n" 2>/dev/null); then
        emit "$("$PY" -c 'import json, sys; r = json.loads(sys.argv[1].strip().splitlines()[-1]); r["check"] = sys.argv[2]; print(json.dumps(r))' "$row" "$check")"
    else
        emit "{\"check\": \"$check\", \"device\": \"$1\", \"size\": [$2, $2], \"precision\": \"$3\", \"n\": $n, \"error\": \"exit $?\"}"
        status=1
    fi
}
reference() { # device, size
    local row
    if row=$("$PY" benchmarks/reference_step.py --device "$1" --size "$2" --steps "$STEPS" 2>/dev/null); then
        emit "$("$PY" -c 'import json, sys; r = json.loads(sys.argv[1].strip().splitlines()[-1]); r["check"] = "reference"; print(json.dumps(r))' "$row")"
    else
        emit "{\"check\": \"reference\", \"device\": \"$1\", \"size\": $2, \"error\": \"exit $? (out of memory, or see the script's stderr)\"}"
    fi
}

if [ "$CUDA" = 1 ]; then
    for size in $SIZES; do
        for precision in $PRECISIONS; do
            bench cuda "$size" "$precision" "$STEPS"
        done
    done
    if "$PY" -c 'import taming, clip' 2>/dev/null; then
        for size in $SIZES; do reference cuda "$size"; done
    else
        skip "reference" "taming-transformers or clip-anytorch is not installed (see benchmarks/reference_step.py)"
    fi
else
    skip "bench cuda" "no CUDA device: vqclip bench --device cuda at $SIZES px in $PRECISIONS not run"
    skip "reference" "no CUDA device: benchmarks/reference_step.py --device cuda not run"
    if [ "${CPU_BENCH:-1}" = 1 ]; then
        bench cpu 128 fp32 1 # the bench path itself, on the CPU (CPU_BENCH=0 skips it)
    fi
fi
# ---- throughput: --n images in one batched step -----------------------------------------------------------
if [ "$CUDA" = 1 ]; then
    for n in $NS; do bench cuda 256 bf16 "$STEPS" "$n"; done
else
    skip "throughput cuda" "no CUDA device: --n $NS at 256 px in bf16 not run"
    if [ "${CPU_BENCH:-1}" = 1 ]; then
        for n in 1 2; do bench cpu 64 fp32 1 "$n"; done # the batched path itself, on the CPU
    fi
fi

# ---- the table ----------------------------------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
ref = {r["size"]: r for r in rows if r["check"] == "reference" and "step_s" in r}
print("\nsize   precision  device  vqclip step s  peak GiB  plan est. err  reference step s  ratio", file=sys.stderr)
for r in rows:
    if r["check"] != "bench":
        continue
    side = r["size"][0]
    if "error" in r:
        print(f"{side:<6} {r['precision']:<10} {r['device']:<7} {r['error']}", file=sys.stderr)
        continue
    base = ref.get(side)
    ratio = f"{r['step_s'] / base['step_s']:.2f}x" if base else "-"
    refs = f"{base['step_s']:.3f}" if base else "-"
    print(f"{side:<6} {r['precision']:<10} {r['device']:<7} {r['step_s']:<14.3f} {r['peak_memory'] / 2**30:<9.2f}"
          f" {r['estimate_error']:<+14.1%} {refs:<17} {ratio}", file=sys.stderr)
one = {(r["device"], r["size"][0], r["precision"]): r for r in rows if r["check"] == "throughput" and r.get("n") == 1}
if any(r["check"] == "throughput" for r in rows):
    print("\nsize   precision  device  n    step s   images/s  vs n=1  images/CPU s  peak GiB  plan", file=sys.stderr)
for r in rows:
    if r["check"] != "throughput":
        continue
    if "error" in r:
        print(f"{r['size'][0]:<6} {r['precision']:<10} {r['device']:<7} {r['n']:<4} {r['error']}", file=sys.stderr)
        continue
    base = one.get((r["device"], r["size"][0], r["precision"]))
    gain = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base and "images_per_s" in base else "-"
    plan = f"{'ckpt' if r['plan']['checkpointing'] else 'no ckpt'}, chunk {r['plan']['clip_chunk']}"
    print(f"{r['size'][0]:<6} {r['precision']:<10} {r['device']:<7} {r['n']:<4} {r['step_s']:<8.3f} "
          f"{r['images_per_s']:<9.2f} {gain:<7} {r['images_per_cpu_s']:<13.3f} {r['peak_memory'] / 2**30:<9.2f} {plan}",
          file=sys.stderr)
for r in rows:
    if r["check"].startswith("pytest"):
        print(f"{r['check']}: {r.get('tests', '?')} tests, {r.get('failures', '?')} failed, "
              f"{r.get('errors', '?')} errors, {r.get('skipped', '?')} skipped (rc {r['rc']})", file=sys.stderr)
    elif "skipped" in r:
        print(f"skipped {r['check']}: {r['skipped']}", file=sys.stderr)
EOF
exit $status
