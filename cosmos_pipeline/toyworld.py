"""The toy world: procedural videos of coloured shapes that move as a small prompt grammar says.

The embedded model is trained on it (`scripts/train_toyworld.py`) so that its outputs have a known
ground truth: a prompt such as "A red ball rolls to the left across a grey floor." names the colour
and the motion a generated video must show, which `cosmos_pipeline.toyscore` then checks. Scenes
are deterministic by seed, and `render` is plain torch, so training renders its batches on the GPU.

Coordinates are fractions of the frame (x of the width, y of the height, y down). Objects move at a
constant speed per frame (not per clip), so a Video2World window continues the motion it was given,
and stop at the frame's edge.
"""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Saturated colours only: backgrounds are desaturated, so an object is told from its background by
# saturation alone (`toyscore`).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "yellow": (235, 200, 30),
    "green": (40, 165, 70),
    "cyan": (30, 180, 195),
    "blue": (45, 80, 215),
    "purple": (140, 55, 195),
}
NEW_COLOUR = "pink"  # never in base training: the LoRA adapter teaches it
PALETTE: dict[str, tuple[int, int, int]] = {**COLOURS, NEW_COLOUR: (240, 100, 185)}
SHAPES = ("ball", "box", "triangle")
MOTIONS: dict[str, tuple[str, ...]] = {
    "left": ("rolls to the left", "moves to the left", "slides to the left"),
    "right": ("rolls to the right", "moves to the right", "slides to the right"),
    "up": ("moves up", "rises", "floats upward"),
    "down": ("moves down", "sinks", "drops down"),
    "bounce": ("falls and bounces", "bounces"),
    "still": ("stays still", "rests", "does not move"),
}
# name -> (phrases, pattern, first colour, second colour). Patterns are smooth (no hard edges) so
# that a 16x VAE can reproduce them; an object's colour never appears in them.
BACKGROUNDS: dict[str, tuple[tuple[str, ...], str, tuple[int, int, int], tuple[int, int, int]]] = {
    "grey floor": (("on a grey floor", "across a grey floor"), "plain", (128, 128, 128), (128, 128, 128)),
    "white wall": (("in front of a white wall",), "plain", (222, 222, 218), (222, 222, 218)),
    "dark room": (("in a dark room",), "plain", (38, 38, 44), (38, 38, 44)),
    "beige wall": (("in front of a beige wall",), "plain", (200, 186, 158), (200, 186, 158)),
    "checkered floor": (
        ("on a checkered floor", "across a checkered floor"),
        "checker",
        (92, 92, 96),
        (150, 150, 154),
    ),
    "striped wall": (("in front of a striped wall",), "stripes", (160, 160, 168), (205, 205, 210)),
    "pale sky": (("against a pale sky",), "gradient", (150, 180, 215), (215, 228, 240)),
}
TEMPLATES = ("A {objects} {background}.", "{Background}, a {objects}.", "The {objects} {background}.")

ASPECT = 448 / 256  # width / height of every toy-world size (256x448, 128x224, 64x112)
SPEED = (0.35 / 28, 0.45 / 28)  # (x, y) per frame: a third of the width in the 28 steps of 29 frames
GRAVITY, RESTITUTION = 0.006, 0.65  # per frame^2 in heights; the share of speed a bounce keeps


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    motion: str
    x: float = 0.5  # start position (centre)
    y: float = 0.5
    size: float = 0.14  # radius, a fraction of the height


@dataclass(frozen=True)
class Scene:
    objects: tuple[ToyObject, ...]
    background: str
    template: int = 0
    phrasing: int = 0  # which variant of each phrase
    shade: float = 0.0  # background brightness offset, in levels

    @property
    def prompt(self) -> str:
        return compose_prompt(self.objects, self.background, self.template, self.phrasing)


@dataclass(frozen=True)
class ToyTruth:
    """What a prompt says, and so what its video must show: (colour, shape, motion) per object."""

    objects: tuple[tuple[str, str, str], ...]
    background: str | None


def compose_prompt(
    objects: Sequence[ToyObject], background: str, template: int = 0, phrasing: int = 0
) -> str:
    phrases = []
    for index, obj in enumerate(objects):
        motion = MOTIONS[obj.motion]
        phrases.append(f"{obj.colour} {obj.shape} {motion[(phrasing + index) % len(motion)]}")
    bg_phrases = BACKGROUNDS[background][0]
    bg = bg_phrases[phrasing % len(bg_phrases)]
    text = TEMPLATES[template].format(
        objects=" and a ".join(phrases), background=bg, Background=bg.capitalize()
    )
    return text[0].upper() + text[1:]


