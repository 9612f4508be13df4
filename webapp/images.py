"""Image uploads and PNG responses: decoding that never trusts the client."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ApiError


def _reason(e: Exception) -> str:
    """PIL's message without the reprs it puts in (`<_io.BytesIO object at 0x...>`)."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e)) or type(e).__name__


def _upright(im: Image.Image) -> Image.Image:
    """The image as browsers and the UI show it: turned by its EXIF orientation tag (phones
    store photos unrotated and tag them). A malformed EXIF block is ignored, as browsers do."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # PIL's EXIF parser raises assorted errors on junk; the pixels are still good
        return im


def load_image(data: bytes, what: str, max_side: int, mode: str = "RGB") -> np.ndarray:
    """Bytes -> uint8 array, upright (EXIF orientation applied); 400 for anything that is not a
    complete image within the size limit. The size is checked before the pixels are decoded."""
    if not data:
        raise ApiError(400, "empty_upload", f"the {what} upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w > max_side or h > max_side or w < 1 or h < 1:
                raise ApiError(400, "image_too_large", f"the {what} is {w}x{h}; each side must be 1..{max_side}")
            im.load()
            im = _upright(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            if mode == "L" and has_alpha:
                # a transparent mask: painted (opaque) pixels repaint, like Gradio's brush layer
                alpha = np.asarray(im.convert("RGBA"))[..., 3]
                if alpha.min() < 255:
                    return alpha.copy()
            return np.asarray(im.convert(mode)).copy()
    except ApiError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        why = "it is too large to decode safely" if isinstance(e, Image.DecompressionBombError) else "unknown format"
        raise ApiError(400, "not_an_image", f"the {what} is not an image this server reads (PNG, JPEG, WebP): {why}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ApiError(400, "bad_image", f"the {what} could not be decoded (truncated or corrupt?): {_reason(e)}") from None


def png_b64(image: np.ndarray, params: dict | None) -> str:
    from models.png_info import png_bytes

    return base64.b64encode(png_bytes(image, params)).decode()
