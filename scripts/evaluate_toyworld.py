"""Measure issue 12's targets on the embedded model, on the CPU: prompt adherence on held-out prompts,
post- vs pre-trained on the post-training domain (two objects), guidance 7 vs 1, Image2World
first-frame PSNR, and the fast mode against the default. Prints a markdown table; with --out, also
writes every sample's scores (samples.jsonl) and the summary (summary.json).

    nice -n 19 python scripts/evaluate_toyworld.py --out benchmarks/toyworld

Defaults are the issue's: 256x448, 29 frames, 36 steps, 50 held-out prompts. Every number comes from
`cosmos_pipeline.generate` on the pipeline `cosmos_pipeline.loading` loads, scored by `toyscore`.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmos_pipeline import tiny, toyscore, toyworld  # noqa: E402
from cosmos_pipeline.acceleration.options import Acceleration  # noqa: E402
from cosmos_pipeline.generate import generate, load_conditioning  # noqa: E402
from cosmos_pipeline.loading import PipelineCache, PipelineKey  # noqa: E402
from cosmos_pipeline.request import GenerationRequest  # noqa: E402

SEEDS = {"heldout": 1000, "domain": 2000, "image": 3000}  # prompt sets apart from training's seed streams


@dataclass(frozen=True)
class Case:
    name: str
    prompts: str  # which set: "heldout", "domain" or "image"
    revision: str = tiny.POST_TRAINED
    guidance: float = 7.0
    fast: bool = False


CASES = (
    Case("held-out, post-trained", "heldout"),
    Case("held-out, post-trained, guidance 1", "heldout", guidance=1.0),
    Case("held-out, post-trained, fast mode", "heldout", fast=True),
    Case("held-out, pre-trained", "heldout", revision=tiny.PRE_TRAINED),
    Case("two objects, post-trained", "domain"),
    Case("two objects, pre-trained", "domain", revision=tiny.PRE_TRAINED),
    Case("Image2World, post-trained", "image"),
    Case("Image2World, post-trained, fast mode", "image", fast=True),
)


def prompt_sets(args: argparse.Namespace) -> dict[str, list[toyworld.Scene]]:
    return {
        "heldout": toyworld.prompt_set(args.prompts, SEEDS["heldout"], split="heldout"),
        "domain": toyworld.prompt_set(args.domain_prompts, SEEDS["domain"], num_objects=2),
        "image": toyworld.prompt_set(args.image_prompts, SEEDS["image"], split="heldout"),
    }


def run_case(
    case: Case, scenes: list, args: argparse.Namespace, cache: PipelineCache, media: Path, first: int = 0
) -> list[dict]:
    """`scenes` are the set's prompts from index `first` on (the index is the sample's seed)."""
    rows = []
    for index, scene in enumerate(scenes, start=first):
        input_path = None
        if case.prompts == "image":  # the scene's first frame, rendered, is the input image
            input_path = media / f"{case.prompts}-{index}.png"
            frame = toyworld.render([scene], args.height, args.width, 1)[0]
            PIL.Image.fromarray(toyworld.to_uint8(frame)[0]).save(input_path)
        request = sample_request(scene, index, args, case.revision, case.guidance, input_path)
        pipe = cache.get(PipelineKey.for_request(request))
        pipe.set_progress_bar_config(disable=True)
        started = time.perf_counter()
        result = generate(pipe, request, options=Acceleration.preset("fast" if case.fast else args.preset))
        conditioning = load_conditioning(request) if input_path is not None else None
        scores = toyscore.score_prompt(scene.prompt, result.frames, conditioning)
        assert scores is not None, scene.prompt
        rows.append(
            {"case": case.name, "prompt": scene.prompt, "seed": index, "forwards": result.timings.forwards,
             "seconds": round(time.perf_counter() - started, 2), **scores}
        )  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def sample_request(
    scene: toyworld.Scene,
    index: int,
    args: argparse.Namespace,
    revision: str,
    guidance: float,
    input_path: Path | None = None,
) -> GenerationRequest:
    """One sample: the scene's prompt at the run's size and steps, float32, seed = its index in its set."""
    return GenerationRequest(
        prompt=scene.prompt,
        input_path=input_path,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=guidance,
        seed=index,
        device=args.device,
        dtype="float32",
        **model(args, revision),
    )


def model(args: argparse.Namespace, revision: str) -> dict:
    """The embedded model, or the exported folders under --model_root (a training's output)."""
    if args.model_root is None:
        return {"model_id": tiny.EMBEDDED_MODEL_ID, "revision": revision}
    return {"model_id": str(args.model_root / tiny.REVISION_FOLDERS[revision]), "guardrail": "off"}


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    summary = {}
    for name in dict.fromkeys(row["case"] for row in rows):
        case = [row for row in rows if row["case"] == name]
        figures = {
            "samples": len(case),
            "adherence_%": 100 * np.mean([r["toy_adherence"] for r in case]),
            "colour_%": 100 * np.mean([r["toy_colour"] for r in case]),
            "direction_%": 100 * np.mean([r["toy_direction"] for r in case]),
            "seconds_per_video": np.mean([r["seconds"] for r in case]),
            "forwards": np.mean([r["forwards"] for r in case]),
        }
        if "toy_conditioning_psnr" in case[0]:
            figures["first_frame_psnr_dB"] = np.mean([r["toy_conditioning_psnr"] for r in case])
        summary[name] = {key: round(float(value), 2) for key, value in figures.items()}
    return summary


def markdown(summary: dict[str, dict[str, float]]) -> str:
    columns = [
        "samples",
        "adherence_%",
        "colour_%",
        "direction_%",
        "first_frame_psnr_dB",
        "forwards",
        "seconds_per_video",
    ]
    lines = ["| case | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for name, figures in summary.items():
        lines.append(f"| {name} | " + " | ".join(str(figures.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=50, help="held-out prompts")
    parser.add_argument("--domain_prompts", type=int, default=30, help="two-object prompts")
    parser.add_argument("--image_prompts", type=int, default=10, help="Image2World inputs")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--frames", type=int, default=29)
    parser.add_argument("--steps", type=int, default=36)
    parser.add_argument("--cases", nargs="*", default=None, help="case names to run (default: all)")
    parser.add_argument(
        "--model_root", type=Path, default=None, help="exported folders instead of embedded:tiny"
    )
    parser.add_argument(
        "--device", default="cpu", help="where to generate (cuda: the same float32 pipeline, faster)"
    )
    parser.add_argument(
        "--preset",
        default="default",
        choices=["default", "plain"],
        help="the acceleration preset of every case but the fast mode's (plain: diffusers' call as-is)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="prompt by prompt across the cases: a run stopped early still covers every case",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sets = prompt_sets(args)
    cases = [case for case in CASES if args.cases is None or case.name in args.cases]
    cache = PipelineCache(capacity=2)
    rows = []
    with tempfile.TemporaryDirectory() as media:
        if args.interleave:
            for index in range(max(len(scenes) for scenes in sets.values())):
                for case in cases:
                    scenes = sets[case.prompts][index : index + 1]
                    rows += run_case(case, scenes, args, cache, Path(media), first=index)
        else:
            for case in cases:
                rows += run_case(case, sets[case.prompts], args, cache, Path(media))
    summary = summarise(rows)
    print(markdown(summary))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        (args.out / "summary.json").write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
    return summary


if __name__ == "__main__":
    main()
