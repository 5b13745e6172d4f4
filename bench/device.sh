#!/usr/bin/env bash
# The GPU path, run on a machine with an NVIDIA GPU, each part prepared to fit one 10-minute call
# (vqc with the kernels' first compile and train_step together ~8 minutes, an estimate: not yet
# run on a GPU; the study STUDY_S seconds, 470 by default):
#
#   bench/device.sh                  # on the GPU machine; outputs under $OUT (default runs/device)
#   bench/device.sh study            # only the named steps (vqc, train_step, study)
#   bench/device.sh --cpu-dry-run    # here, on the CPU, at tiny sizes: the same steps, checked
#
# 1. the `local` simulator on CUDA through bench/vqc.py: forward, adjoint and a shift Jacobian
#    (one batch), float32, N = 4,096 to 2^20 tokens: its fused kernels (`local`, qworker/backends/
#    fused.py) against the torch path they replace (`local-torch`) in the same run, the kernels
#    compiled first, one process each side by side (Triton keeps them on disk for the cells);
# 2. the model's train step through bench/train_step.py: 8m and 150m, classical against wq (and
#    wgate, and wq with fd), bf16 autocast;
# 3. if DeepSpeed and the corpus are there: bench/study.py (DeepSpeed, bf16) for the 150m model,
#    none / wq / wq-control, 300 steps each at 1e-3: one study process a variant, the three side by
#    side on the GPU, each seed after seed until its time (STUDY_S) is up; then the study of the seeds
#    every variant finished (study-150m.json, .md, .png: collected, nothing trains) and the runs'
#    logs (study-runs.tgz, for `bench/study.py` to collect again here);
# then one table of it all. The GPU machine has torch (CUDA) but no package registry: wheels it
# lacks travel in .whl/ (DeepSpeed and what it needs, grpcio and protobuf of the versions
# qworker's stubs were made with) and the tokenized corpus in .cache/hyqut (ignored by git: name it in
# the device call's carry; a run then needs
# neither `datasets` nor the corpus package). Whatever is still missing is skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1 && shift
WANT=" ${*:-vqc train_step study} "
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/device.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }

if [ "$DRY" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then  # the GPU machine's missing packages
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
[ -d .cache/hyqut ] && export HYQUT_CACHE=$PWD/.cache/hyqut
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python

if [ "$DRY" = 1 ]; then
    DEVICE=cpu VQC_N="256 1024" MODELS="tiny" STEPS=2 TRAIN_MODEL=tiny TRAIN_STEPS=4 TRAIN_LR=2e-3 LIMIT=600 VQC_LIMIT=600 STUDY_S=600 LAST_SEED=1
else
    DEVICE=cuda VQC_N="4096 65536 1048576" MODELS="8m 150m" STEPS=5 TRAIN_MODEL=150m TRAIN_STEPS=300 TRAIN_LR=1e-3 LIMIT=120 VQC_LIMIT=300 STUDY_S=${STUDY_S:-470} LAST_SEED=4
fi

say "# bench/device.sh $(date -u +%FT%TZ) device=$DEVICE"
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"# python {platform.python_version()}, torch {torch.__version__}, {gpu}")
for name in ("qulacs", "ray", "deepspeed", "datasets", "pennylane", "transformers"):
    try:
        importlib.import_module(name)
        print(f"#   {name}: present")
    except Exception as e:  # a missing or broken package: its step is skipped
        print(f"#   {name}: missing ({type(e).__name__}); what needs it is skipped")
EOF

if [[ $WANT == *" vqc "* ]]; then
    say "## 1. the local simulator (bench/vqc.py --device $DEVICE): fused kernels (local), torch path (local-torch)"
    if [ "$DEVICE" = cuda ]; then  # compile what the cells use, side by side (minutes one after another)
        start=$SECONDS
        for kind in forward adjoint shift; do
            timeout 300 $PY - $kind >>"$LOG" 2>&1 <<'EOF' || say "compile $kind: exit $?" &
import sys, torch
from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import fused

spec, kind = CircuitSpec(), sys.argv[1]
theta, angles = torch.rand(40, device="cuda"), torch.rand(64, 20, device="cuda")
assert fused.covers(spec, theta, angles), fused.describe()
backend, grad = get_backend("local"), Gradient("shift" if kind == "shift" else "adjoint")
if kind == "forward":
    backend.expectations(spec, theta, angles)
else:
    backend.vjp(spec, theta, angles, torch.ones(64, 10, device="cuda"), grad)
torch.cuda.synchronize()
EOF
        done
        wait
        say "kernels compiled in $((SECONDS - start)) s"
    fi
    timeout $VQC_LIMIT $PY bench/vqc.py --device "$DEVICE" --backends local local-torch --methods forward adjoint shift \
        --n $VQC_N --repeats 2 --budget-s 40 --json >"$OUT/vqc.jsonl" 2>>"$LOG" || say "vqc: exit $?"
