#!/usr/bin/env bash
# Prepares .whl/ (git-ignored) for benchmarks/gpu.sh: what the lent GPU machine lacks, as wheels for
# its Python 3.12 (it cannot reach a package index), plus diffusers' train_dreambooth_lora.py, the peer
# of benchmarks/finetune.py. Run here, where pip reaches the registries:
#
#   bash benchmarks/gpu_prepare.sh /path/to/diffusers-git-mirror
#
# The machine's image has torch, transformers, peft, accelerate, torchvision and the rest
# (/work/.library/device/KINDS.md); it lacks diffusers, bitsandbytes and jsonschema. Versions follow
# the project's venv, so both machines run the same library code. About 50 MB: the call's working
# tree may carry 64 MiB.
set -euo pipefail
MIRROR=${1:?usage: gpu_prepare.sh DIFFUSERS_MIRROR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
DEST=$ROOT/.whl
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for pkg in diffusers bitsandbytes jsonschema jsonschema-specifications referencing rpds-py; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$DEST" "$pkg==$(ver "$pkg")"
done
GIT=(git -C "$MIRROR")
[ -d "$MIRROR/.git" ] || GIT=(git --git-dir "$MIRROR")
REL=examples/dreambooth/train_dreambooth_lora.py
REF=v$(ver diffusers)
"${GIT[@]}" cat-file -e "$REF:$REL" 2>/dev/null || {
    REF=HEAD
    echo "warning: tag v$(ver diffusers) not in $MIRROR; peer script from its newest commit" >&2
}
"${GIT[@]}" show "$REF:$REL" > "$DEST/train_dreambooth_lora.py"
echo "$REF $("${GIT[@]}" rev-parse "$REF")" > "$DEST/train_dreambooth_lora.ref"
du -sh "$DEST"
