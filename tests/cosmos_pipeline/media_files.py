"""Real media files for the media tests: PNGs of every colour type and bit depth (Pillow writes only
some of them), and the 8-bit RGB a correct reader must make of them, computed independently."""

import struct
import zlib

import numpy as np

# PNG colour type -> (channels, allowed bit depths).
PNG_TYPES = {
    0: (1, (1, 2, 4, 8, 16)),  # grey
    2: (3, (8, 16)),  # RGB
    3: (1, (1, 2, 4, 8)),  # palette
    4: (2, (8, 16)),  # grey + alpha
    6: (4, (8, 16)),  # RGB + alpha
}
WHITE = 255.0  # the background transparent pixels are composited on (cosmos_pipeline.media)
ORIENTATIONS = {  # EXIF orientation -> how the stored pixels (H, W, C) are turned upright
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(
    samples: np.ndarray,
    colour_type: int,
    bit_depth: int,
    palette: np.ndarray | None = None,
    transparency: bytes | None = None,
    size: tuple[int, int] | None = None,
) -> bytes:
    """A PNG of `samples` (H, W, channels), each sample < 2**bit_depth; `size` (W, H) fakes the header."""
    height, width, channels = samples.shape
    assert channels == PNG_TYPES[colour_type][0] and bit_depth in PNG_TYPES[colour_type][1]
    if bit_depth == 16:
        rows = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    elif bit_depth == 8:
        rows = samples.astype(np.uint8).reshape(height, -1)
    else:  # 1, 2 or 4 bits a sample, packed big-end first, rows padded to whole bytes
        bits = np.unpackbits(samples.astype(np.uint8)[..., None], axis=-1)[..., 8 - bit_depth :]
        rows = np.packbits(bits.reshape(height, -1), axis=1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)  # filter type 0 on every row
    width, height = size or (width, height)
    out = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    )
    if palette is not None:
        out += _chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    if transparency is not None:
        out += _chunk(b"tRNS", transparency)
    return out + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def expected_rgb(
    samples: np.ndarray,
    colour_type: int,
    bit_depth: int,
    palette: np.ndarray | None = None,
    transparency: bytes | None = None,
) -> np.ndarray:
    """The float RGB a viewer shows for a PNG's samples: scaled to 0-255, composited on white."""
    peak = 2**bit_depth - 1
    alpha = np.ones(samples.shape[:2])
    if colour_type == 3:
        assert palette is not None
        colour = palette[samples[..., 0]].astype(float)
        if transparency is not None:
            table = np.full(256, 255.0)
            table[: len(transparency)] = np.frombuffer(transparency, np.uint8)
            alpha = table[samples[..., 0]] / 255
    else:
        scaled = samples.astype(float) * 255 / peak
        colour = scaled[..., :3] if colour_type in (2, 6) else np.repeat(scaled[..., :1], 3, axis=-1)
        if colour_type in (4, 6):
            alpha = scaled[..., -1] / 255
        elif transparency is not None:  # one transparent grey level or RGB colour, 16-bit big-end
            key = np.frombuffer(transparency, ">u2")
            alpha = np.where((samples == key).all(axis=-1), 0.0, 1.0)
    return colour * alpha[..., None] + WHITE * (1 - alpha[..., None])
