"""dermsynth: synthetic dermoscopy datasets with DreamBooth-LoRA Stable Diffusion (Derm-T2IM).

The library knows nothing about Snakemake: rules call thin scripts in ``workflow/scripts`` that
call one function of this package each.
"""

__version__ = "0.1.0"
