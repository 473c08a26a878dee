"""Draw the sample media the asset bundles use: `python assets/make_media.py`.

Everything is drawn from shapes with fixed parameters, so the files are reproducible and nothing is
downloaded. The image is 3:2 (480x320), deliberately not the model's 16:9, so that aspect-ratio
fitting is exercised; the video is 17 frames (4k+1, as Video2World expects) at 16 fps.
"""

import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

try:
    from cosmos_pipeline.media import write_image, write_video
except ModuleNotFoundError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cosmos_pipeline.media import write_image, write_video

MEDIA_DIR = Path(__file__).resolve().parent / "media"


def vertical_gradient(width: int, height: int, top: tuple, bottom: tuple) -> Image.Image:
    """A smooth top-to-bottom colour ramp, so the scenes are not flat fills."""
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = (1 - t) * np.array(top, dtype=float) + t * np.array(bottom, dtype=float)
    return Image.fromarray(np.broadcast_to(rows, (height, width, 3)).round().astype(np.uint8))


def draw_warehouse_robot(width: int = 480, height: int = 320) -> np.ndarray:
    """A warehouse aisle: wall, floor, shelves with boxes and a robot arm reaching for a box."""
    horizon = int(height * 0.62)
    image = vertical_gradient(width, height, (176, 186, 198), (120, 128, 140))
    image.paste(vertical_gradient(width, height - horizon, (150, 146, 138), (96, 92, 86)), (0, horizon))
    draw = ImageDraw.Draw(image)

    # Shelving: two uprights, three shelves, boxes of a few sizes.
    for x0 in (24, 300):
        x1 = x0 + 156
        draw.rectangle((x0, 40, x0 + 6, horizon + 8), fill=(60, 72, 96))
        draw.rectangle((x1 - 6, 40, x1, horizon + 8), fill=(60, 72, 96))
        for i, y in enumerate((80, 130, 180)):
            draw.rectangle((x0, y, x1, y + 5), fill=(214, 120, 40))
            for j, box_w in enumerate((34, 26, 40)):
                bx = x0 + 12 + j * 46 + (i * 7) % 11
                box_h = 22 + ((i + j) % 3) * 6
                draw.rectangle((bx, y - box_h, bx + box_w, y - 1), fill=(182, 140, 92), outline=(120, 88, 52))
                draw.line((bx + box_w // 2, y - box_h, bx + box_w // 2, y - 1), fill=(214, 196, 150))

    # Floor marking and the robot's base.
    draw.polygon([(196, height), (226, horizon), (254, horizon), (284, height)], fill=(222, 196, 64))
    base = (200, horizon + 40, 280, horizon + 70)
    draw.rounded_rectangle(base, radius=8, fill=(70, 74, 82), outline=(30, 30, 36), width=2)

    # Arm: shoulder -> elbow -> wrist as thick segments with round joints, then a two-finger gripper.
    joints = [(240, horizon + 40), (262, horizon - 50), (318, horizon - 92)]
    for (xa, ya), (xb, yb) in pairwise(joints):
        draw.line((xa, ya, xb, yb), fill=(240, 240, 236), width=16)
    for x, y in joints:
        draw.ellipse((x - 11, y - 11, x + 11, y + 11), fill=(40, 116, 200), outline=(20, 40, 70), width=2)
    wx, wy = joints[-1]
    draw.rectangle((wx + 8, wy - 14, wx + 14, wy + 14), fill=(50, 50, 56))
    draw.rectangle((wx + 14, wy - 14, wx + 30, wy - 9), fill=(50, 50, 56))
    draw.rectangle((wx + 14, wy + 9, wx + 30, wy + 14), fill=(50, 50, 56))
    return np.asarray(image)


def draw_rolling_ball(num_frames: int = 17, width: int = 320, height: int = 192) -> np.ndarray:
    """A red ball rolling left to right across a floor; a stripe on it turns as it rolls."""
    horizon = int(height * 0.55)
    background = vertical_gradient(width, height, (150, 190, 230), (210, 226, 240))
    background.paste(vertical_gradient(width, height - horizon, (120, 150, 96), (72, 104, 56)), (0, horizon))
    draw = ImageDraw.Draw(background)
    draw.rectangle((220, horizon - 54, 276, horizon), fill=(150, 104, 70), outline=(90, 60, 40))
    draw.polygon([(212, horizon - 54), (248, horizon - 80), (284, horizon - 54)], fill=(170, 60, 50))

    radius, ground = 18, horizon + 46
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        draw = ImageDraw.Draw(frame)
        cx = 30 + t * (width - 60) / (num_frames - 1)
        draw.ellipse((cx - radius, ground + radius - 6, cx + radius, ground + radius + 4), fill=(60, 84, 44))
        draw.ellipse((cx - radius, ground - radius, cx + radius, ground + radius), fill=(210, 40, 40))
        angle = (cx - 30) / radius  # rolling without slipping
        dx, dy = radius * np.cos(angle), radius * np.sin(angle)
        draw.line((cx - dx, ground - dy, cx + dx, ground + dy), fill=(250, 230, 230), width=4)
        frames.append(np.asarray(frame))
    return np.stack(frames)


def main() -> None:
    image_path = write_image(draw_warehouse_robot(), MEDIA_DIR / "warehouse_robot.png", overwrite=True)
    video_path = write_video(draw_rolling_ball(), MEDIA_DIR / "rolling_ball.mp4", fps=16, overwrite=True)
    for path in (image_path, video_path):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
