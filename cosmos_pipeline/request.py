"""The typed generation request: every value one generation needs, validated once.

Field names are diffusers' own (`prompt`, `negative_prompt`, `num_frames`, `num_inference_steps`,
`guidance_scale`, `height`, `width`) so values pass to the pipeline without renaming; the seed
script's flag names map onto them in `cosmos_pipeline.bundle` only. The mode is derived from
the inputs, never declared.
"""

import hashlib
import json
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cosmos_pipeline.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, FitMode
from cosmos_pipeline.storage import URI, Location, content_digest

DEFAULT_MODEL_ID = "nvidia/Cosmos-Predict2.5-2B"
EMBEDDED_MODEL_ID = "embedded:tiny"  # the offline model shipped with the project (cosmos_pipeline.tiny)
DEFAULT_REVISION = "diffusers/base/post-trained"
# NVIDIA's distilled 2B (cosmos_pipeline/distilled.py): 4 steps, one forward each, guidance distilled in.
DISTILLED_REVISION = "distilled"
# Named sizes (height, width). 720p is what the model was trained for; 480p is the native
# scripts' smaller preset; 256p is a preview size that keeps the embedded model fast on a CPU.
RESOLUTIONS: dict[str, tuple[int, int]] = {"720p": (704, 1280), "480p": (480, 832), "256p": (256, 448)}
MAX_WINDOW_FRAMES = 93  # frames one denoising window makes (the model's training length); longer = chained
VAE_TEMPORAL_FACTOR = 4  # Wan 2.1 VAE: 4 frames per latent frame (after the first)
SIZE_MULTIPLE = 16  # 8x VAE downsampling times the transformer's 2x2 patches

Dtype = Literal["auto", "bfloat16", "float16", "float32"]  # auto: float32 on a CPU, bfloat16 on a GPU
GuardrailMode = Literal["auto", "on", "off"]  # auto: on for real models, off for the embedded one
Mode = Literal["text2world", "image2world", "video2world", "text2image", "image2image"]


