"""Frames of a few generated toy-world videos, to look at: one PNG per prompt (frames 0, middle, last
side by side, the rendered ground truth's below), and the `toyscore` of each.

    python benchmarks/toyworld/sample_frames.py --model_root .toyworld/export --device cuda --preset plain \
        --out /tmp/frames

Generation is `evaluate_toyworld.py`'s: `cosmos_pipeline.generate` on the loaded exported folder, float32,
256x448, 29 frames, 36 steps, guidance 7, seed = the prompt's index in its set.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import PIL.Image

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import evaluate_toyworld as evaluate  # noqa: E402

from cosmos_pipeline import tiny, toyscore, toyworld  # noqa: E402
from cosmos_pipeline.acceleration.options import Acceleration  # noqa: E402
from cosmos_pipeline.generate import generate  # noqa: E402
from cosmos_pipeline.loading import PipelineCache, PipelineKey  # noqa: E402

SETS = {  # name -> (seed, objects, split, revision)
    "heldout": (evaluate.SEEDS["heldout"], 1, "heldout", tiny.POST_TRAINED),
    "domain": (evaluate.SEEDS["domain"], 2, "train", tiny.POST_TRAINED),
    "pre-heldout": (evaluate.SEEDS["heldout"], 1, "heldout", tiny.PRE_TRAINED),
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_root", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sets", nargs="*", default=["heldout", "domain"])
    parser.add_argument("--count", type=int, default=3, help="prompts per set")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--frames", type=int, default=29)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument(
        "--preset",
        default="default",
        choices=["default", "plain"],
        help="acceleration preset (plain on the GPU: its default picks cuDNN attention, NaN with this model)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache, rows = PipelineCache(capacity=2), []
    for name in args.sets:
        seed, objects, split, revision = SETS[name]
        for index, scene in enumerate(
            toyworld.prompt_set(args.count, seed, num_objects=objects, split=split)
        ):
            request = evaluate.sample_request(scene, index, args, revision, args.guidance)
            pipe = cache.get(PipelineKey.for_request(request))
            pipe.set_progress_bar_config(disable=True)
            frames = generate(pipe, request, options=Acceleration.preset(args.preset)).frames
            truth = toyworld.to_uint8(toyworld.render([scene], args.height, args.width, args.frames)[0])
            picks = (0, args.frames // 2, args.frames - 1)
            grid = np.concatenate(
                [np.concatenate([f[t] for t in picks], axis=1) for f in (frames, truth)], axis=0
            )
            PIL.Image.fromarray(grid).save(args.out / f"{name}-{index}.png")
            rows.append(
                {
                    "set": name,
                    "index": index,
                    "prompt": scene.prompt,
                    **toyscore.score_prompt(scene.prompt, frames),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    main()
