"""One request on a loaded pipeline: the call path of `Cosmos2_5_PredictBasePipeline.__call__`,
opened up so that each stage is timed, progress is reported, and the prompt embeddings are reused.

The math is the pipeline's own, step for step: on the same seed the frames are identical to
`pipe(...)` on the CPU (a test holds us to that), and within bf16 noise of it in the GPU's default
mode (`cosmos_pipeline.acceleration`). Fast-mode options may skip forwards (guidance interval, step
caching); the plan that ran comes back with the result. Stages: guardrail on the prompt ->
conditioning input -> prompt encoding -> latents -> denoising loop (the pipeline's UniPC steps, or the
distilled model's few steps) -> VAE decode -> guardrail on the video.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch

from cosmos_pipeline.acceleration.apply import apply_acceleration, current_plan
from cosmos_pipeline.acceleration.memory import text_encoder_on_device, use_tiled_decode, vae_tiling
from cosmos_pipeline.acceleration.options import Acceleration, AccelerationPlan, forward_count, step_kinds
from cosmos_pipeline.cfg_parallel import CFG_PARALLEL_ATTRIBUTE, CfgParallel
from cosmos_pipeline.distilled import DISTILLED_SIGMAS, sample_distilled
from cosmos_pipeline.loading import resolve_execution
from cosmos_pipeline.media import fit_frames, read_image, read_video
from cosmos_pipeline.request import GenerationRequest

StepCallback = Callable[[int, int, float], None]  # (step index, total steps, seconds of that step)


class UnsafeContentError(RuntimeError):
    """The guardrail refused the prompt."""


@dataclass
class Timings:
    prompt_encoding_s: float = 0.0
    conditioning_s: float = 0.0
    steps_s: list[float] = field(default_factory=list)
    decode_s: float = 0.0
    total_s: float = 0.0
    forwards: int = 0  # transformer forwards run: 2 per step with guidance, fewer in fast mode

    @property
    def denoising_s(self) -> float:
        return sum(self.steps_s)


@dataclass
class GenerationResult:
    request: GenerationRequest  # with the seed actually used
    frames: np.ndarray  # (T, H, W, 3) uint8
    latents: torch.Tensor  # final denoised latents, before the VAE (for comparing variants and modes)
    guardrail: bool
    timings: Timings
    peak_memory_bytes: int | None  # on CUDA only
    seams: list[int] = field(default_factory=list)  # long videos: index of each window's first new frame
    acceleration: dict = field(default_factory=dict)  # the plan that ran (AccelerationPlan fields, vae_tiled)

    @property
    def seed(self) -> int:
        assert self.request.seed is not None
        return self.request.seed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_conditioning(request: GenerationRequest) -> np.ndarray | None:
    """The input frames the request conditions on, fitted to the output size (T, H, W, 3)."""
    if request.source == "text":
        return None
    assert request.input_path is not None
    if request.source == "image":
        frames = read_image(request.input_path, size=(request.height, request.width))[None]
    else:
        frames = read_video(request.input_path, max_frames=request.conditioning_frames, last=True)
    return fit_frames(frames, request.height, request.width, request.fit)


def conditioning_video(
    pipe, request: GenerationRequest, frames: np.ndarray | None, source: str
) -> tuple[torch.Tensor, int]:
    """The pipeline's `video` tensor (B, C, T, H, W) and how many of its frames are real input."""
    import torchvision.transforms.functional

    height, width, num_frames = request.height, request.width, request.num_frames
    if frames is None:
        return torch.zeros(1, 3, num_frames, height, width, dtype=torch.uint8), 0
    if source == "image":
        image = torchvision.transforms.functional.to_tensor(PIL.Image.fromarray(frames[0])).unsqueeze(0)
        video = torch.cat([image, torch.zeros_like(image).repeat(num_frames - 1, 1, 1, 1)], dim=0)
        return pipe.video_processor.preprocess_video(video.unsqueeze(0), height, width), 1
    video = pipe.video_processor.preprocess_video(
        [PIL.Image.fromarray(frame) for frame in frames], height, width
    )
    if video.shape[2] < num_frames:  # pad with the last frame, as the pipeline does
        video = torch.cat((video, video[:, :, -1:].repeat(1, 1, num_frames - video.shape[2], 1, 1)), dim=2)
    return video, frames.shape[0]


