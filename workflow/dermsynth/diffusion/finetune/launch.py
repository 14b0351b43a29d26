"""The fine-tune's entry points: in this process on one GPU (or CPU), through ``accelerate launch`` on
several, and ``python -m dermsynth.diffusion.finetune``, the command each launched process runs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ... import io
from ...errors import ConfigError, TrainingError
from . import settings
from .loop import train_lora

log = logging.getLogger("dermsynth")

#: the module ``accelerate launch`` runs in every process (this package, through its __main__)
MODULE = __package__


def launch_command(
    num_gpus: int,
    pretrained: str,
    images_csv,
    output_dir,
    cfg: dict,
    checkpoint_dir,
    threads: int = 1,
    python: str | None = None,
) -> list[str]:
    """The ``accelerate launch`` command line that runs ``main`` on ``num_gpus`` GPUs."""
    import sys

    if int(num_gpus) < 2:
        raise ConfigError(f"accelerate launch is for 2 or more GPUs, got {num_gpus}")
    return [
        python or sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(int(num_gpus)),
        "--num_machines",
        "1",
        # a port of its own: two fine-tunes on one node (two runs, two workflows) would otherwise both
        # rendezvous on torchrun's default 29500, and the second would fail or join the first
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        str(settings.resolve(cfg)["mixed_precision"]),
        "--dynamo_backend",
        "no",
        "-m",
        MODULE,
        "--pretrained_model_name_or_path",
        str(pretrained),
        "--instance_data_csv",
        str(images_csv),
        "--output_dir",
        str(output_dir),
        "--checkpoint_dir",
        str(checkpoint_dir),
        "--config_json",
        json.dumps(cfg, sort_keys=True, default=str),
        "--threads",
        str(int(threads)),
    ]


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_finetune(
    pretrained: str, images_csv, output_dir, cfg: dict, checkpoint_dir, threads: int = 1, gpus: int = 1
) -> dict | None:
    """The finetune stage: in this process on one GPU (or CPU), through ``accelerate launch`` on several."""
    import subprocess

    if int(gpus or 0) > 1:
        cmd = launch_command(gpus, pretrained, images_csv, output_dir, cfg, checkpoint_dir, threads)
        log.info("launching on %d GPUs: %s", gpus, " ".join(cmd[:8]) + " ...")
        rc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
        if rc != 0:
            raise TrainingError(
                f"accelerate launch on {gpus} GPUs exited with status {rc}: see the log above"
            )
        return json.loads((Path(output_dir) / "train_summary.json").read_text())
    return train_lora(pretrained, io.read_csv(images_csv), output_dir, cfg, checkpoint_dir, threads=threads)


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="DreamBooth-LoRA fine-tuning of a Stable Diffusion UNet (one process of a launch).",
    )
    p.add_argument("--pretrained_model_name_or_path", required=True)
    p.add_argument("--instance_data_csv", required=True, help="manifest CSV with columns path,label")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--config_json", default="{}", help="the finetune config section as JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ... import logs

    args = parse_args(argv)
    # under accelerate launch every process runs this; only the main one reports progress
    rank = int(os.environ.get("RANK", "0"))
    logs.setup(None, level=logging.INFO if rank == 0 else logging.WARNING)
    train_lora(
        args.pretrained_model_name_or_path,
        io.read_csv(args.instance_data_csv),
        args.output_dir,
        json.loads(args.config_json),
        args.checkpoint_dir,
        threads=args.threads,
        device=args.device,
    )
    return 0
