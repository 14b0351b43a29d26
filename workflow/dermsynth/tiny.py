"""Tiny random-weight models built offline from configs, with the real classes.

The demo and the tests swap only the model *size*: every directory written here loads with the same
``from_pretrained`` calls as the paper's hub checkpoints (Stable Diffusion 1.5, ViT-B/16 in21k,
MobileNetV2 1.0, SAM, DINOv2, CLIP ViT-L/14), so the training and generation code paths are the real ones.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import shutil
from pathlib import Path

from .errors import ConfigError, ModelNotFoundError
from .io import atomic_dir

log = logging.getLogger("dermsynth")

KINDS = ("sd", "vit", "mobilenet_v2", "sd15", "sam", "dinov2", "clip", "yolos")

#: CLIP's special tokens; SD 1.x pads with the end token.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build(kind: str, out_dir, seed: int = 0, **kw) -> Path:
    """Build the tiny model ``kind`` (one of KINDS) into ``out_dir`` and return that path.

    The directory is written to a temporary sibling and renamed, so a killed build never leaves a
    directory that ``from_pretrained`` half-loads.
    """
    builders = {
        "sd": _build_sd,
        "vit": _build_vit,
        "mobilenet_v2": _build_mobilenet_v2,
        "sd15": _build_sd15,
        "sam": _build_sam,
        "dinov2": _build_dinov2,
        "clip": _build_clip,
        "yolos": _build_yolos,
    }
    if kind not in builders:
        raise ConfigError(f"tiny model kind '{kind}' is unknown: use one of {', '.join(KINDS)}")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        builders[kind](tmp, seed=seed, **kw)
    log.info("built tiny %s model in %s (seed %d)", kind, out, seed)
    return out


# ---------------------------------------------------------------------------------------------
# CLIP tokenizer from open-clip-torch's BPE file


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte -> printable character map; its *order* fixes the ids of the byte tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _bpe_file() -> Path:
    # find_spec locates the package without importing it (open_clip imports torchvision)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "CLIP BPE vocabulary not found: `pip install --no-deps open-clip-torch==3.3.0` "
            "(it ships bpe_simple_vocab_16e6.txt.gz) or point the config at a real SD model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing: reinstall open-clip-torch (--no-deps)")
    return path


def build_clip_tokenizer(out_dir) -> Path:
    """Write CLIP's vocab.json + merges.txt (49,408 tokens, ids equal to OpenAI's) and a tokenizer config."""
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens] + ["".join(m) for m in merges] + [BOS, EOS]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": BOS,
                "eos_token": EOS,
                "unk_token": EOS,
                "pad_token": EOS,
                "do_lower_case": True,
                "clean_up_tokenization_spaces": True,
            },
            indent=2,
        )
    )
    # round trip through transformers so the saved files are exactly what from_pretrained expects
    CLIPTokenizer.from_pretrained(out, model_max_length=77).save_pretrained(out)
    _clean_tokenizer_config(out / "tokenizer_config.json")
    return out


# ---------------------------------------------------------------------------------------------
# Stable Diffusion


#: the UNet, VAE and CLIP text encoder settings of each SD kind; the rest is shared (``_sd_models``)
_SD_ARCH = {
    "sd": {
        "unet": dict(
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
        ),
        "vae": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=16),
        "text": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        ),
    },
    # Stable Diffusion 1.5's own configs
    "sd15": {
        "unet": dict(
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
        ),
        "vae": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        "text": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            hidden_act="quick_gelu",
        ),
    },
}


def sd_unet_config(kind: str, image_size: int) -> dict:
    """UNet2DConditionModel keyword arguments of SD kind ``kind`` ("sd" or "sd15") at ``image_size``."""
    return dict(
        sample_size=image_size // 8,
        in_channels=4,
        out_channels=4,
        attention_head_dim=8,
        norm_num_groups=32,
        **_SD_ARCH[kind]["unet"],
    )


def _sd_models(kind: str, seed: int, image_size: int):
    """Random-weight (unet, vae, text_encoder) of SD kind ``kind``."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = _SD_ARCH[kind]
    # each part gets its own seed so changing one part's size leaves the others' weights unchanged
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sd_unet_config(kind, image_size))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=image_size,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **arch["vae"],
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
            **arch["text"],
        )
    )
    return unet, vae, text_encoder


def _build_sd(out: Path, seed: int = 0, image_size: int = 64) -> None:
    """A tiny SD 1.x pipeline: same classes, scheduler and latent scale factor (8) as SD 1.5."""
    if image_size % 8:
        raise ConfigError(f"tiny sd image_size {image_size} is not a multiple of 8 (the VAE scale factor)")
    _save_sd_pipeline(out, *_sd_models("sd", seed, image_size))


