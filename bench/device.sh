#!/usr/bin/env bash
# The GPU path, run once on a machine with an NVIDIA GPU, prepared to fit in 8 minutes:
#
#   bench/device.sh                  # on the GPU machine; outputs under $OUT (default runs/device)
#   bench/device.sh --cpu-dry-run    # here, on the CPU, at tiny sizes: the same steps, checked
#
# 1. the `local` simulator on CUDA through bench/vqc.py: forward, adjoint and a shift Jacobian
#    (one batch), float32, N up to 2^20 tokens;
# 2. the model's train step through bench/train_step.py: 8m and 150m, classical against wq (and
#    wgate, and wq with fd), bf16 autocast;
# 3. if DeepSpeed and the corpus are there: `python -m trainer.main` (DeepSpeed, bf16) for the
#    150m model, classical and wq, a few hundred steps each;
# then one table of it all. The GPU machine has torch (CUDA) but no package registry: wheels it
# lacks travel in .whl/ (DeepSpeed and what it needs, grpcio and protobuf of the versions
# qworker's stubs were made with) and the tokenized corpus in .cache/hyqut (a run then needs
# neither `datasets` nor the corpus package). Whatever is still missing is skipped, saying so.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-runs/device}
mkdir -p "$OUT"
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
    DEVICE=cpu VQC_N="256 1024" MODELS="tiny" STEPS=2 TRAIN_MODEL=tiny TRAIN_STEPS=3 TRAIN_LR=3e-3 LIMIT=600
else
    DEVICE=cuda VQC_N="65536 1048576" MODELS="8m 150m" STEPS=5 TRAIN_MODEL=150m TRAIN_STEPS=300 TRAIN_LR=1e-3 LIMIT=120
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

say "## 1. the local simulator (bench/vqc.py --device $DEVICE)"
timeout $LIMIT $PY bench/vqc.py --device "$DEVICE" --backends local --methods forward adjoint shift \
    --n $VQC_N --repeats 2 --budget-s 40 --json >"$OUT/vqc.jsonl" 2>>"$LOG" || say "vqc: exit $?"

say "## 2. train steps (bench/train_step.py --device $DEVICE)"
timeout $LIMIT $PY bench/train_step.py --device "$DEVICE" --bf16 --models $MODELS --steps $STEPS --json \
    >"$OUT/train_step.jsonl" 2>>"$LOG" || say "train_step: exit $?"

say "## 3. the trainer (DeepSpeed), $TRAIN_MODEL, classical and wq, $TRAIN_STEPS steps"
if $PY -c "import deepspeed" 2>>"$LOG" && { [ -n "${HYQUT_CACHE:-}" ] || $PY -c "import datasets, chitchat_dataset"; }; then
    for q in none wq; do
        timeout $((LIMIT / 2 + 60)) $PY -m trainer.main --model $TRAIN_MODEL --quantum $q --steps $TRAIN_STEPS \
            --batch-size 8 --lr $TRAIN_LR --warmup 30 --eval-every 100 --save-every 1000 --eval-batches 4 \
            --out "$OUT/run-$q" >>"$LOG" 2>&1 || say "trainer $q: exit $?"
        cp "$OUT/run-$q/log.jsonl" "$OUT/train-$q.jsonl" 2>/dev/null
        rm -rf "$OUT/run-$q"
    done
else
    say "trainer: skipped (DeepSpeed is missing, or both the cached corpus and datasets)"
fi

$PY - "$OUT" <<'EOF' 2>&1 | tee "$OUT/table.txt"
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])


def rows(name):
    path = out / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []


print(f"{'what':<44} {'N / model':>12} {'figure':>22} {'note':>30}")
for r in rows("vqc.jsonl"):
    what = f"vqc {r['backend']} {r['mode']} {r['method'] or ''}".strip()
    if r["status"] == "ok":
        fp = "" if r["forward_passes"] is None else f"{r['forward_passes']:.1f} forward passes"
        print(f"{what:<44} {r['n_tokens']:>12} {r['circuits_per_s']:>14,.0f} tok-circ/s {fp:>30}")
    else:
        print(f"{what:<44} {r['n_tokens']:>12} {r['status']:>22} {str(r['note'])[:30]:>30}")
for r in rows("train_step.jsonl"):
    what = f"train step {r['quantum']} {r['grad']}"
    note = f"{r['ratio_vs_classical']:.2f}x classical"  # (the quantum share times launches on CUDA: left out)
    print(f"{what:<44} {r['model']:>12} {r['tokens_per_s']:>16,.0f} tok/s {note:>30}")
for q in ("none", "wq"):
    log = rows(f"train-{q}.jsonl")
    if log:
        val = [r for r in log if "val_loss" in r]
        tps = statistics.median(r["tokens_per_s"] for r in log[5:] or log)
        note = f"train {statistics.mean(r['loss'] for r in log[-10:]):.3f}, val {val[-1]['val_loss']:.3f}" if val else ""
        print(f"{'trainer (DeepSpeed) ' + q + ', ' + str(len(log)) + ' steps':<44} {'':>12} {tps:>16,.0f} tok/s {note:>30}")
EOF
