"""Train the embedded model on the toy world from scratch: VAE, transformer, post-training, LoRA.

    # on one GPU, resumable: a call stops at --deadline and the same command goes on from there
    python scripts/train_toyworld.py --checkpoints .toyworld/ckpt --device cuda --deadline 540
    # then, on any machine: the committed folders and the training record
    python scripts/train_toyworld.py --checkpoints .toyworld/ckpt --export cosmos_pipeline/embedded
    # seconds on a CPU (the tests run it)
    python scripts/train_toyworld.py --smoke --checkpoints /tmp/ckpt --export /tmp/embedded

Stages, in order, each checkpointed (`<checkpoints>/state.json` says which are done):
  text       the tokenizer and the frozen text encoder (`tiny`), saved once: every machine then reads
             the same weights, whatever its transformers version would initialise
  vae        reconstruction of whole toy clips and single frames through the posterior mode (MSE + L1,
             objects weighted, a small L2 on the latents)
  stats      per-channel mean/std of the VAE's latents: the pipeline's `latents_mean`/`latents_std`
  pretrain   the transformer on the general toy world (single objects, trained combinations only)
  posttrain  the pre-trained transformer on the target domain (two objects) mixed with general scenes
  lora       a LoRA adapter on the post-trained transformer that teaches a new colour (pink)
  export     `save_pretrained` of both revisions and the adapter, and TRAINING.json

The transformer's objective is the one `Cosmos2_5_PredictBasePipeline.__call__` integrates:
latents are the VAE's posterior mode normalised by `latents_mean`/`latents_std`; the noisy input is
x = (1 - s) x0 + s noise with s a flow sigma, drawn with the density of the scheduler's Karras
schedule (sigma_min..sigma_max, rho 7, mapped s = sigma / (1 + sigma)); the transformer's timestep
input is s itself; it predicts the velocity noise - x0 (UniPC's `flow_prediction`: x0 = x - s v).
Conditioning frames (Image2World: one latent frame, Video2World: one or two) enter clean, with the
condition mask set and timestep 0.0001, and carry no loss (the pipeline replaces their velocity by
the true one). Prompts are dropped to the pipeline's default negative prompt, so that classifier-free
guidance against it works. Stages end on a time budget (the learning rate follows elapsed time),
so that a fixed GPU allowance is spent whatever the card's speed; seeds fix every batch.
"""

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_pipeline import tiny, toyworld  # noqa: E402

STAGES = ("text", "vae", "stats", "pretrain", "posttrain", "lora")
CONDITIONAL_FRAME_TIMESTEP = 0.0001  # the pipeline's default for conditioning frames
REWARM = 0.03  # share of an extended stage's budget over which its learning rate climbs back
FIT_MARGIN = 15.0  # seconds a fitted stage leaves before the deadline: the last steps, the EMA, the save
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


@dataclass(frozen=True)
class Bucket:
    """One batch shape; `crop` cuts (height, width) out of the rendered frames (VAE training)."""

    height: int
    width: int
    frames: int
    batch: int
    weight: float = 1.0
    crop: tuple[int, int] | None = None


@dataclass(frozen=True)
class Stage:
    seconds: float  # the budget; the learning rate decays over it
    lr: float
    buckets: tuple[Bucket, ...]
    max_steps: int | None = None  # an additional cap (the smoke setting)
    ema: float = 0.999
    bank_batches: int = 0  # transformer stages: batches per bucket rendered and encoded once, then reused


@dataclass(frozen=True)
class Config:
    vae: Stage
    pretrain: Stage
    posttrain: Stage
    lora: Stage
    seed: int = 0
    stats_clips: int = 256
    prompt_dropout: float = 0.15  # share of prompts replaced by the default negative prompt
    conditioning: tuple[float, float, float] = (0.5, 0.25, 0.25)  # none / 1 / 2 conditioning latent frames
    continuation: float = 0.25  # share of clips cut from later in their scene (always conditioned)
    # The transformer's loss weighs each latent element by 1 + object_weight * coverage (coverage: the
    # objects' pixel coverage, max-pooled onto the latent grid), so 10 weighs object latents 11x, 0 is
    # uniform. Attempt 6 trained with 0: the wide bands of the prompted colour stayed (TOYWORLD.md).
    object_weight: float = 10.0  # extra loss weight where objects are: they are what a prompt names
    object_weight_override: float | None = None  # --object_weight: replaces a resumed stage's recorded one
    vae_object_weight: float = 10.0  # the same for the VAE's reconstruction: colour lives in the objects
    domain_share: float = 0.5  # post-training: share of two-object scenes
    lora_share: float = 0.5  # LoRA: share of pink scenes
    lora_rank: int = 8
    checkpoint_every: float = 60.0  # seconds
    seconds_overrides: dict[str, float] = field(default_factory=dict)
    vae_gate: float = 0.0  # stop after `stats` when fewer held-out clips than this show their colour
    probe_every: float = 0.0  # seconds between the VAE's held-out checks while it trains (0: none)
    fit: tuple[str, ...] = ()  # stages whose budget shrinks to end before the deadline (then kept on resume)


