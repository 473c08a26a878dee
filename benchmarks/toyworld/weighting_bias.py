"""What the transformer's object weight does to the best prediction it can make from a prompt alone.

Early in sampling (sigma near 1) the noisy latents carry almost nothing, so the loss-minimising
estimate of the clean clip is, per element, the weighted mean over every clip the prompt allows:
sum(w x0) / sum(w), with w = 1 + object_weight * coverage (`train_toyworld.flow_matching_loss`;
coverage max-pooled over the latent grid's 16x16-pixel cells, here 8x8 at 128x224). With w = 1 it is
the plain mean: a faint smear of the object colour over its possible places. With w = 11 every cell
where the object can be is pulled towards its colour. This script renders the prompt's clips, computes
both means for one frame, reports the share of pixels nearer the object's colour than the
background's, and saves the means side by side (no model, seconds on one CPU thread).

    python benchmarks/toyworld/weighting_bias.py --out /tmp/bias.png
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cosmos_pipeline import toyworld  # noqa: E402

CASES = (("red", "ball", "bounce", "beige wall"), ("yellow", "box", "still", "checkered floor"))


def weighted_means(colour, shape, motion, background, weights, clips, frame, rng):
    scenes = [
        toyworld.Scene(objects=(toyworld._place(rng, colour, shape, motion),), background=background)
        for _ in range(clips)
    ]
    video, coverage = toyworld.render_with_coverage(scenes, 128, 224, 1, frame)
    video, coverage = video[:, :, 0], coverage[:, :, 0]  # (B, 3, H, W), (B, 1, H, W)
    cells = torch.nn.functional.max_pool2d(coverage, 8)
    cells = torch.nn.functional.interpolate(cells, scale_factor=8, mode="nearest")
    target = torch.tensor(toyworld.PALETTE[colour], dtype=torch.float32).view(1, 3, 1, 1) / 255
    back = toyworld._backgrounds(scenes[:1], *grids())[0:1]
    results = []
    for weight in weights:
        w = 1 + weight * cells
        mean = (w * video).sum(0, keepdim=True) / w.sum(0, keepdim=True)
        nearer = ((mean - target).norm(dim=1) < (mean - back).norm(dim=1)).float().mean()
        results.append((weight, mean[0], float(nearer), float((coverage > 0.5).float().mean())))
    return results


def grids():
    ys = (torch.arange(128, dtype=torch.float32) + 0.5) / 128
    xs = (torch.arange(224, dtype=torch.float32) + 0.5) / 224
    return xs.view(1, 1, 1, -1), ys.view(1, 1, -1, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--frame", type=int, default=0)
    parser.add_argument("--weights", type=float, nargs="*", default=[0.0, 1.0, 10.0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for case in CASES:
        results = weighted_means(*case, args.weights, args.clips, args.frame, np.random.default_rng(0))
        for weight, _, nearer, area in results:
            print(
                f"{' '.join(case)}: object weight {weight:g}: {100 * nearer:.1f} % of pixels nearer the "
                f"object's colour (one clip's object covers {100 * area:.1f} %)"
            )
        rows.append(torch.cat([mean for _, mean, _, _ in results], dim=2))
    if args.out is not None:
        image = (torch.cat(rows, dim=1).permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        PIL.Image.fromarray(image).save(args.out)


if __name__ == "__main__":
    main()
