"""``python -m dermsynth.diffusion.finetune``: one process of a fine-tune (``accelerate launch`` runs it)."""

from .launch import main

raise SystemExit(main())