def nearest_valid_frame_counts(num_frames: int) -> tuple[int, int]:
    """The valid counts (1 or 4k+1) just below and just above `num_frames`."""
    below = max(1, (num_frames - 1) // VAE_TEMPORAL_FACTOR * VAE_TEMPORAL_FACTOR + 1)
    return below, below + VAE_TEMPORAL_FACTOR


class GenerationRequest(BaseModel):
    """One generation. Paths are absolute or relative to the working directory, or URIs (`s3://...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    prompt: str
    negative_prompt: str | None = None  # None: the pipeline's quality-focused default
    input_path: Location | None = None  # an image or a video to condition on
    output_path: Location | None = None
    num_frames: int = Field(default=93, ge=1)
    height: int = Field(default=RESOLUTIONS["720p"][0], gt=0)
    width: int = Field(default=RESOLUTIONS["720p"][1], gt=0)
    num_inference_steps: int = Field(default=36, ge=1, le=1000)
    guidance_scale: float = Field(default=7.0, ge=0.0, le=100.0, allow_inf_nan=False)  # <= 1 turns CFG off
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    seed_chosen: bool = False  # True when no seed was given and one was drawn (`with_seed`)
    num_latent_conditional_frames: int = Field(default=2, ge=1, le=2)  # Video2World: 1 or 2 latent frames
    fit: FitMode = "crop"
    # Long videos (num_frames > MAX_WINDOW_FRAMES) chain Video2World windows; defaults of the native scripts.
    chunk_size: int = Field(default=77, ge=5, le=MAX_WINDOW_FRAMES)  # frames per window, 4k+1
    chunk_overlap: int = Field(default=1, ge=1, le=2)  # latent frames each window takes from the previous
    lora_path: Location | None = None  # a LoRA adapter (diffusers format, or a native LoRA run's checkpoint)
    lora_alpha: float | None = Field(default=None, gt=0)  # a native LoRA's alpha when it is not its rank
    lora_scale: float = Field(default=1.0, ge=0.0, le=10.0, allow_inf_nan=False)
    model_id: str = DEFAULT_MODEL_ID  # hub id, local diffusers folder, native .pt / DCP folder, embedded:tiny
    revision: str = DEFAULT_REVISION
    base_model_id: str | None = None  # a native checkpoint's other components; None: the hub 2B/14B by size
    # NVIDIA documents the distilled model for Text2World only; Image2World/Video2World on it if True.
    distilled_conditioning: bool = False
    device: str = "cuda"
    device_map: str | None = None
    # A transformer replica on a second GPU runs each step's unconditional forward (auto: when two GPUs).
    cfg_parallel: str = "auto"
    dtype: Dtype = "auto"  # resolved where it runs (`loading.resolve_execution`); the record says which
    guardrail: GuardrailMode = "auto"
    overwrite: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt: str) -> str:
        prompt = prompt.strip()
        if not prompt:
            raise ValueError("the prompt is empty; give --prompt, --prompt_path or a bundle `prompt`")
        return prompt

    @field_validator("negative_prompt")
    @classmethod
    def _strip_negative(cls, negative_prompt: str | None) -> str | None:
        return None if negative_prompt is None else negative_prompt.strip()

    @field_validator("num_frames", "chunk_size")
    @classmethod
    def _frames_4k_plus_1(cls, num_frames: int) -> int:
        if num_frames != 1 and (num_frames - 1) % VAE_TEMPORAL_FACTOR:
            below, above = nearest_valid_frame_counts(num_frames)
            raise ValueError(
                f"{num_frames} frames is not of the form 4k+1 (the VAE packs 4 frames per latent frame); "
                f"the nearest valid counts are {below} and {above}, or 1 for an image"
            )
        return num_frames

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_16(cls, size: int) -> int:
        if size % SIZE_MULTIPLE:
            lower = size // SIZE_MULTIPLE * SIZE_MULTIPLE
            raise ValueError(
                f"{size} is not a multiple of {SIZE_MULTIPLE}; "
                f"use {lower or SIZE_MULTIPLE} or {lower + SIZE_MULTIPLE}"
            )
        return size

    @field_validator("input_path")
    @classmethod
    def _supported_media(cls, path: Path | URI | None) -> Path | URI | None:
        if path is not None and path.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            raise ValueError(
                f"unsupported media suffix {path.suffix!r} for {path}; use an image "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}) or a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
            )
        return path

    @model_validator(mode="after")
    def _video_needs_frames_to_predict(self) -> "GenerationRequest":
        if self.source == "video" and self.num_frames <= self.conditioning_frames:
            raise ValueError(
                f"Video2World keeps the last {self.conditioning_frames} input frames, "
                "so it needs more output "
                f"frames than that (got {self.num_frames}); use at least {self.conditioning_frames + 4}, "
                "or an image input for a single frame"
            )
        return self

    @model_validator(mode="after")
    def _distilled_is_text2world(self) -> "GenerationRequest":
        if self.is_distilled and self.source != "text" and not self.distilled_conditioning:
            raise ValueError(
                "the distilled model is documented for Text2World only and this request conditions on "
                f"{self.input_path}; drop the input, use another revision, or pass "
                "distilled_conditioning=true (--distilled_conditioning) to try it anyway"
            )
        return self

    @model_validator(mode="after")
    def _long_video_windows(self) -> "GenerationRequest":
        if self.is_long and self.chunk_size <= self.overlap_frames + VAE_TEMPORAL_FACTOR - 1:
            raise ValueError(
                f"chunk_size {self.chunk_size} leaves no new frames after an overlap of "
                f"{self.overlap_frames}; "
                f"use at least {self.overlap_frames + VAE_TEMPORAL_FACTOR}"
            )
        return self

    @model_validator(mode="after")
    def _output_kind(self) -> "GenerationRequest":
        if self.output_path is not None:
            wanted = ".png" if self.num_frames == 1 else ".mp4"
            if self.output_path.suffix.lower() != wanted:
                what = (
                    "one frame is an image"
                    if self.num_frames == 1
                    else f"{self.num_frames} frames are a video"
                )
                raise ValueError(f"output {self.output_path} should end in {wanted}: {what}")
        return self

    @property
    def source(self) -> Literal["text", "image", "video"]:
        if self.input_path is None:
            return "text"
        return "image" if self.input_path.suffix.lower() in IMAGE_SUFFIXES else "video"

    @property
    def mode(self) -> Mode:
        return f"{self.source}2{'image' if self.num_frames == 1 else 'world'}"  # type: ignore[return-value]

    @property
    def conditioning_frames(self) -> int:
        """How many input frames condition the generation (Video2World keeps the last ones)."""
        if self.source == "text":
            return 0
        if self.source == "image":
            return 1
        return VAE_TEMPORAL_FACTOR * (self.num_latent_conditional_frames - 1) + 1

    @property
    def label(self) -> str:
        """What runs and tasks are called: the request's name, else its mode."""
        return self.name or self.mode

    @property
    def is_distilled(self) -> bool:
        """NVIDIA's few-step sampler: no guidance, so `guidance_scale` and the step count do not apply."""
        return self.revision == DISTILLED_REVISION

    @property
    def is_embedded(self) -> bool:
        """The embedded model, or a checkpoint built on its components (`base_model_id`)."""
        return EMBEDDED_MODEL_ID in (self.model_id, self.base_model_id)

    @property
    def guardrail_enabled(self) -> bool:
        """`auto` means on for real models and off for the embedded model, which cannot run it offline."""
        return (not self.is_embedded) if self.guardrail == "auto" else self.guardrail == "on"

    @property
    def is_long(self) -> bool:
        return self.num_frames > MAX_WINDOW_FRAMES

    @property
    def overlap_frames(self) -> int:
        """Pixel frames each later window of a long video re-uses from the previous one."""
        return VAE_TEMPORAL_FACTOR * (self.chunk_overlap - 1) + 1

    def with_seed(self) -> "GenerationRequest":
        """This request with a seed chosen now if it had none, so every run is reproducible."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(2**31), "seed_chosen": True})

    def key(self) -> str:
        """A stable hash of everything that determines the output (not where it goes or on which device).

        A seed drawn by `with_seed` is left out, so re-running a request that gave no seed finds its
        earlier output. Input media count by content, not by path (a URI's content through this host's cache).
        """
        ignored = {"name", "output_path", "overwrite", "device", "device_map", "cfg_parallel", "seed_chosen"}
        fields = self.model_dump(mode="json", exclude=ignored)
        if self.seed_chosen:
            fields["seed"] = None
        if self.input_path is not None and (digest := content_digest(self.input_path)) is not None:
            fields["input_path"] = digest
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
