"""Can the embedded model's VAE learn the toy world at all? A CPU check before any GPU time.

Trains a fresh `tiny.build_trainable_vae()` on one fixed batch of toy-world frames with the training
script's VAE loss, then prints the reconstructions' PSNR and whether `toyscore` sees each object's
colour in them, and writes the frames side by side (rendered | reconstructed) to --png.

    nice -n 19 python benchmarks/toyworld/vae_overfit.py --steps 300
    nice -n 19 python benchmarks/toyworld/vae_overfit.py --steps 600 --fresh   # generalisation

Overfitting 4 frames only shows that the VAE can memorise: attempts 1-3's VAE passed it (30-34 dB, 4/4
colours) yet collapsed to grey on `--fresh`, where every step draws new scenes and the 4 frames are
held out (TOYWORLD.md, attempt 4).

A VAE worth a GPU run reaches about 30 dB here with every colour seen; attempt 3's configuration
(TOYWORLD.md) stalled near 20 dB with objects as colourless smudges.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cosmos_pipeline import tiny, toyscore, toyworld  # noqa: E402
from cosmos_pipeline.metrics import psnr  # noqa: E402

spec = importlib.util.spec_from_file_location("train_toyworld", REPO / "scripts" / "train_toyworld.py")
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)


PALETTE = tuple(toyworld.PALETTE)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=train.FULL.vae.lr)
    parser.add_argument("--frames", type=int, default=1, help="frames per clip (1: images)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--object_weight", type=float, default=train.FULL.vae_object_weight)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="new scenes every step; the fixed batch is held out",
    )
    parser.add_argument("--batch", type=int, default=4, help="clips per step with --fresh")
    args = parser.parse_args(argv)
    scenes = toyworld.prompt_set(args.clips, seed=5, split="any", colours=tuple(toyworld.PALETTE))
    video, coverage = toyworld.render_with_coverage(scenes, args.height, args.width, args.frames)
    video = video * 2 - 1
    vae = tiny.build_trainable_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    started = time.perf_counter()
    for step in range(args.steps):
        batch, weights = video, coverage
        if args.fresh:  # generalisation: scenes never scored, as the GPU stage draws them
            rng = np.random.default_rng([7, step])
            fresh = [
                toyworld.sample_scene(
                    rng, 1 + int(rng.random() < 0.3), "any", colours=tuple(toyworld.PALETTE)
                )
                for _ in range(args.batch)
            ]
            starts = [int(rng.integers(0, 30)) for _ in fresh]
            batch, weights = toyworld.render_with_coverage(
                fresh, args.height, args.width, args.frames, starts
            )
            batch = batch * 2 - 1
        loss = train.vae_loss(vae, batch, weights, args.object_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    with torch.no_grad():
        recon = vae.eval().decode(vae.encode(video).latent_dist.mode()).sample
    original = [toyworld.to_uint8((v + 1) / 2) for v in video]
    decoded = [toyworld.to_uint8((v.clamp(-1, 1) + 1) / 2) for v in recon]
    result = {
        "psnr_dB": [round(float(psnr(a, b)), 2) for a, b in zip(original, decoded, strict=True)],
        "colour_seen": [
            toyscore.score_truth(b, toyworld.parse_prompt(s.prompt))["toy_colour"]
            for s, b in zip(scenes, decoded, strict=True)
        ],
    }
    print(result)
    if args.png is not None:
        rows = [np.concatenate([a[0], b[0]], axis=1) for a, b in zip(original, decoded, strict=True)]
        PIL.Image.fromarray(np.concatenate(rows, axis=0)).save(args.png)
    return result


if __name__ == "__main__":
    main()