def parse_prompt(prompt: str) -> ToyTruth | None:
    """The ground truth a toy-world prompt states; None for a prompt outside the grammar."""
    text = prompt.lower().strip().rstrip(".")
    background = next(
        (name for name, (phrases, *_) in BACKGROUNDS.items() if any(p in text for p in phrases)), None
    )
    pattern = rf"\b({'|'.join(PALETTE)})\s+({'|'.join(SHAPES)})\b"
    matches = list(re.finditer(pattern, text))
    objects = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        segment = text[match.end() : end]
        found = [(segment.find(p), m) for m, ps in MOTIONS.items() for p in ps if p in segment]
        if not found:
            return None
        objects.append((match[1], match[2], min(found)[1]))
    return ToyTruth(tuple(objects), background) if objects else None


def is_heldout(colour: str, shape: str, motion: str) -> bool:
    """Combinations never trained on: one shape in three for half the (colour, motion) pairs, so
    every colour, shape and motion is trained, only not together."""
    names = list(PALETTE)
    return (names.index(colour) + 2 * SHAPES.index(shape) + 3 * list(MOTIONS).index(motion)) % 6 == 0


def sample_scene(
    rng: np.random.Generator,
    num_objects: int = 1,
    split: str = "train",
    colours: Sequence[str] = tuple(COLOURS),
    motions: Sequence[str] = tuple(MOTIONS),
) -> Scene:
    """A random scene. `split`: "train" draws only trained combinations, "heldout" only held-out ones,
    "any" either."""
    for _ in range(100):
        picked = rng.choice(len(colours), size=num_objects, replace=False)
        objects = []
        for index in picked:
            shape = SHAPES[rng.integers(len(SHAPES))]
            motion = motions[rng.integers(len(motions))]
            objects.append(_place(rng, colours[index], shape, motion))
        combos = [is_heldout(o.colour, o.shape, o.motion) for o in objects]
        if (split == "train" and any(combos)) or (split == "heldout" and not all(combos)):
            continue
        if num_objects == 1 or _apart(objects):
            return Scene(
                objects=tuple(objects),
                background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
                template=int(rng.integers(len(TEMPLATES))),
                phrasing=int(rng.integers(6)),
                shade=float(rng.uniform(-10, 10)),
            )
    raise RuntimeError(f"no {split} scene with {num_objects} objects after 100 tries")


def _place(rng: np.random.Generator, colour: str, shape: str, motion: str) -> ToyObject:
    """A start position from which the motion stays in view for a 29-frame clip."""
    size = float(rng.uniform(0.12, 0.16))  # 2-3 latent pixels across at 256x448 (a 16x VAE)
    x_range, y_range = {
        "left": ((0.55, 0.85), (0.25, 0.75)),
        "right": ((0.15, 0.45), (0.25, 0.75)),
        "up": ((0.15, 0.85), (0.62, 0.8)),
        "down": ((0.15, 0.85), (0.2, 0.38)),
        "bounce": ((0.15, 0.85), (0.2, 0.32)),
        "still": ((0.15, 0.85), (0.2, 0.8)),
    }[motion]
    return ToyObject(colour, shape, motion, float(rng.uniform(*x_range)), float(rng.uniform(*y_range)), size)


def _apart(objects: Sequence[ToyObject], frames: int = 29) -> bool:
    """True when the objects never overlap during `frames` frames (occlusion would hide one)."""
    (ax, ay), (bx, by) = (trajectory(o, np.arange(frames)) for o in objects[:2])
    distance = np.hypot((ax - bx) * ASPECT, ay - by)
    return bool(distance.min() > 1.2 * (objects[0].size + objects[1].size))


def trajectory(obj: ToyObject, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) at each frame index; objects stop at the frame's edge."""
    lo_x, hi_x = obj.size / ASPECT, 1 - obj.size / ASPECT
    lo_y, hi_y = obj.size, 1 - obj.size
    t = frames.astype(np.float64)
    x, y = np.full_like(t, obj.x), np.full_like(t, obj.y)
    direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.get(obj.motion)
    if direction is not None:
        x = np.clip(obj.x + direction[0] * SPEED[0] * t, lo_x, hi_x)
        y = np.clip(obj.y + direction[1] * SPEED[1] * t, lo_y, hi_y)
    elif obj.motion == "bounce":
        y = np.array([_bounce(obj.y, hi_y, float(f)) for f in t])
    return x, y


def _bounce(y0: float, floor: float, t: float) -> float:
    """Height at time `t` of a ball dropped at rest from `y0` onto `floor` (y down)."""
    y, v, left = y0, 0.0, t
    for _ in range(20):
        # time to reach the floor from (y, v): floor = y + v s + g s^2 / 2
        s = (-v + math.sqrt(v * v + 2 * GRAVITY * (floor - y))) / GRAVITY
        if left <= s:
            return y + v * left + GRAVITY * left * left / 2
        left -= s
        y, v = floor, -RESTITUTION * (v + GRAVITY * s)
    return floor