def encode_prompts(
    pipe, request: GenerationRequest, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompt and negative-prompt embeddings, computed once per (prompt, negative prompt) per pipeline."""
    do_cfg = guided(request)
    key = (request.prompt, request.negative_prompt if do_cfg else None, do_cfg)
    cache = pipe.__dict__.setdefault("_cosmos_prompt_cache", {})
    if key not in cache:
        cache.clear()  # keep one entry: embeddings are large and batches usually share a prompt
        with text_encoder_on_device(pipe):  # a no-op unless the memory plan offloads the text encoder
            cache[key] = pipe.encode_prompt(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                do_classifier_free_guidance=do_cfg,
                device=device,
            )
    return cache[key]


def guided(request: GenerationRequest) -> bool:
    """Classifier-free guidance runs: a scale above 1, and not on the distilled model (it has it built in)."""
    return request.guidance_scale > 1.0 and not request.is_distilled


@torch.no_grad()
def generate(
    pipe,
    request: GenerationRequest,
    on_step: StepCallback | None = None,
    conditioning: np.ndarray | None = None,
    options: Acceleration | None = None,
) -> GenerationResult:
    """Run `request` on `pipe`. `conditioning` (T, H, W, 3) replaces the frames read from
    `request.input_path` (long videos condition each window on the previous one, in memory).
    `options`: acceleration for this call; left out, the plan applied at load time (or the default mode)."""
    request = resolve_execution(request.with_seed())  # the record says which device and dtype ran
    timings = Timings()
    plan = _plan(pipe, options)
    device = pipe._execution_device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()

    # 1. Guardrail on the prompt
    guardrail = not _is_pass_through(pipe.safety_checker)
    pipe.safety_checker.to(device)
    if not pipe.safety_checker.check_text_safety(request.prompt):
        raise UnsafeContentError(
            f"the Cosmos guardrail refused the prompt of {request.name or 'this request'}"
        )

    # 2. Conditioning input (Image2World / Video2World)
    stage = time.perf_counter()
    source = request.source if conditioning is None else "video"
    if conditioning is None:
        conditioning = load_conditioning(request)
    video, num_frames_in = conditioning_video(pipe, request, conditioning, source)
    video = video.to(device=device, dtype=pipe.vae.dtype)
    timings.conditioning_s = time.perf_counter() - stage

    # 3. Prompt encoding
    stage = time.perf_counter()
    prompt_embeds, negative_prompt_embeds = encode_prompts(pipe, request, device)
    _sync(device)
    timings.prompt_encoding_s = time.perf_counter() - stage

    # 4. Latents (the VAE encodes the conditioning frames here)
    stage = time.perf_counter()
    transformer_dtype = pipe.transformer.dtype
    do_cfg = guided(request)
    generator = torch.Generator().manual_seed(request.seed)
    latents, cond_latent, cond_mask, cond_indicator = pipe.prepare_latents(
        video=video,
        batch_size=1,
        num_channels_latents=pipe.transformer.config.in_channels - 1,
        height=request.height,
        width=request.width,
        num_frames_in=num_frames_in,
        num_frames_out=request.num_frames,
        do_classifier_free_guidance=do_cfg,
        dtype=torch.float32,
        device=device,
        generator=generator,
    )
    padding_mask = latents.new_zeros(1, 1, request.height, request.width, dtype=transformer_dtype)
    _sync(device)
    timings.conditioning_s += time.perf_counter() - stage

    # 5. Denoising loop
    pipe.scheduler.set_timesteps(request.num_inference_steps, device=device)
    cond_mask = cond_mask.to(transformer_dtype)
    gt_velocity = (latents - cond_latent) * cond_mask
    conditional_frame_timestep = 0.0001  # the pipeline's default: conditioning frames are (nearly) clean

    def velocity(in_latents: torch.Tensor, in_timestep: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        prediction = pipe.transformer(
            hidden_states=in_latents,
            condition_mask=cond_mask,
            timestep=in_timestep,
            encoder_hidden_states=embeds,
            padding_mask=padding_mask,
            return_dict=False,
        )[0]
        return gt_velocity + prediction * (1 - cond_mask)  # conditioning frames keep their true velocity

    def step_done(index: int, total: int, started: float) -> None:
        _sync(device)
        timings.steps_s.append(time.perf_counter() - started)
        if on_step is not None:
            on_step(index, total, timings.steps_s[-1])

    if request.is_distilled:  # NVIDIA's few-step sampler: one forward a step, re-noised with the first noise

        def distilled_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
            started = time.perf_counter()
            sigma_t = torch.full((1, 1, 1, 1, 1), sigma, device=device, dtype=torch.float32)
            in_timestep = cond_indicator * conditional_frame_timestep + (1 - cond_indicator) * sigma_t
            in_latents = (cond_mask * cond_latent + (1 - cond_mask) * x).to(transformer_dtype)
            prediction = velocity(in_latents, in_timestep, prompt_embeds).float()
            step_done(len(timings.steps_s), len(DISTILLED_SIGMAS), started)
            return prediction

        timings.forwards = len(DISTILLED_SIGMAS)
        latents = sample_distilled(distilled_velocity, latents)
    else:
        # Each step runs both CFG forwards ("cfg"), unless fast mode guides on an interval only ("cond")
        # or reuses the last step's velocity ("reuse").
        kinds = step_kinds(plan, request.num_inference_steps, do_cfg)
        timings.forwards = forward_count(kinds)
        parallel: CfgParallel | None = pipe.__dict__.get(CFG_PARALLEL_ATTRIBUTE)  # a replica on a second GPU
        noise_pred = None
        with pipe.progress_bar(total=request.num_inference_steps) as progress_bar:
            for i, t in enumerate(pipe.scheduler.timesteps):
                step_start = time.perf_counter()
                if kinds[i] != "reuse":
                    sigma_t = pipe.scheduler.sigmas[i].expand(1).to(device=device, dtype=torch.float32)
                    in_timestep = cond_indicator * conditional_frame_timestep + (
                        1 - cond_indicator
                    ) * sigma_t.view(1, 1, 1, 1, 1)
                    in_latents = (cond_mask * cond_latent + (1 - cond_mask) * latents).to(transformer_dtype)

                    negative = None
                    if kinds[i] == "cfg" and parallel is not None:  # the unconditional forward, meanwhile
                        negative = parallel.submit(
                            device,
                            hidden_states=in_latents,
                            condition_mask=cond_mask,
                            timestep=in_timestep,
                            encoder_hidden_states=negative_prompt_embeds,
                            padding_mask=padding_mask,
                        )
                    noise_pred = velocity(in_latents, in_timestep, prompt_embeds)
                    if kinds[i] == "cfg":
                        if negative is None:
                            noise_pred_neg = velocity(in_latents, in_timestep, negative_prompt_embeds)
                        else:
                            noise_pred_neg = gt_velocity + negative.result() * (1 - cond_mask)
                        noise_pred = noise_pred + request.guidance_scale * (noise_pred - noise_pred_neg)
                latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                progress_bar.update()
                step_done(i, request.num_inference_steps, step_start)

    # 6. VAE decode
    stage = time.perf_counter()
    decoded = latents / pipe.latents_std.to(device, latents.dtype) + pipe.latents_mean.to(
        device, latents.dtype
    )
    tiled = use_tiled_decode(plan, device, request.height, request.width, request.num_frames)
    with vae_tiling(pipe.vae, tiled):  # tiles only when memory demands it, or when asked to
        decoded = pipe.vae.decode(decoded.to(pipe.vae.dtype), return_dict=False)[0]
    decoded = pipe._match_num_frames(decoded, request.num_frames)
    frames = pipe.video_processor.postprocess_video(decoded, output_type="np")[0]
    frames = (frames * 255).astype(np.uint8)  # as diffusers' export_to_video does
    _sync(device)
    timings.decode_s = time.perf_counter() - stage

    # 7. Guardrail on the video
    frames = pipe.safety_checker.check_video_safety(frames)
    pipe.maybe_free_model_hooks()

    timings.total_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    acceleration = {**plan.as_dict(), "vae_tiled": tiled}
    return GenerationResult(request, frames, latents, guardrail, timings, peak, acceleration=acceleration)


def _plan(pipe, options: Acceleration | None) -> AccelerationPlan:
    """The acceleration plan for this call: `options` applied, else the pipeline's own, else the default."""
    plan = current_plan(pipe)
    if options is not None or plan is None:
        plan = apply_acceleration(pipe, options)
    return plan


def _is_pass_through(safety_checker) -> bool:
    from cosmos_pipeline.guardrail import PassThroughSafetyChecker

    return isinstance(safety_checker, PassThroughSafetyChecker)
