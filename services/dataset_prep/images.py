"""Image checks and resolution standardisation (§3.3: width and height divisible by 64).

Every image that enters a split, source or synthetic, goes through `fit_to_multiple`:
scale down so the long side is at most `max_side`, then scale to cover the nearest
smaller multiple-of-64 box and centre-crop to it. Images under 64 px on a side are
scaled up to 64. Images are stored as PNG (lossless, and PIL writes no timestamps,
so the bytes and their sha256 are a function of the pixels).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from services.dataset_prep.errors import DatasetRejected


@dataclass(frozen=True)
class ImageSizing:
    multiple: int = 64
    max_side: int = 1024  # SDXL's native side; larger inputs are scaled down first

    def __post_init__(self) -> None:
        if self.multiple <= 0:
            raise ValueError(f"ImageSizing.multiple must be positive, not {self.multiple}")
        if self.max_side < self.multiple or self.max_side % self.multiple:
            raise ValueError(f"ImageSizing.max_side ({self.max_side}) must be a multiple of multiple ({self.multiple})")


def snap_size(width: int, height: int, sizing: ImageSizing = ImageSizing()) -> tuple[int, int]:
    """The target (width, height): both multiples of sizing.multiple, long side <= max_side."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, not {width}x{height}")
    scale = min(1.0, sizing.max_side / max(width, height))
    m = sizing.multiple

    def snap(side: float) -> int:
        return max(m, math.floor(side / m + 1e-9) * m)

    return snap(width * scale), snap(height * scale)


def fit_to_multiple(image: Image.Image, sizing: ImageSizing = ImageSizing()) -> Image.Image:
    """Resize to cover the snapped box, then centre-crop to it exactly."""
    return cover_crop(image, *snap_size(*image.size, sizing))


def cover_crop(image: Image.Image, target_w: int, target_h: int) -> Image.Image:
    """Scale (keeping aspect) to cover target_w x target_h, then centre-crop to it."""
    width, height = image.size
    if (width, height) == (target_w, target_h):
        return image
    scale = max(target_w / width, target_h / height)
    new_w = max(target_w, round(width * scale))
    new_h = max(target_h, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left = (new_w - target_w) // 2
    top = (new_h - target_h) // 2
    return image.crop((left, top, left + target_w, top + target_h))


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; DatasetRejected naming the file if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.convert("RGB")
    except FileNotFoundError:
        raise DatasetRejected(f"image file not found: {path}") from None
    except Exception as err:  # PIL raises many types for corrupt or truncated files
        raise DatasetRejected(f"unreadable image {path}: {err}") from None


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_name(data: bytes) -> str:
    """Content-addressed file name of an encoded image."""
    return f"{hashlib.sha256(data).hexdigest()}.png"