def _save_sd_pipeline(out: Path, unet, vae, text_encoder, dtype=None) -> None:
    """Assemble a StableDiffusionPipeline around SD 1.5's scheduler and the offline CLIP tokenizer."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    # SD 1.5's scheduler/scheduler_config.json, value for value
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    tok_dir = build_clip_tokenizer(out / ".tokenizer-src")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if dtype is not None:
        pipe.to(dtype)
    pipe.save_pretrained(out, safe_serialization=True)
    # SD 1.5 ships the slow-tokenizer files too; keep them so any CLIP tokenizer class can load it
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tok_dir / name, out / "tokenizer" / name)
    shutil.rmtree(tok_dir)
    _clean_tokenizer_config(out / "tokenizer" / "tokenizer_config.json")


def _build_sd15(out: Path, seed: int = 0, image_size: int = 512, half: bool = True) -> None:
    """Stable Diffusion 1.5's architecture at full size with random weights (kind ``sd15``).

    The UNet (860 M params), VAE (84 M) and CLIP ViT-L/14 text encoder (123 M) have SD 1.5's
    configs, so FLOPs and memory equal the real model's: GPU benchmarks use it without a download.
    Saved in fp16 (1.1 GB instead of 2.1 GB on disk) unless ``half`` is false; loading with
    ``dtype=torch.float32`` upcasts.
    """
    import torch

    _save_sd_pipeline(out, *_sd_models("sd15", seed, image_size), dtype=torch.float16 if half else None)


def _clean_tokenizer_config(path: Path) -> None:
    cfg = json.loads(path.read_text())
    for key in ("is_local", "local_files_only"):  # facts about one load, not about the tokenizer
        cfg.pop(key, None)
    cfg["model_max_length"] = 77
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Classifiers


def _build_vit(out: Path, seed: int = 0, image_size: int = 64, num_labels: int | None = None) -> None:
    """A tiny ViT saved like google/vit-base-patch16-224-in21k (a backbone with pooler, no head).

    ``num_labels`` saves a ViTForImageClassification with that head instead.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    )
    if num_labels:
        cfg.num_labels = num_labels
        model = ViTForImageClassification(cfg)
    else:
        model = ViTModel(cfg, add_pooling_layer=True)
    model.save_pretrained(out, safe_serialization=True)
    ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out)


def _build_mobilenet_v2(
    out: Path, seed: int = 0, image_size: int = 64, num_labels: int = 1001, depth_multiplier: float = 0.35
) -> None:
    """A small MobileNetV2 saved like google/mobilenet_v2_1.0_224 (1001-class ImageNet head)."""
    import torch
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification, MobileNetV2ImageProcessor

    torch.manual_seed(seed)
    cfg = MobileNetV2Config(depth_multiplier=depth_multiplier, image_size=image_size, num_labels=num_labels)
    MobileNetV2ForImageClassification(cfg).save_pretrained(out, safe_serialization=True)
    # resize straight to the model size: the 256 -> 224 crop of the real processor has no tiny analogue
    MobileNetV2ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# Segment Anything


def _build_sam(out: Path, seed: int = 0, image_size: int = 64) -> None:
    """A tiny random-weight SAM (77 k params) saved like facebook/sam-vit-base: SamModel + SamProcessor.

    Its masks are meaningless; it exercises the SAM code path of the segment stage offline.
    """
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(seed)
    vision = SamVisionConfig(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        mlp_dim=64,
        global_attn_indexes=[1],
        window_size=2,
        num_pos_feats=16,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=32, image_size=image_size, patch_size=8, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
    )
    cfg = SamConfig(
        vision_config=vision.to_dict(),
        prompt_encoder_config=prompt.to_dict(),
        mask_decoder_config=decoder.to_dict(),
    )
    SamModel(cfg).save_pretrained(out, safe_serialization=True)
    low = image_size // 4  # SAM's masks come out at a quarter of the input side, as 256 for 1024
    SamProcessor(
        SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": low},
            mask_pad_size={"height": low, "width": low},
        )
    ).save_pretrained(out)


# ---------------------------------------------------------------------------------------------
# Feature extractors of the quality stage


def _build_dinov2(out: Path, seed: int = 0, image_size: int = 64) -> None:
    """A tiny random-weight DINOv2 (2 layers, width 32, patch 8) saved like facebook/dinov2-base:
    Dinov2Model + the BitImageProcessor config (ImageNet mean/std; resize and crop at ``image_size``)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
    )
    Dinov2Model(cfg).save_pretrained(out, safe_serialization=True)
    BitImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)


def _build_clip(out: Path, seed: int = 0, image_size: int = 64) -> None:
    """A tiny random-weight CLIP vision tower with projection (2 layers, width 32, patch 8), loadable
    like openai/clip-vit-large-patch14 by CLIPVisionModelWithProjection, with a CLIPImageProcessor config."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)


# Lesion detector (the detection check)


def _build_yolos(out: Path, seed: int = 0, image_size: int = 64) -> None:
    """A tiny random-weight YOLOS (33 k params) saved like hustvl/yolos-tiny: model + image processor.

    Ten detection tokens instead of 100 and a 91-class COCO-sized head, as the hub checkpoint has: the
    detection stage replaces the head with its two lesion classes either way.
    """
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    torch.manual_seed(seed)
    cfg = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[image_size, image_size],
        patch_size=8,
        num_detection_tokens=10,
        num_labels=91,
    )
    YolosForObjectDetection(cfg).save_pretrained(out, safe_serialization=True)
    size = {"shortest_edge": image_size, "longest_edge": image_size}
    YolosImageProcessorPil(size=size).save_pretrained(out)
