#!/usr/bin/env bash
# Every GPU figure of the speed issues in one device call of at most 9 minutes, on a fresh machine.
#
#   here:    bash benchmarks/gpu_prepare.sh /path/to/diffusers-git-mirror   # once: .whl/
#   device:  run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=570)
#            run(command="bash benchmarks/gpu.sh generate", ...)            # one part only
#            run(command="bash benchmarks/gpu.sh generate_cg", ...)         # generation, CUDA graphs
#
# Parts: finetune (ours vs diffusers' script, + the paper config's step, + a profile), generate
# (ours vs the naive loop, 512 px, 25 steps, CFG 7), optimizer (the 8-bit AdamW step). Each part
# has its own time limit, so a slow one cannot starve the others. Each writes <part>.json (its last
# line: the benchmark's JSON) and <part>.log under $OUT; gpu.txt names the device.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/results/gpu}
mkdir -p "$OUT"
PARTS=${*:-finetune generate optimizer}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "no wheels: run benchmarks/gpu_prepare.sh here first"; exit 1; }
export PYTHONPATH=/tmp/site:$ROOT/workflow HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" \
    | tee -a "$OUT/gpu.txt"

part() {  # part NAME SECONDS SCRIPT ARGS...: the log in full, the last line as the part's JSON
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" python3 "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 3
    tail -n 1 "$OUT/$name.log" > "$OUT/$name.json"
}
for p in $PARTS; do
    case $p in
    finetune) part finetune 300 benchmarks/finetune.py --device cuda --steps 30 --warmup 10 \
        --variant paper --variant paper_fused:paper,fuse_qkv_lora=true --profile 5 --peer-python python3 \
        --peer-script .whl/train_dreambooth_lora.py ;;
    generate) part generate 180 benchmarks/generate.py --device cuda ;;
    # not in the default set (the three above fill one call): CUDA graphs for the denoising loop
    generate_cg) part generate_cg 240 benchmarks/generate.py --device cuda --compile on \
        --compile-mode reduce-overhead ;;
    optimizer) part optimizer 60 benchmarks/lora_optimizer.py --device cuda ;;
    *) echo "unknown part $p (finetune | generate | optimizer | generate_cg)"; exit 2 ;;
    esac
done
