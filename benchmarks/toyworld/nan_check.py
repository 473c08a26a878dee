"""Which acceleration lever turns an exported toy-world model's output into NaN? One short video per
variant of `Acceleration` (the default preset with one lever changed), on the same seed: whether its
final latents hold NaN, and how far its frames are from the plain call's.

    python benchmarks/toyworld/nan_check.py --model_root .toyworld/export4 --device cuda
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cosmos_pipeline import tiny, toyworld  # noqa: E402
from cosmos_pipeline.acceleration.options import Acceleration  # noqa: E402
from cosmos_pipeline.generate import generate  # noqa: E402
from cosmos_pipeline.loading import PipelineCache, PipelineKey  # noqa: E402
from cosmos_pipeline.request import GenerationRequest  # noqa: E402

LEVERS = ("compile", "attention", "frame_modulation", "vae_tiled")
VARIANTS = {
    "plain": Acceleration.preset("plain"),
    "default": Acceleration.preset("default"),
    "default, compile off": Acceleration.preset("default", compile="off"),
    "default, attention sdpa": Acceleration.preset("default", attention="sdpa"),
    "default, frame_modulation off": Acceleration.preset("default", frame_modulation="off"),
    "default, vae_tiling off": Acceleration.preset("default", vae_tiling="off"),
    "plain, frame_modulation on": Acceleration.preset("plain", frame_modulation="on"),
    "plain, compile on": Acceleration.preset("plain", compile="on"),
    "plain, attention cudnn": Acceleration.preset("plain", attention="cudnn"),
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_root", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--frames", type=int, default=29)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args(argv)
    scene = toyworld.prompt_set(1, 1000, split="heldout")[0]
    rows, reference = [], None
    for name in args.variants:
        request = GenerationRequest(
            prompt=scene.prompt, height=args.height, width=args.width, num_frames=args.frames,
            num_inference_steps=args.steps, guidance_scale=7.0, seed=0, device=args.device, dtype="float32",
            model_id=str(args.model_root / tiny.REVISION_FOLDERS[tiny.POST_TRAINED]), guardrail="off",
        )  # fmt: skip
        pipe = PipelineCache(capacity=1).get(PipelineKey.for_request(request))  # a fresh load per variant
        pipe.set_progress_bar_config(disable=True)
        try:
            result = generate(pipe, request, options=VARIANTS[name])
        except Exception as error:  # noqa: BLE001 - report and go on to the next lever
            rows.append({"variant": name, "error": f"{type(error).__name__}: {error}"[:300]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        latents = result.latents.float()
        frames = result.frames.astype(np.float32)
        if reference is None:
            reference = frames
        rows.append({
            "variant": name,
            "latents_nan": bool(torch.isnan(latents).any()),
            "latents_absmax": float(latents.nan_to_num(0).abs().max()),
            "frames_mean": round(float(frames.mean()), 2),
            "frames_vs_first_mad": round(float(np.abs(frames - reference).mean()), 3),
            "plan": {k: v for k, v in result.acceleration.items() if k in LEVERS},
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
