"""The AUTOMATIC1111 web UI's PNG ``parameters`` text: written as the web UI writes it, read as it reads it.

The web UI writes (modules/processing.py, create_infotext): the prompt, ``Negative prompt: ...`` when
there is one, then one line of ``Key: value`` pairs joined by ``, ``; a value holding ``,``, ``:`` or a
newline is JSON-quoted. Numbers are Python's ``str``, and the CFG scale comes from a slider that gives
``7`` for seven, so integral values carry no ``.0``. A LoRA is named in the prompt as
``<lora:name:weight>`` and listed as ``Lora hashes: "name: <12 hex>"``, the hex being the sha256 of
the file's tensor data (everything after the safetensors header, its "addnet" hash). The seed it can
replay is a 32-bit one. Reading (modules/infotext_utils.py, parse_generation_parameters) takes the last
line as the pairs when it holds at least three, the lines before as prompt and negative prompt, and
splits ``Size: WxH`` into ``Size-1`` and ``Size-2``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

#: one ``Key: value`` pair of the last line: a quoted value may hold commas
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
#: the web UI's RNG option when noise is drawn on the CPU, as ours is (its default is the GPU)
RNG_CPU = "CPU"


def number(v) -> str:
    """A number as the web UI prints it: ``7`` for 7.0, ``7.5`` for 7.5."""
    f = float(v)
    return str(int(f)) if f.is_integer() else str(f)


def quote(v) -> str:
    text = str(v)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def addnet_hash(path) -> str:
    """sha256 of a safetensors file's tensor data (after its header), the web UI's LoRA hash."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lora_tag(name: str, scale: float) -> str:
    return f"<lora:{name}:{number(scale)}>"


def parameters(
    prompt: str,
    negative_prompt: str,
    steps: int,
    sampler_display: str,
    guidance_scale: float,
    seed: int,
    width: int,
    height: int,
    model: str | None = None,
    model_hash: str | None = None,
    lora: tuple[str, str, float] | None = None,
) -> str:
    """The ``parameters`` text of one image; ``lora`` is (name, addnet_hash, weight) of the kohya file."""
    if lora:
        prompt = f"{prompt} {lora_tag(lora[0], lora[2])}"
    lines = [prompt] + ([f"Negative prompt: {negative_prompt}"] if negative_prompt else [])
    pairs = {
        "Steps": int(steps),
        "Sampler": sampler_display,
        "CFG scale": number(guidance_scale),
        "Seed": int(seed),
        "Size": f"{int(width)}x{int(height)}",
        "Model hash": model_hash,
        "Model": model,
        "Lora hashes": f"{lora[0].replace(':', '').replace(',', '')}: {lora[1][:12]}" if lora else None,
        "RNG": RNG_CPU,
    }
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in pairs.items() if v not in (None, "")))
    return "\n".join(lines)


def parse(text: str) -> dict[str, str]:
    """A ``parameters`` text read by the web UI's rules: ``Prompt``, ``Negative prompt`` and each pair."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last):
        if not value:
            continue  # the web UI's reader fails on an empty value and skips that key
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        size = _SIZE.match(value)
        if size:
            out[f"{key}-1"], out[f"{key}-2"] = size.groups()
        else:
            out[key] = value
    return out


def kohya_file(lora_path) -> Path | None:
    """The kohya/web-UI copy beside a LoRA (finetune.export kohya), or None when it was not written."""
    folder = Path(lora_path)
    folder = folder if folder.is_dir() else folder.parent
    found = sorted(folder.glob("*_kohya.safetensors"))
    return found[0] if len(found) == 1 else None
