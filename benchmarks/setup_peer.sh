#!/usr/bin/env bash
# Builds the peer of benchmarks/finetune.py: diffusers' own examples/dreambooth/train_dreambooth_lora.py
# in its own venv (.peer-venv/, git-ignored). The script is not in the diffusers wheel and imports
# torchvision, which must never enter the project's venv (it would replace the CPU torch).
#
#   bash benchmarks/setup_peer.sh /path/to/diffusers-git-mirror [PYTHON]
#
# The first argument is a git checkout or bare mirror of huggingface/diffusers; the script is taken
# from the tag matching the installed diffusers (v0.42.1 for 0.42.1), else from the newest release tag
# before it, else from its newest commit (a warning says so). The peer venv gets the same torch/diffusers/transformers/peft/accelerate/
# bitsandbytes versions as the project's venv; torch/torchvision as below.
set -euo pipefail
MIRROR=${1:?usage: setup_peer.sh DIFFUSERS_MIRROR [PYTHON]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OURS=${2:-$ROOT/.venv/bin/python}
VENV=$ROOT/.peer-venv
SCRIPT=$VENV/train_dreambooth_lora.py
REL=examples/dreambooth/train_dreambooth_lora.py

ver() { "$OURS" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# A torchvision wheel must match its torch build exactly: the CPU-only torch of the project's venv has
# no torchvision beside it here ("operator torchvision::nms does not exist"), so the peer gets the
# pair ENVIRONMENT.md names (override with PEER_TORCH / PEER_TORCHVISION, e.g. on a CUDA machine).
TORCH=${PEER_TORCH:-2.14.1}
TV=${PEER_TORCHVISION:-0.29.1}
DIFFUSERS=$(ver diffusers)

GIT=(git -C "$MIRROR")
[ -d "$MIRROR/.git" ] || GIT=(git --git-dir "$MIRROR")
# the newest release tag not newer than the installed diffusers: the exact one when the mirror has it
REF=$("${GIT[@]}" tag --list 'v[0-9]*' | grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$' \
    | { cat; echo "v$DIFFUSERS"; } | sort -V | awk -v want="v$DIFFUSERS" '$0 == want {print prev; exit} {prev = $0}')
if "${GIT[@]}" cat-file -e "v$DIFFUSERS:$REL" 2>/dev/null; then
    REF=v$DIFFUSERS
elif [ -n "$REF" ] && "${GIT[@]}" cat-file -e "$REF:$REL" 2>/dev/null; then
    echo "warning: tag v$DIFFUSERS not in $MIRROR; using $REF, its newest release before it" >&2
else
    REF=HEAD
    echo "warning: no release tag up to v$DIFFUSERS in $MIRROR; using its newest commit ($("${GIT[@]}" log -1 --format='%h %cs'))" >&2
fi

"$OURS" -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==$TORCH" "torchvision==$TV"
"$VENV/bin/pip" install -q "diffusers==$DIFFUSERS" "transformers==$(ver transformers)" "peft==$(ver peft)" \
    "accelerate==$(ver accelerate)" "bitsandbytes==$(ver bitsandbytes)" "safetensors==$(ver safetensors)" \
    "huggingface_hub==$(ver huggingface_hub)" Jinja2 ftfy
"${GIT[@]}" show "$REF:$REL" > "$SCRIPT.tmp" && mv "$SCRIPT.tmp" "$SCRIPT"
echo "$REF" > "$VENV/peer-ref.txt"
echo "peer ready: --peer-python $VENV/bin/python --peer-script $SCRIPT ($REF)"