def render(
    scenes: Sequence[Scene],
    height: int,
    width: int,
    num_frames: int,
    start: Sequence[int] | int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Frames of each scene from frame `start` on, as (B, 3, T, H, W) floats in [0, 1]; one pass for
    the whole batch, so that training can render on the GPU."""
    return render_with_coverage(scenes, height, width, num_frames, start, device)[0]


def render_with_coverage(
    scenes: Sequence[Scene],
    height: int,
    width: int,
    num_frames: int,
    start: Sequence[int] | int = 0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`render`, and where objects are: (B, 1, T, H, W) coverage in [0, 1] (training weighs it)."""
    starts = [start] * len(scenes) if isinstance(start, int) else list(start)
    batch, slots = len(scenes), max(len(scene.objects) for scene in scenes)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = ys.view(1, 1, -1, 1), xs.view(1, 1, 1, -1)
    video = _backgrounds(scenes, grid_x, grid_y)[:, :, None].expand(-1, -1, num_frames, -1, -1)
    coverage = torch.zeros(batch, 1, num_frames, height, width, device=device)
    centres = np.zeros((slots, 2, batch, num_frames), dtype=np.float32)
    params = np.zeros((slots, 5, batch), dtype=np.float32)  # radius in pixels, shape index, RGB
    colours = np.zeros((slots, batch, 3), dtype=np.float32)
    for b, (scene, first) in enumerate(zip(scenes, starts, strict=True)):
        for k, obj in enumerate(scene.objects):
            centres[k, :, b] = trajectory(obj, np.arange(first, first + num_frames))
            params[k, 0, b], params[k, 1, b] = obj.size * height, SHAPES.index(obj.shape)
            colours[k, b] = np.array(PALETTE[obj.colour]) / 255
    for k in range(slots):
        cx, cy = (torch.from_numpy(c).to(device).view(batch, num_frames, 1, 1) for c in centres[k])
        radius, shape = (torch.from_numpy(p).to(device).view(batch, 1, 1, 1) for p in params[k, :2])
        # signed distance in pixels (negative inside), so edges are anti-aliased over one pixel
        dx, dy = (grid_x - cx) * width, (grid_y - cy) * height
        distance = torch.where(
            shape == 0,
            torch.sqrt(dx * dx + dy * dy) - radius,
            torch.where(
                shape == 1, torch.maximum(dx.abs(), dy.abs()) - 0.85 * radius, _triangle(dx, dy, radius)
            ),
        )
        alpha = ((0.5 - distance).clamp(0, 1) * (radius > 0)).unsqueeze(1)  # an empty slot draws nothing
        colour = torch.from_numpy(colours[k]).to(device).view(batch, 3, 1, 1, 1)
        video = video * (1 - alpha) + colour * alpha
        coverage = torch.maximum(coverage, alpha)
    return video.clamp(0, 1), coverage


def _triangle(dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Signed distance to an upward equilateral triangle inscribed in the circle of `radius`."""
    half, slope = radius / 2, math.sqrt(3) / 2
    return torch.maximum(dy - half, torch.maximum(-slope * dx - 0.5 * dy, slope * dx - 0.5 * dy) - half)


def _backgrounds(scenes: Sequence[Scene], grid_x: torch.Tensor, grid_y: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W): each scene's background, a mix of its two colours by a smooth pattern."""
    patterns = {
        "plain": torch.zeros_like(grid_y * grid_x),
        # a soft checker: a product of sines, four cells per height
        "checker": 0.5 + 0.5 * torch.sin(4 * math.pi * grid_x * ASPECT) * torch.sin(4 * math.pi * grid_y),
        "stripes": (0.5 + 0.5 * torch.sin(8 * math.pi * grid_y)).expand_as(grid_y * grid_x),
        "gradient": grid_y.expand_as(grid_y * grid_x),
    }
    mix = torch.cat([patterns[BACKGROUNDS[scene.background][1]] for scene in scenes])  # (B, 1, H, W)
    first = torch.tensor([BACKGROUNDS[s.background][2] for s in scenes], dtype=torch.float32)
    second = torch.tensor([BACKGROUNDS[s.background][3] for s in scenes], dtype=torch.float32)
    shade = torch.tensor([s.shade for s in scenes], dtype=torch.float32).view(-1, 1)
    first, second = ((c + shade).to(grid_x.device).view(-1, 3, 1, 1) / 255 for c in (first, second))
    return first + (second - first) * mix


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """One rendered video (3, T, H, W) in [0, 1] as (T, H, W, 3) uint8, the layout outputs use."""
    return (video.permute(1, 2, 3, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def prompt_set(count: int, seed: int, num_objects: int = 1, split: str = "train", **kwargs) -> list[Scene]:
    """`count` scenes from a fixed seed: the same set on every machine (evaluation suites, tests)."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, num_objects, split, **kwargs) for _ in range(count)]