def transformer_buckets(tokens: int, sizes: dict, frames: dict) -> tuple[Bucket, ...]:
    """Every (size, frame count) pair, batched to about `tokens` latent tokens (1,792 per 256x448x29 clip)."""
    buckets = []
    for (height, width), size_weight in sizes.items():
        for count, frame_weight in frames.items():
            per_clip = (height // 32) * (width // 16) * ((count - 1) // 4 + 1)
            buckets.append(
                Bucket(height, width, count, max(2, tokens // per_clip), size_weight * frame_weight)
            )
    return tuple(buckets)


# The sizes the model generates: 256x448 (the demo, the evaluation) and 128x224 (fast tests), at the
# frame counts of a window (29), of a long video's later windows (21) and of short tests (13, 9).
TRANSFORMER_BUCKETS = transformer_buckets(
    64 * 1792, {(256, 448): 0.7, (128, 224): 0.3}, {29: 0.7, 21: 0.1, 13: 0.1, 9: 0.1}
)
FULL = Config(
    # Clips as long as the pipeline decodes: the causal VAE's caches reach back over every earlier
    # latent frame, and one trained on 9 frames only drifts from the 4th latent frame on.
    vae=Stage(
        seconds=170,
        lr=6e-4,
        ema=0.0,
        # and single frames, which Image2World's first frame (PSNR >= 25 dB) goes through alone
        buckets=(
            Bucket(256, 448, 29, 8, 0.3, crop=(128, 224)),
            Bucket(128, 224, 29, 8, 0.3),
            Bucket(256, 448, 1, 32, 0.4, crop=(128, 224)),
        ),
    ),
    pretrain=Stage(seconds=450, lr=8e-4, buckets=TRANSFORMER_BUCKETS, bank_batches=320),
    posttrain=Stage(seconds=110, lr=3e-4, ema=0.998, buckets=TRANSFORMER_BUCKETS, bank_batches=120),
    lora=Stage(seconds=50, lr=1e-3, ema=0.0, buckets=TRANSFORMER_BUCKETS, bank_batches=80),
)
SMALL = (Bucket(64, 112, 9, 2),)
SMOKE = Config(
    vae=Stage(seconds=60, lr=1e-3, ema=0.0, buckets=(Bucket(64, 112, 5, 1, crop=(32, 48)),), max_steps=1),
    pretrain=Stage(seconds=60, lr=5e-4, buckets=SMALL, max_steps=1, bank_batches=1),
    posttrain=Stage(seconds=60, lr=2e-4, buckets=SMALL, max_steps=1, bank_batches=1),
    lora=Stage(seconds=60, lr=1e-3, ema=0.0, buckets=SMALL, max_steps=1, bank_batches=1),
    stats_clips=2,
    checkpoint_every=1e9,
)


class Run:
    """What every stage needs: paths, device, the deadline, the record, a log."""

    def __init__(self, config: Config, checkpoints: Path, device: str, deadline: float) -> None:
        self.config, self.dir, self.device = config, checkpoints, torch.device(device)
        self.deadline = deadline
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"stages": {}}
        self.log_file = (self.dir / "train.log").open("a")
        self.until = STAGES[-1]
        self.started: dict[str, float] = {}  # stage -> time.monotonic() at its start (setup included)

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def done(self, stage: str) -> bool:
        return self.state["stages"].get(stage, {}).get("done", False)

    def record(self, stage: str, **values) -> None:
        self.state["stages"].setdefault(stage, {}).update(values)
        _atomic_write(self.state_path, json.dumps(self.state, indent=2))

    def seconds(self, stage: str) -> float:
        return self.config.seconds_overrides.get(stage, getattr(self.config, stage).seconds)

    def object_weight(self, stage: str) -> float:
        """The transformer's object weight for `stage`: --object_weight if given, else the one the stage
        recorded when it started (a resumed or extended stage keeps it), else the config's default."""
        if self.config.object_weight_override is not None:
            return self.config.object_weight_override
        return self.state["stages"].get(stage, {}).get("object_weight", self.config.object_weight)

    def use_object_weight(self, stage: str) -> float:
        """Record the stage's object weight; when a stage trained with another one goes on with this
        one, record the old weight and the seconds trained with it too."""
        weight = self.object_weight(stage)
        entry = self.state["stages"].get(stage, {})
        resumed = (self.dir / f"{stage}.pt").exists()
        before = entry.get("object_weight", self.config.object_weight if resumed else weight)
        if before != weight:
            trained = entry.get("seconds", 0.0)
            self.record(stage, object_weight_before=before, object_weight_until_s=trained)
            self.log(f"{stage}: object weight {weight:g} (was {before:g} for its first {trained:.0f} s)")
        else:
            self.log(f"{stage}: object weight {weight:g}")
        self.record(stage, object_weight=weight)
        return weight

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")


# ----------------------------------------------------------------------------- data


def sample_scenes(rng: np.random.Generator, count: int, kind: str, run: Run) -> tuple[list, list[int]]:
    """Scenes and start frames of `kind`: "general" (single objects, trained combinations only),
    "domain" (two objects, mixed with general) or "lora" (pink objects, mixed with general)."""
    config = run.config
    scenes, starts = [], []
    for _ in range(count):
        if kind == "domain" and rng.random() < config.domain_share:
            scene = toyworld.sample_scene(rng, num_objects=2)
        elif kind == "lora" and rng.random() < config.lora_share:
            scene = toyworld.sample_scene(rng, split="any", colours=(toyworld.NEW_COLOUR,))
        else:
            scene = toyworld.sample_scene(rng)
        scenes.append(scene)
        starts.append(int(rng.integers(1, 41)) if rng.random() < config.continuation else 0)
    return scenes, starts


def render_batch(
    scenes: list, starts: list[int], bucket: Bucket, rng: np.random.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) in [-1, 1] (the VAE's range) and the objects' coverage (B, 1, T, H, W)."""
    video, coverage = toyworld.render_with_coverage(
        scenes, bucket.height, bucket.width, bucket.frames, starts, device
    )
    if bucket.crop is not None:
        top = int(rng.integers(0, bucket.height - bucket.crop[0] + 1))
        left = int(rng.integers(0, bucket.width - bucket.crop[1] + 1))
        video = video[..., top : top + bucket.crop[0], left : left + bucket.crop[1]]
        coverage = coverage[..., top : top + bucket.crop[0], left : left + bucket.crop[1]]
    return video * 2 - 1, coverage


def pick_bucket(rng: np.random.Generator, buckets: tuple[Bucket, ...]) -> Bucket:
    weights = np.array([b.weight for b in buckets])
    return buckets[int(rng.choice(len(buckets), p=weights / weights.sum()))]


def batch_rng(run: Run, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([run.config.seed, STAGES.index(stage), step])


# ----------------------------------------------------------------------------- the training loop


def learning_rate(base: float, progress: float) -> float:
    """Linear warm-up over the first 3%, then cosine to a tenth."""
    if progress < 0.03:
        return base * progress / 0.03
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - 0.03) / 0.97))))


def reserve(run: Run, stage: str) -> float:
    """Seconds the stages after `stage` (up to --until) will need: their budgets, and their setup
    (encoders, bank) estimated from this stage's own, in proportion to their banks' sizes."""
    spec: Stage = getattr(run.config, stage)
    setup = time.monotonic() - run.started.get(stage, time.monotonic())
    total = 0.0
    for later in STAGES[STAGES.index(stage) + 1 : STAGES.index(run.until) + 1]:
        other = getattr(run.config, later, None)
        if not isinstance(other, Stage):
            continue
        share = other.bank_batches / spec.bank_batches if spec.bank_batches else 1.0
        total += run.seconds(later) + setup * max(share, 0.25) + 10.0  # 10 s: loading, saving
    return total


def train_loop(
    run: Run,
    stage: str,
    model: torch.nn.Module,
    step_loss: Callable[[int], torch.Tensor],
    probe: Callable[[], str] | None = None,
) -> bool:
    """Optimise `model`'s trainable parameters on `step_loss(step)` until the stage's budget is spent
    (True) or the deadline comes (False; resumable). Keeps an EMA of the weights when the stage asks."""
    spec: Stage = getattr(run.config, stage)
    path = run.dir / f"{stage}.pt"
    saved = torch.load(path, map_location=run.device, weights_only=True) if path.exists() else None
    already = saved["elapsed"] if saved is not None else 0.0  # seconds a resumed stage has trained
    budget = run.seconds(stage)
    recorded = run.state["stages"].get(stage, {}).get("budget")
    if recorded is not None and stage not in run.config.seconds_overrides:
        budget = recorded  # a resumed stage keeps the budget it started with, a fitted one too
    elif stage in run.config.fit:  # finish before the deadline, so that one call completes the stage
        left = run.deadline - time.time() - FIT_MARGIN - reserve(run, stage)
        budget = max(1.0, min(budget, already + left))  # the budget counts the seconds already trained
    run.record(stage, budget=round(budget, 1))
    run.log(f"{stage}: budget {budget:.0f} s")
    # A stage trained to its end and resumed with a larger budget (--seconds) goes on from its weights:
    # the learning rate climbs back from zero to the schedule's over REWARM of the budget, not at once.
    finished = saved is not None and recorded is not None and already >= recorded - 1.0
    extended = finished and budget > recorded + 1.0
    rewarm_from = already if extended else None
    if extended:
        run.log(f"{stage}: extended from {already:.0f} s to {budget:.0f} s; learning rate re-warmed")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=spec.lr, betas=(0.9, 0.99), weight_decay=0.01, fused=run.device.type == "cuda"
    )
    ema = [p.detach().clone().float() for p in params] if spec.ema else []
    step, elapsed, smoothed = 0, 0.0, None
    if saved is not None:
        model.load_state_dict(saved["model"], strict=False)
        optimizer.load_state_dict(saved["optimizer"])
        for e, value in zip(ema, saved["ema"], strict=True):
            e.copy_(value)
        step, elapsed, smoothed = saved["step"], saved["elapsed"], saved["loss"]
        run.log(f"{stage}: resumed at step {step}, {elapsed:.0f} s of {budget:.0f} s")

    def save() -> None:
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {n: t for n, t in model.state_dict().items() if n in trainable}
        payload = {"model": state, "optimizer": optimizer.state_dict(), "ema": ema, "step": step}
        torch.save({**payload, "elapsed": elapsed, "loss": smoothed}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
        run.record(stage, steps=step, seconds=round(elapsed, 1), loss=smoothed)

    model.train()
    last_save = last_probe = time.monotonic()
    while elapsed < budget and (spec.max_steps is None or step < spec.max_steps):
        if time.time() > run.deadline:
            save()
            run.log(f"{stage}: deadline at step {step}; run the same command again to go on")
            return False
        started = time.monotonic()
        progress = max(elapsed / budget, step / spec.max_steps if spec.max_steps else 0.0)
        lr = learning_rate(spec.lr, progress)
        if rewarm_from is not None:
            lr *= min(1.0, (elapsed - rewarm_from) / max(1e-6, REWARM * budget))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema:
            torch._foreach_lerp_(
                ema, [p.detach().float() for p in params], 1 - min(spec.ema, step / (step + 10))
            )
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{stage}: loss is {value} at step {step}")
        smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
        step += 1
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.monotonic() - started
        if step % 100 == 0 or step == 1:
            run.log(f"{stage}: step {step} loss {smoothed:.4f} ({elapsed:.0f}/{budget:.0f} s)")
        if time.monotonic() - last_save > run.config.checkpoint_every:
            save()
            last_save = time.monotonic()
        if (
            probe is not None
            and run.config.probe_every
            and time.monotonic() - last_probe > run.config.probe_every
        ):
            model.eval()
            run.log(f"{stage}: step {step} ({elapsed:.0f} s) {probe()}")  # not counted in `elapsed`
            model.train()
            last_probe = time.monotonic()
    if ema:  # the weights that ship are the EMA
        with torch.no_grad():
            for p, e in zip(params, ema, strict=True):
                p.copy_(e)
    save()
    run.log(f"{stage}: done, {step} steps in {elapsed:.0f} s, loss {smoothed:.4f}")
    return True


# ----------------------------------------------------------------------------- stages


def stage_text(run: Run) -> bool:
    tokenizer = tiny.build_tokenizer()
    tokenizer.save_pretrained(run.dir / "text" / "tokenizer")
    tiny.build_text_encoder(tokenizer).save_pretrained(run.dir / "text" / "text_encoder")
    return True


def stage_vae(run: Run) -> bool:
    vae = tiny.build_trainable_vae().to(run.device)
    spec = run.config.vae

    def step_loss(step: int) -> torch.Tensor:
        rng = batch_rng(run, "vae", step)
        bucket = pick_bucket(rng, spec.buckets)
        scenes = [
            toyworld.sample_scene(rng, 1 + int(rng.random() < 0.3), "any", colours=tuple(toyworld.PALETTE))
            for _ in range(bucket.batch)
        ]
        starts = [int(rng.integers(0, 30)) for _ in scenes]
        video, coverage = render_batch(scenes, starts, bucket, rng, run.device)
        with run.autocast():
            return vae_loss(vae, video, coverage, run.config.vae_object_weight)

    check = Bucket(256, 448, 29, 4) if run.device.type == "cuda" else SMALL[0]

    def probe() -> str:
        psnr, colours = vae_check(vae, run, check)
        return f"held-out PSNR by frame {psnr}, colour seen {colours:.2f}"

    finished = train_loop(run, "vae", vae, step_loss, probe)
    if finished:
        vae.eval().save_pretrained(run.dir / "vae-raw")
    return finished


def vae_loss(vae, video: torch.Tensor, coverage: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Reconstruction of `video` (B, 3, T, H, W) in [-1, 1] through the posterior's mode, as the pipeline
    and the transformer's latents use it (MSE + L1, pixels weighted by 1 + object_weight * coverage),
    and a small L2 on the latents that keeps their scale. Attempts 1-3 decoded posterior samples: the
    posterior's std stayed near its initial 1 while the means spread 0.1-0.5, so the decoder saw more
    noise than signal."""
    posterior = vae.encode(video).latent_dist
    error = vae.decode(posterior.mode()).sample.float() - video
    weight = 1 + object_weight * coverage  # objects are a few % of the pixels
    reconstruction = ((error**2 + 0.1 * error.abs()) * weight).sum() / (weight.sum() * error.shape[1])
    return reconstruction + 1e-4 * posterior.mean.float().pow(2).mean()


def stage_stats(run: Run) -> bool:
    """Per-channel mean and std of the latents, written into the VAE's config as the pipeline reads it."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(run.dir / "vae-raw").to(run.device).eval()
    bucket = Bucket(256, 448, 29, 8) if run.device.type == "cuda" else SMALL[0]
    rng = batch_rng(run, "stats", 0)
    latents = []
    with torch.no_grad(), run.autocast():
        for _ in range(max(1, run.config.stats_clips // bucket.batch)):
            scenes = [toyworld.sample_scene(rng) for _ in range(bucket.batch)]
            video, _ = render_batch(scenes, [0] * len(scenes), bucket, rng, run.device)
            latents.append(vae.encode(video).latent_dist.mode().float().transpose(0, 1).flatten(1))
    latents = torch.cat(latents, dim=1)
    mean, std = latents.mean(dim=1), latents.std(dim=1)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    vae.save_pretrained(run.dir / "vae")
    check = Bucket(256, 448, 29, 8) if run.device.type == "cuda" else SMALL[0]
    psnr, colours = vae_check(vae, run, check)
    run.record(
        "stats", latents_mean=mean.tolist(), latents_std=std.tolist(), psnr_by_frame=psnr, colour_seen=colours
    )
    run.log(
        f"stats: latent std {std.min():.3f}..{std.max():.3f}; PSNR by frame {psnr}; colour seen {colours:.2f}"
    )
    if colours < run.config.vae_gate:
        run.log(f"stats: colour seen in {colours:.2f} of the held-out clips, under --vae_gate")
        raise SystemExit(4)
    return True


def vae_psnr(vae, run: Run, bucket: Bucket) -> dict[int, float]:
    """Mean PSNR through the VAE of the first, middle and last frame of whole clips: the first is the
    Image2World conditioning path, the last shows whether the causal caches drift over a clip."""
    return vae_check(vae, run, bucket)[0]


def vae_check(vae, run: Run, bucket: Bucket) -> tuple[dict[int, float], float]:
    """`vae_psnr`, and the share of those held-out clips (every colour, pink too) whose reconstruction
    `toyscore` sees in the right colour: the PSNR is mostly background, the colour is what prompts name."""
    from cosmos_pipeline import toyscore
    from cosmos_pipeline.metrics import psnr

    scenes = toyworld.prompt_set(bucket.batch, seed=99, split="any", colours=tuple(toyworld.PALETTE))
    with torch.no_grad():
        video = toyworld.render(scenes, bucket.height, bucket.width, bucket.frames, device=run.device) * 2 - 1
        recon = vae.decode(vae.encode(video).latent_dist.mode()).sample.float()
    to_uint8 = lambda v: ((v.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()  # noqa: E731
    original, decoded = to_uint8(video), to_uint8(recon)
    frames = (0, bucket.frames // 2, bucket.frames - 1)
    by_frame = {
        t: round(float(np.mean([psnr(a[:, t], b[:, t]) for a, b in zip(original, decoded, strict=True)])), 2)
        for t in frames
    }
    seen = [
        toyscore.score_truth(np.ascontiguousarray(b.transpose(1, 2, 3, 0)), toyworld.parse_prompt(s.prompt))[
            "toy_colour"
        ]
        for s, b in zip(scenes, decoded, strict=True)
    ]
    return by_frame, float(np.mean(seen))


class Encoders:
    """The frozen parts, as the pipeline uses them: prompt embeddings (cached) and normalised latents."""

    def __init__(self, run: Run) -> None:
        from diffusers import AutoencoderKLWan, Cosmos2_5_PredictBasePipeline
        from diffusers.pipelines.cosmos.pipeline_cosmos2_5_predict import DEFAULT_NEGATIVE_PROMPT
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from cosmos_pipeline.guardrail import PassThroughSafetyChecker

        self.negative = DEFAULT_NEGATIVE_PROMPT
        self.pipe = Cosmos2_5_PredictBasePipeline(
            text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(
                run.dir / "text" / "text_encoder"
            ),
            tokenizer=AutoTokenizer.from_pretrained(run.dir / "text" / "tokenizer"),
            transformer=tiny.build_trainable_transformer(),  # a placeholder: stages train their own
            vae=AutoencoderKLWan.from_pretrained(run.dir / "vae"),
            scheduler=tiny.build_scheduler(),
            safety_checker=PassThroughSafetyChecker(),
        )
        self.pipe.text_encoder.to(run.device).eval()
        self.pipe.vae.to(run.device).eval()
        self.device = run.device
        self.autocast = run.autocast
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.cache})
        if missing:
            embeds, _ = self.pipe.encode_prompt(
                missing, do_classifier_free_guidance=False, device=self.device
            )
            stored = embeds.to(torch.bfloat16) if self.device.type == "cuda" else embeds
            self.cache.update(zip(missing, stored, strict=True))
        return torch.stack([self.cache[p] for p in prompts]).float()

    @torch.no_grad()
    def latents(self, video: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            latents = self.pipe.vae.encode(video).latent_dist.mode().float()
        mean = self.pipe.latents_mean.to(self.device)
        return (latents - mean) * self.pipe.latents_std.to(self.device)  # latents_std holds 1/std


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The flow interpolation the sampler walks: sigma = 1 is pure noise, 0 the clean latents."""
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the transformer predicts; UniPC's flow_prediction recovers x0 = x - sigma * v."""
    return noise - x0


def sample_sigmas(generator: torch.Generator, count: int, device) -> torch.Tensor:
    """Flow sigmas with the density of the scheduler's Karras schedule (what sampling visits)."""
    scheduler = tiny.build_scheduler().config
    rho, lo, hi = 7.0, scheduler.sigma_min, scheduler.sigma_max
    u = torch.rand(count, generator=generator, device=device)
    sigma = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return sigma / (1 + sigma)


def latent_coverage(coverage: torch.Tensor, factor: int = 16) -> torch.Tensor:
    """Pixel coverage (B, 1, T, H, W) on the latent grid: frame 0 alone, then 4 frames per latent frame,
    16x16 pixels per latent pixel (the VAE's factors), the maximum over each."""
    frames = torch.cat([coverage[:, :, :1].expand(-1, -1, 3, -1, -1), coverage], dim=2)
    batch, _, count, height, width = frames.shape
    frames = frames.view(batch, 1, count // 4, 4, height, width).amax(dim=3)
    return torch.nn.functional.max_pool3d(frames, (1, factor, factor))


class Bank:
    """Clips rendered and encoded once per stage, then drawn from with fresh noise, noise levels,
    conditioning and prompt dropout at every step: the GPU's time goes to the transformer."""

    def __init__(self, run: Run, stage: str, kind: str, encoders: Encoders) -> None:
        spec: Stage = getattr(run.config, stage)
        self.entries = []  # per bucket: (latents, coverage, prompts, starts)
        rng = batch_rng(run, stage, 10**9)  # apart from every step's
        total = sum(b.weight for b in spec.buckets)
        started = time.monotonic()
        for bucket in spec.buckets:
            parts = []
            for _ in range(max(1, round(spec.bank_batches * bucket.weight / total))):
                scenes, starts = sample_scenes(rng, bucket.batch, kind, run)
                video, coverage = render_batch(scenes, starts, bucket, rng, run.device)
                latents = encoders.latents(video).to(
                    torch.bfloat16 if run.device.type == "cuda" else torch.float32
                )
                encoders.embed([scene.prompt for scene in scenes])  # fills the cache
                parts.append((latents, latent_coverage(coverage), [s.prompt for s in scenes], starts))
            self.entries.append(
                (
                    torch.cat([p[0] for p in parts]),
                    torch.cat([p[1] for p in parts]),
                    [prompt for p in parts for prompt in p[2]],
                    torch.tensor([start for p in parts for start in p[3]], device=run.device),
                )
            )
        clips = sum(len(entry[2]) for entry in self.entries)
        run.log(f"{stage}: bank of {clips} clips in {time.monotonic() - started:.0f} s")


def flow_matching_loss(
    transformer, encoders: Encoders, bank: Bank, run: Run, stage: str, step: int
) -> torch.Tensor:
    """One batch of the pipeline's objective (see the module docstring), drawn from `bank`."""
    spec: Stage = getattr(run.config, stage)
    rng = batch_rng(run, stage, step)
    index = int(
        rng.choice(
            len(spec.buckets),
            p=np.array([b.weight for b in spec.buckets]) / sum(b.weight for b in spec.buckets),
        )
    )
    bucket, (latents, coverage, prompts, starts) = spec.buckets[index], bank.entries[index]
    picked = torch.from_numpy(rng.choice(len(prompts), size=min(bucket.batch, len(prompts)), replace=False))
    picked = picked.to(run.device)
    x0, weight = latents[picked].float(), 1 + run.object_weight(stage) * coverage[picked].float()
    batch, _, frames, height, width = x0.shape
    # conditioning latent frames: none, 1 or 2; clips cut from later in a scene are always conditioned
    cond = rng.choice(3, size=batch, p=run.config.conditioning) if frames > 2 else np.zeros(batch, dtype=int)
    cond = torch.from_numpy(cond).to(run.device)
    cond = torch.where((starts[picked] > 0) & (cond == 0) & (frames > 2), torch.ones_like(cond), cond)
    dropped = rng.random(batch) < run.config.prompt_dropout
    embeds = encoders.embed(
        [encoders.negative if d else prompts[i] for d, i in zip(dropped, picked.tolist(), strict=True)]
    )
    generator = torch.Generator(run.device).manual_seed(int(rng.integers(2**62)))
    noise = torch.randn(x0.shape, generator=generator, device=run.device)
    sigma = sample_sigmas(generator, batch, run.device).view(batch, 1, 1, 1, 1)
    indicator = (
        torch.arange(frames, device=run.device).view(1, 1, frames, 1, 1) < cond.view(batch, 1, 1, 1, 1)
    ).float()
    mask = indicator.expand(batch, 1, frames, height, width)
    noisy = noisy_latents(x0, noise, sigma)
    with run.autocast():
        prediction = transformer(
            hidden_states=mask * x0 + (1 - mask) * noisy,
            condition_mask=mask,
            timestep=indicator * CONDITIONAL_FRAME_TIMESTEP + (1 - indicator) * sigma,
            encoder_hidden_states=embeds,
            padding_mask=x0.new_zeros(1, 1, bucket.height, bucket.width),
            return_dict=False,
        )[0]
    weight = weight * (1 - mask)  # conditioning frames keep their true velocity in the pipeline: no loss
    error = (prediction.float() - velocity_target(x0, noise)) ** 2 * weight
    return error.sum() / (weight.sum() * x0.shape[1])


def stage_transformer(run: Run, stage: str) -> bool:
    encoders = Encoders(run)
    transformer = tiny.build_trainable_transformer()
    torch.nn.init.zeros_(transformer.proj_out.weight)  # start as "predict zero velocity", as DiT does
    if stage == "posttrain":
        transformer.load_state_dict(_load_weights(run, "pretrain"))
    transformer.to(run.device)
    bank = Bank(run, stage, "domain" if stage == "posttrain" else "general", encoders)
    run.use_object_weight(stage)
    finished = train_loop(
        run,
        stage,
        transformer,
        lambda step: flow_matching_loss(transformer, encoders, bank, run, stage, step),
    )
    if finished:
        _save_weights(run, stage, transformer.state_dict())
    return finished


def stage_lora(run: Run) -> bool:
    from peft import LoraConfig, get_peft_model_state_dict

    encoders = Encoders(run)
    transformer = tiny.build_trainable_transformer()
    transformer.load_state_dict(_load_weights(run, "posttrain"))
    transformer.requires_grad_(False)
    rank = run.config.lora_rank
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
    transformer.to(run.device)
    bank = Bank(run, "lora", "lora", encoders)
    run.use_object_weight("lora")
    finished = train_loop(
        run,
        "lora",
        transformer,
        lambda step: flow_matching_loss(transformer, encoders, bank, run, "lora", step),
    )
    if finished:
        from diffusers import Cosmos2_5_PredictBasePipeline

        layers = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
        Cosmos2_5_PredictBasePipeline.save_lora_weights(run.dir / "lora", transformer_lora_layers=layers)
    return finished


def _save_weights(run: Run, stage: str, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, run.dir / f"{stage}.safetensors")


def _load_weights(run: Run, stage: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run.dir / f"{stage}.safetensors")


def export(run: Run, destination: Path) -> None:
    """Both revisions and the adapter as committed folders, and the training record beside them."""
    from diffusers import AutoencoderKLWan, Cosmos2_5_PredictBasePipeline
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from cosmos_pipeline.guardrail import PassThroughSafetyChecker

    destination.mkdir(parents=True, exist_ok=True)
    for revision, stage in ((tiny.PRE_TRAINED, "pretrain"), (tiny.POST_TRAINED, "posttrain")):
        transformer = tiny.build_trainable_transformer()
        transformer.load_state_dict(_load_weights(run, stage))
        pipe = Cosmos2_5_PredictBasePipeline(
            text_encoder=Qwen2_5_VLForConditionalGeneration.from_pretrained(
                run.dir / "text" / "text_encoder"
            ),
            tokenizer=AutoTokenizer.from_pretrained(run.dir / "text" / "tokenizer"),
            transformer=transformer.eval(),
            vae=AutoencoderKLWan.from_pretrained(run.dir / "vae"),
            scheduler=tiny.build_scheduler(),
            safety_checker=PassThroughSafetyChecker(),
        )
        folder = destination / tiny.REVISION_FOLDERS[revision]
        shutil.rmtree(folder, ignore_errors=True)
        tiny.save_pipeline(pipe, folder)
    lora = destination / tiny.LORA_PATH.name
    shutil.rmtree(lora, ignore_errors=True)
    shutil.copytree(run.dir / "lora", lora)
    stages = {name: run.state["stages"].get(name, {}) for name in STAGES}
    stages["stats"] = {k: v for k, v in stages["stats"].items() if not k.startswith("latents_")}
    record = {
        "commands": run.state["commands"],
        "device": run.state.get("device"),
        "config": asdict(run.config),
        "stages": stages,
    }
    _atomic_write(destination / "TRAINING.json", json.dumps(record, indent=2) + "\n")
    run.log(f"export: {destination}")


def _atomic_write(path: Path, text: str) -> None:
    path.with_suffix(path.suffix + ".tmp").write_text(text)
    path.with_suffix(path.suffix + ".tmp").replace(path)


# ----------------------------------------------------------------------------- entry point


def train(run: Run, until: str = STAGES[-1]) -> bool:
    """Every stage up to `until` not done yet, in order; False when the deadline stopped one."""
    steps = {
        "text": stage_text,
        "vae": stage_vae,
        "stats": stage_stats,
        "pretrain": lambda r: stage_transformer(r, "pretrain"),
        "posttrain": lambda r: stage_transformer(r, "posttrain"),
        "lora": stage_lora,
    }
    if run.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        run.state["device"] = torch.cuda.get_device_name(run.device)
    else:
        run.state.setdefault("device", "cpu")
    run.until = until
    for stage in STAGES[: STAGES.index(until) + 1]:
        if run.done(stage):
            continue
        run.log(f"{stage}: start")
        run.started[stage] = time.monotonic()
        run.record(stage, device=run.state["device"])
        torch.manual_seed(run.config.seed)
        if not steps[stage](run):
            return False
        run.record(stage, done=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoints", type=Path, required=True, help="resumable state; carry it between calls"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--deadline", type=float, default=None, help="seconds from now to stop at (resumable)"
    )
    parser.add_argument(
        "--seconds", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's budget"
    )
    parser.add_argument(
        "--bank", action="append", default=[], metavar="STAGE=BATCHES", help="a transformer stage's bank size"
    )
    parser.add_argument(
        "--fit",
        action="append",
        default=[],
        choices=STAGES,
        help="shrink this stage's budget so that it ends before --deadline (kept when resumed)",
    )
    parser.add_argument("--export", type=Path, default=None, help="write the model folders here once trained")
    parser.add_argument("--until", choices=STAGES, default=STAGES[-1], help="the last stage to run")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a couple of steps (tests, CPU)")
    parser.add_argument(
        "--vae_gate",
        type=float,
        default=0.0,
        help="stop (exit 4) after `stats` when a smaller share of held-out clips shows its colour",
    )
    parser.add_argument(
        "--probe_every", type=float, default=0.0, help="seconds between held-out VAE checks while it trains"
    )
    parser.add_argument(
        "--object_weight",
        type=float,
        default=None,
        help="the transformer stages' extra loss weight on object latents (weight 1 + X * coverage; "
        f"default {FULL.object_weight:g}, 0: uniform); a resumed stage keeps its recorded one unless given",
    )
    args = parser.parse_args(argv)
    overrides = {k: float(v) for k, v in (item.split("=", 1) for item in args.seconds)}
    base = SMOKE if args.smoke else FULL
    for stage, batches in (item.split("=", 1) for item in args.bank):
        base = replace(base, **{stage: replace(getattr(base, stage), bank_batches=int(batches))})
    config = replace(
        base,
        seconds_overrides=overrides,
        fit=tuple(args.fit),
        vae_gate=args.vae_gate,
        probe_every=args.probe_every,
        object_weight_override=args.object_weight,
    )
    deadline = time.time() + (args.deadline if args.deadline is not None else 1e9)
    run = Run(config, args.checkpoints, args.device, deadline)
    command = " ".join(["python scripts/train_toyworld.py", *(argv if argv is not None else sys.argv[1:])])
    run.state.setdefault("commands", []).append(command)
    if not train(run, args.until):
        return 3  # stopped at the deadline: not an error, but not finished
    if args.export is not None and run.done(STAGES[-1]):
        export(run, args.export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
