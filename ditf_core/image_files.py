"""Reading image files people name: decoded in full up front, with a clear error for anything unusable.

A file that is missing, is not an image (also a ``.png`` that holds text), is truncated, or would decode to more
than :data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb: a few KB that expand to gigabytes) is refused with a
:class:`~ditf_core.errors.DiTFInputError` naming the file. The size is checked from the header, before decoding;
PIL's own guard only warns below twice its limit, so it is not relied on.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DiTFInputError
from .wording import first_line

# 64 MP: 8000 x 8000, larger than any camera photo most people take; the model sees ~640 px anyway. Decoded to
# float32 for resizing, an image at the cap takes ~770 MB.
MAX_IMAGE_PIXELS = 64_000_000


def open_image(path: str | Path, mode: str | None = "RGB") -> Image.Image:
    """The image at ``path``, fully decoded, in ``mode`` (default RGB: alpha dropped, grey repeated; None keeps the
    file's own mode, e.g. the palette indices of an indexed PNG)."""
    with _opened(path) as image:
        image.load()
        return image.convert(mode) if mode else image.copy()


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the image at ``path`` from its header only (nothing decoded: cheap for a whole dataset),
    refused as :func:`open_image` refuses it (a truncated file whose header is whole passes)."""
    with _opened(path) as image:
        return image.size


def check_pixel_count(size: tuple[int, int], path: str | Path) -> None:
    """Refuse an image of ``size`` (width, height) with more than :data:`MAX_IMAGE_PIXELS` pixels."""
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DiTFInputError(_too_large(Path(path), size))


def _too_large(path: Path, size: tuple[int, int] | None) -> str:
    found = f" is {size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} megapixels," if size else " has"
    return (f"{path}{found} more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels this tool decodes (a guard "
            "against decompression bombs); downscale it first - the model sees about 640 px anyway")


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """The file opened by PIL (its header read, its size within the cap); any failure, also while the caller decodes
    it inside the block, becomes a :class:`DiTFInputError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DiTFInputError(f"no image file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_pixel_count(image.size, path)
                yield image
    except DiTFInputError:  # our own pixel cap (a ValueError: not to be taken for a decoding error below)
        raise
    except Image.DecompressionBombError:
        raise DiTFInputError(_too_large(path, None)) from None
    except UnidentifiedImageError:
        raise DiTFInputError(f"{path} is not an image PIL can read; give a PNG, JPEG, WebP, ... file") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise DiTFInputError(f"{path} is not a readable image ({first_line(error)}); give a PNG, JPEG, WebP, ... "
                             "file") from None
