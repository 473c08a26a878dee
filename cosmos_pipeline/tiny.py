"""The embedded model: a miniature Cosmos-Predict2.5 for offline runs, loaded like the real one.

Nothing can be downloaded on the machines this project is developed and tested on, yet the code
that loads the real model must be the code that runs. So the embedded model is the real pipeline's
classes at tiny sizes, saved with `save_pretrained` and loaded through the same `from_pretrained`
call as `nvidia/Cosmos-Predict2.5-2B`.

Two generations of it live here while the trained one is being finished (issue 12):
- The trained model: `scripts/train_toyworld.py` trains `build_trainable_transformer` and
  `build_trainable_vae` on `cosmos_pipeline.toyworld` and exports both revisions into
  `cosmos_pipeline/embedded/{pre-trained,post-trained}/` (plus `lora-pink/`). Where those folders
  exist, they are the embedded model. Its sizes are chosen for a 2-core CPU, where attention over
  latent tokens and the VAE's full-resolution convolutions dominate: a Wan VAE with a 2x2 pixel
  patch before three downsamplings (16x in space, 4x in time; the pipeline reads 16x from
  `len(temperal_downsample)` and 4x from its sum, hence [False, True, True, False]) and a 2-layer,
  128-wide transformer with 1x2x1 patches (1,792 tokens at 256x448x29). Heights must then be
  multiples of 32 (`HEIGHT_MULTIPLE`).
- Until then, a random-weight stand-in is built on first use (seeded, tokenizer trained with
  `tokenizers`) into a cache: it proves equality with diffusers' own call and nothing else. Its two
  revisions differ by a seeded perturbation of the transformer.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from cosmos_pipeline import toyworld

EMBEDDED_MODEL_ID = "embedded:tiny"
PRE_TRAINED = "diffusers/base/pre-trained"
POST_TRAINED = "diffusers/base/post-trained"
REVISION_SEEDS = {PRE_TRAINED: None, POST_TRAINED: 1}  # seed of the stand-in's post-training perturbation
EMBEDDED_DIR = Path(__file__).parent / "embedded"  # the trained model, as package data
REVISION_FOLDERS = {PRE_TRAINED: "pre-trained", POST_TRAINED: "post-trained"}
LORA_PATH = EMBEDDED_DIR / "lora-pink"
HEIGHT_MULTIPLE, WIDTH_MULTIPLE = 32, 16  # the trained model: a 16x VAE times 1x2x1 transformer patches

# Bump when the construction below changes, so stale caches are rebuilt rather than reused.
BUILD_VERSION = "2"

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The tokenizer's training text: enough English to give common words their own tokens, and every
# toy-world word often enough to be one token.
TOY_WORDS = " ".join(
    [*toyworld.PALETTE, *toyworld.SHAPES, *(p for ps in toyworld.MOTIONS.values() for p in ps)]
    + [p for phrases, *_ in toyworld.BACKGROUNDS.values() for p in phrases]
)
CORPUS = [
    "You are a helpful assistant who will provide prompts to an image generator.",
    "A robot arm picks up a red box from a conveyor belt in a bright warehouse.",
    "A car drives down a snowy street at night, its headlights cutting through the falling snow.",
    "The camera pans slowly across a kitchen where a person is cooking vegetables on a stove.",
    "A ball rolls across the floor and bounces off the wall; the scene is lit by the afternoon sun.",
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas.",
    *[TOY_WORDS] * 20,
]
TEXT_HIDDEN = 32
TEXT_LAYERS = 2


def embedded_cache_dir() -> Path:
    """Where built tiny pipelines live; `COSMOS_CACHE_DIR` moves it (tests point it at a temp dir)."""
    root = os.environ.get("COSMOS_CACHE_DIR") or Path.home() / ".cache" / "cosmos-world-pipeline"
    return Path(root) / "embedded"


def is_embedded(model_id: str) -> bool:
    return model_id == EMBEDDED_MODEL_ID


def build_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_text_encoder(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": TEXT_LAYERS,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_transformer(perturbation_seed: int | None):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    transformer = CosmosTransformer3DModel(
        in_channels=16 + 1,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        mlp_ratio=2.0,
        text_embed_dim=32,
        adaln_lora_dim=4,
        max_size=(128, 240, 240),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 3.0, 3.0),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
        use_crossattn_projection=True,
        crossattn_proj_in_channels=TEXT_HIDDEN * TEXT_LAYERS,
        encoder_hidden_states_channels=32,
    )
    if perturbation_seed is not None:
        generator = torch.Generator().manual_seed(perturbation_seed)
        with torch.no_grad():
            for param in transformer.parameters():
                param.add_(0.25 * param.std().nan_to_num(0.0) * torch.randn(param.shape, generator=generator))
    return transformer.eval()


def build_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


TRANSFORMER_CONFIG = dict(
    in_channels=16 + 1,  # latents and the condition mask
    out_channels=16,
    num_attention_heads=2,
    attention_head_dim=64,
    num_layers=2,
    mlp_ratio=4.0,
    text_embed_dim=128,
    adaln_lora_dim=32,
    max_size=(128, 240, 240),
    patch_size=(1, 2, 1),
    rope_scale=(1.0, 3.0, 3.0),
    concat_padding_mask=True,
    extra_pos_embed_type=None,
    use_crossattn_projection=True,
    crossattn_proj_in_channels=TEXT_HIDDEN * TEXT_LAYERS,
    encoder_hidden_states_channels=128,
)
VAE_CONFIG = dict(
    base_dim=8,  # the encoder; it runs for Image2World/Video2World inputs only
    decoder_base_dim=4,  # every video's decode: a thin top stage keeps it fast on a CPU
    z_dim=16,
    # Wan 2.2's residual blocks (an average-pooling shortcut around every down block, a duplicating one
    # around every up block; dim_mult's last two equal, as those shortcuts need). Without them the encoder
    # collapsed to a constant within 25 steps on unseen scenes (benchmarks/toyworld/vae_overfit.py
    # --fresh): the grey frames of the toy world's attempts 1-3.
    is_residual=True,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    temperal_downsample=[False, True, True, False],
    in_channels=12,  # RGB in 2x2 patches
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
)


def build_trainable_transformer():
    """The trained model's transformer with fresh weights (seeded), for `scripts/train_toyworld.py`."""
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    return CosmosTransformer3DModel(**TRANSFORMER_CONFIG)


