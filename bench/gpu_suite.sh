#!/usr/bin/env bash
# Every GPU measurement of issue 16 in one go (< 8 min on one GPU): the table of bench/gpu_suite.py (images/s,
# fraction of the bf16 peak, peak memory; and `rtgrid plan` rows for orchestrator/plan/throughput.csv), then
# the side-by-side benchmarks' printouts (data path, fine-tune step + torch.compile, attack reuse, bf16 vs
# fp32) in a log next to the table.
#
#   bench/gpu_suite.sh                          # on a GPU node: bench/gpu_suite.csv (+ .throughput.csv, .log)
#   bench/gpu_suite.sh --out results/h100.csv   # elsewhere
#   bench/gpu_suite.sh --smoke --out /tmp/t.csv # tiny sizes, the table only: checks the code on a CPU
# PYTHON picks the interpreter (default: python).
set -euo pipefail

out="bench/gpu_suite.csv"
smoke=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=(--smoke); shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--smoke] [--out FILE.csv]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python}"
root="$(cd "$(dirname "$0")/.." && pwd)"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

"$python" bench/gpu_suite.py "${smoke[@]}" --out "$out"
if [ ${#smoke[@]} -eq 0 ]; then
  log="${out%.csv}.log"
  {
    "$python" bench/data_path.py --profile
    "$python" bench/finetune_step.py --workers 4
    "$python" bench/finetune_step.py --compile --blocks 9
    "$python" bench/attack_reuse.py
    "$python" bench/gpu_step.py
  } 2>&1 | tee "$log"
  echo "log: $log"
fi