fi

if [[ $WANT == *" train_step "* ]]; then
    say "## 2. train steps (bench/train_step.py --device $DEVICE)"
    timeout $LIMIT $PY bench/train_step.py --device "$DEVICE" --bf16 --models $MODELS --steps $STEPS --json \
        >"$OUT/train_step.jsonl" 2>>"$LOG" || say "train_step: exit $?"
fi

if [[ $WANT == *" study "* ]]; then
    say "## 3. the study (bench/study.py, DeepSpeed), $TRAIN_MODEL none / wq / wq-control, $TRAIN_STEPS steps: one process a variant side by side, seed after seed, for ${STUDY_S} s"
    if $PY -c "import deepspeed" 2>>"$LOG" && { [ -n "${HYQUT_CACHE:-}" ] || $PY -c "import datasets, chitchat_dataset"; }; then
        RUNS=$(mktemp -d)  # checkpoints (GBs at 150m) stay on the machine
        FLAGS=(--model $TRAIN_MODEL --steps $TRAIN_STEPS --eval-every $((TRAIN_STEPS / 3)) --out "$RUNS")
        TRAIN=(-- --lr $TRAIN_LR --eval-batches 4 --save-every $TRAIN_STEPS)
        for v in none wq wq-control; do  # a small model leaves the GPU mostly idle: three runs share it
            timeout $STUDY_S $PY bench/study.py "${FLAGS[@]}" --variants $v --seeds $(seq 0 $LAST_SEED) \
                --results "$RUNS/study-$v" "${TRAIN[@]}" >"$RUNS/study-$v.log" 2>&1 &
        done
        wait
        for v in none wq wq-control; do say "study $v: $(grep -c '^\$ ' "$RUNS/study-$v.log") runs started"; done
        seeds=""  # the seeds every variant finished: their study (collected, nothing trains)
        for s in $(seq 0 $LAST_SEED); do
            for v in none wq wq-control; do [ -f "$RUNS/$v-s$s/validation.json" ] || break 2; done
            seeds="$seeds $s"
        done
        if [ -n "$seeds" ]; then
            $PY bench/study.py "${FLAGS[@]}" --variants none wq wq-control --seeds $seeds \
                --results "$OUT/study-$TRAIN_MODEL" "${TRAIN[@]}" >>"$LOG" 2>&1 || say "study, seeds$seeds: exit $?"
        fi
        say "study: seeds$seeds of every variant finished"
        (cd "$RUNS" && for run in ./*/; do  # finished runs: their logs, flags, summaries, tokenizer, whole-split validation
            if [ -f "${run}summary.json" ]; then printf '%s\n' "${run}"{log.jsonl,run.json,summary.json,tokenizer.json}; fi
            if [ -f "${run}validation.json" ]; then printf '%s\n' "${run}validation.json"; fi
        done | tar -czf "$OUT/study-runs.tgz" -T - ./study-*.log)
    else
        say "study: skipped (DeepSpeed is missing, or both the cached corpus and datasets)"
    fi
fi

$PY - "$OUT" <<'EOF' 2>&1 | tee "$OUT/table.txt"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])


def rows(name):
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []


print(f"{'what':<44} {'N / model':>12} {'figure':>22} {'note':>30}")
vqc = rows("vqc.jsonl")
torch_path = {(r["mode"], r["method"], r["n_tokens"]): r["circuits_per_s"] for r in vqc if r["backend"] == "local-torch"}
for r in vqc:
    what = f"vqc {r['backend']} {r['mode']} {r['method'] or ''}".strip()
    if r["status"] == "ok":
        base = torch_path.get((r["mode"], r["method"], r["n_tokens"])) if r["backend"] == "local" else None
        notes = [] if r["forward_passes"] is None else [f"{r['forward_passes']:.1f} forward passes"]
        notes += [f"{r['circuits_per_s'] / base:.1f}x torch"] if base else []  # the kernels against the torch path
        fp = ", ".join(notes)
        print(f"{what:<44} {r['n_tokens']:>12} {r['circuits_per_s']:>14,.0f} tok-circ/s {fp:>30}")
    else:
        print(f"{what:<44} {r['n_tokens']:>12} {r['status']:>22} {str(r['note'])[:30]:>30}")
for r in rows("train_step.jsonl"):
    what = f"train step {r['quantum']} {r['grad']}"
    note = f"{r['ratio_vs_classical']:.2f}x classical"  # (the quantum share times launches on CUDA: left out)
    print(f"{what:<44} {r['model']:>12} {r['tokens_per_s']:>16,.0f} tok/s {note:>30}")
study = next(out.glob("study-*.md"), None)
if study:
    print(f"\n{study.name}:\n{study.read_text()}")
EOF