def build_trainable_vae():
    """The trained model's VAE with fresh weights (seeded); training sets its latents_mean/std."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(**VAE_CONFIG)


def build_scheduler():
    from diffusers import UniPCMultistepScheduler

    # The scheduler config of the real Cosmos-Predict2.5 checkpoints (diffusers' conversion script).
    return UniPCMultistepScheduler(
        use_karras_sigmas=True,
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        sigma_max=200.0,
        sigma_min=0.01,
    )


def save_tiny_pipeline(revision: str, directory: Path) -> None:
    """Build the random-weight stand-in for `revision` and save it into `directory`."""
    from diffusers import Cosmos2_5_PredictBasePipeline

    from cosmos_pipeline.guardrail import PassThroughSafetyChecker

    tokenizer = build_tokenizer()
    pipe = Cosmos2_5_PredictBasePipeline(
        text_encoder=build_text_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=build_transformer(REVISION_SEEDS[revision]),
        vae=build_vae(),
        scheduler=build_scheduler(),
        safety_checker=PassThroughSafetyChecker(),
    )
    save_pipeline(pipe, directory)


def save_pipeline(pipe, directory: Path) -> None:
    """`save_pretrained` laid out as the real checkpoints are: no safety_checker folder (the guardrail
    is attached at load time)."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # it would warn that the pass-through checker is not saved: right
    try:
        pipe.save_pretrained(directory, safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    index = directory / "model_index.json"
    config = json.loads(index.read_text())
    config.pop("safety_checker", None)
    index.write_text(json.dumps(config, indent=2))
    shutil.rmtree(directory / "safety_checker", ignore_errors=True)


def embedded_model_path(revision: str) -> Path:
    """The folder of the embedded model's `revision`: the trained one where it is installed, else the
    random-weight stand-in, built on first use (atomically)."""
    from cosmos_pipeline.errors import InputError

    if revision not in REVISION_SEEDS:
        raise InputError(
            f"the embedded model has no revision {revision!r}; use one of: {', '.join(REVISION_SEEDS)}"
        )
    trained = EMBEDDED_DIR / REVISION_FOLDERS[revision]
    if (trained / "model_index.json").is_file():
        return trained
    import diffusers
    import transformers

    key = f"{BUILD_VERSION}|{revision}|{diffusers.__version__}|{transformers.__version__}"
    slug = revision.replace("/", "--") + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    target = embedded_cache_dir() / slug
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=target.parent))
    try:
        save_tiny_pipeline(revision, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
