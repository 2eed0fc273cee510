"""Decoded pixels in a form every later use can take (JPEG encoding, the detector)."""

from __future__ import annotations

from PIL import Image

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def displayable(image: Image.Image) -> Image.Image:
    """The image as RGB or 8-bit greyscale: transparency flattened onto white, 16-bit scaled."""
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in _TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode.startswith("I"):
        # 16-bit greyscale: convert() would clip everything above 255 to white.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    return image.convert("RGB")
