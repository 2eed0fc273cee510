"""Decoding an original within its budgets, and pixels in a form every later use can take
(JPEG encoding, the detector). Every step that reads pixels opens its photo here.

A photo is opened (its headers read) and judged before a single pixel is decoded: the pixel
limit (IMAGEREC_MAX_IMAGE_PIXELS), and the memory one photo may use in this step
(imagerec.memory), against what decoding it costs at its peak (PEAK_BYTES_PER_PIXEL). Once
decoded, its EXIF is measured (imagerec.exif) before any step reads it.
"""

from __future__ import annotations

import io
import logging
import re

from PIL import Image, ImageCms, JpegImagePlugin, PngImagePlugin

from imagerec.config import Settings
from imagerec.exif import ExifTooLarge, check_exif, exif_block
from imagerec.formats import FORMATS, register_heif_opener

log = logging.getLogger("imagerec.pixels")

# All the text chunks of one PNG (XMP, "Raw profile" EXIF, comments), decompressed: Pillow's
# default is 64 MB, which a 64 KB zTXt bomb reaches; photos carry a few KB. Each chunk (and an
# iCCP profile) stays within Pillow's MAX_TEXT_CHUNK, 1 MB.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 2**20

# Peak bytes per pixel while decoding and rendering a photo, the worst of the three pixel steps
# (measured by tests/peak_memory.py at 3 MP, checked by tests/test_budgets.py; 12 MP agrees):
# libjpeg decodes a baseline JPEG at 1/2-1/8 scale in strips (0.3), but keeps a progressive
# one's coefficients whole, 2 bytes each for every component (3.9 at 4:2:0; 9.0 for CMYK, or
# at 4:4:4 where no component is subsampled); Pillow's WebP decoder holds libwebp's canvas,
# its copy and the image (17.0 at any mode); PNG and HEIF decode fully (7.2, 7.9), and
# transparency or 16 bits add a converted copy (13.0, 11.2).
PEAK_BYTES_PER_PIXEL = {
    ("JPEG", "baseline"): 1,
    ("JPEG", "progressive"): 5,
    ("JPEG", "progressive-full"): 10,
    ("PNG", "opaque"): 8,
    ("PNG", "other"): 14,
    ("WEBP", "any"): 18,
    ("HEIF", "opaque"): 9,
    ("HEIF", "other"): 12,
}
# A progressive JPEG's decoder visits every block of a component once per scan, whatever the
# scan holds: 51 bytes of a scan cost 0.2-13 ms of CPU, so 30 MB of them would cost hours.
# Encoders write 6-18 (libjpeg's progressive script: 10 for YCbCr, 18 for CMYK).
MAX_JPEG_SCANS = 100
# A marker in JPEG entropy-coded data: 0xFF not followed by a stuffed 0x00 or a restart marker.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_OPAQUE_MODES = ("1", "L", "RGB")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Colour profiles of photos weigh 0.5-4 KB (Display P3 from phones, sRGB, Adobe RGB; the shared
# test photos 536 bytes to 3 KB); a JPEG may carry up to 16 MB of them in APP2 segments, and
# each rendition would repeat them. Larger ones are applied to the pixels instead.
MAX_KEPT_ICC_BYTES = 64 * 1024


class Undecodable(ValueError):
    """The original is not a photo a step can decode within its budgets; says why, in one
    sentence a person can act on."""


def open_photo(original: bytes, kind: str, settings: Settings) -> Image.Image:
    """The original, of format `kind` (judged by content), opened but not yet decoded: its
    pixels fit the pixel limit and the memory one photo may use, or Undecodable says why."""
    register_heif_opener()
    name = FORMATS[kind].label
    if kind == "HEIF" and not _boxes_complete(original):
        raise Undecodable(f"The {name} image is truncated or damaged and cannot be decoded.")
    try:
        image = Image.open(io.BytesIO(original), formats=[kind])
    except Image.DecompressionBombError:
        raise Undecodable(_too_many_pixels(name, None, settings)) from None
    except ValueError as e:
        raise Undecodable(_too_much_text(name, e)) from None
    except Exception:  # a damaged header fails in many ways (SyntaxError, struct.error, ...)
        raise Undecodable(
            f"The file starts like a {name} image but the rest of it is not valid {name} data."
        ) from None
    if image.width * image.height > settings.max_image_pixels:
        image.close()
        raise Undecodable(_too_many_pixels(name, image.size, settings))
    if kind == "JPEG" and image.info.get("progressive") and jpeg_scans(original) > MAX_JPEG_SCANS:
        image.close()
        raise Undecodable(
            f"The {name} image is split into more scans than any encoder writes (over "
            f"{MAX_JPEG_SCANS}), which would take too long to decode."
        )
    per_pixel = peak_bytes_per_pixel(image)
    needed = image.width * image.height * per_pixel + len(original)
    if needed > settings.photo_memory:
        image.close()
        most = max(0, settings.photo_memory - len(original)) // per_pixel
        raise Undecodable(
            f"The {name} image is too large to process safely here ({image.width}×"
            f"{image.height} needs about {needed / 1e6:.0f} MB of memory; a photo may use "
            f"{settings.photo_memory / 1e6:.0f} MB, about {most / 1e6:.1f} megapixels of "
            f"this kind of {name})."
        )
    return image


def load_photo(image: Image.Image) -> None:
    """Decodes an opened photo (after any draft()) and checks its EXIF (a PNG's may follow
    the pixels) before anything reads it; or closes it and Undecodable says why."""
    name = FORMATS[_kind(image)].label
    try:
        image.load()
        block = exif_block(image.info)
        if block is not None:
            check_exif(block)
    except Exception as e:  # cut-off or damaged data fails in many ways
        image.close()
        if isinstance(e, ExifTooLarge):
            reason = str(e)
        elif isinstance(e, Image.DecompressionBombError):
            reason = f"The {name} image has too many pixels to process safely."
        elif isinstance(e, ValueError):
            reason = _too_much_text(name, e)
        else:
            reason = f"The {name} image is truncated or damaged and cannot be decoded."
        raise Undecodable(reason) from None


def peak_bytes_per_pixel(image: Image.Image) -> int:
    """What decoding and rendering this opened photo costs at its peak, per pixel."""
    kind = _kind(image)
    if kind == "JPEG":
        if not image.info.get("progressive"):
            return PEAK_BYTES_PER_PIXEL[("JPEG", "baseline")]
        full = image.mode == "CMYK" or JpegImagePlugin.get_sampling(image) == 0
        return PEAK_BYTES_PER_PIXEL[("JPEG", "progressive-full" if full else "progressive")]
    if kind == "WEBP":
        return PEAK_BYTES_PER_PIXEL[("WEBP", "any")]
    opaque = image.mode in _OPAQUE_MODES or (image.mode == "P" and "transparency" not in image.info)
    return PEAK_BYTES_PER_PIXEL[(kind, "opaque" if opaque else "other")]


def _kind(image: Image.Image) -> str:
    return "JPEG" if image.format == "MPO" else image.format


def _too_many_pixels(name: str, size: tuple[int, int] | None, settings: Settings) -> str:
    limit = f"the limit is {settings.max_image_pixels / 1e6:g} megapixels"
    pixels = f"{size[0]}×{size[1]}; {limit}" if size else limit
    return f"The {name} image has too many pixels to process safely ({pixels})."


def _too_much_text(name: str, error: ValueError) -> str:
    if "MAX_TEXT" in str(error):  # PngImagePlugin's limits on text chunks
        return f"The {name} image carries more text metadata than a photo does, so it is not read."
    return f"The {name} image is truncated or damaged and cannot be decoded."


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS segments) the JPEG's marker stream holds, up to one past
    MAX_JPEG_SCANS; bytes inside segments and entropy-coded data are skipped, not searched."""
    scans, offset = 0, 2
    while offset + 4 <= len(data) and scans <= MAX_JPEG_SCANS:
        if data[offset] != 0xFF:
            return scans  # not a marker where one must be: the decoder will refuse it
        marker = data[offset + 1]
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            offset += 1 if marker == 0xFF else 2  # fill byte, or a marker without a length
            continue
        if marker == 0xD9:  # end of image
            break
        offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _MARKER.search(data, offset)
            if found is None:
                break
            offset = found.start()
    return scans


def _boxes_complete(data: bytes) -> bool:
    """Whether every top-level ISO BMFF box (HEIF's structure) ends within the file.

    libheif decodes a cut-off HEIC without complaint, inventing the missing tiles.
    """
    offset = 0
    while offset < len(data):
        if len(data) - offset < 8:
            return False
        size, header = int.from_bytes(data[offset : offset + 4], "big"), 8
        if size == 0:  # the last box may run to the end of the file
            return True
        if size == 1:  # a 64-bit size follows the type
            if len(data) - offset < 16:
                return False
            size, header = int.from_bytes(data[offset + 8 : offset + 16], "big"), 16
        if size < header or offset + size > len(data):
            return False
        offset += size
    return True


def displayable(image: Image.Image) -> Image.Image:
    """The image as RGB or 8-bit greyscale: transparency flattened onto white, 16-bit scaled."""
    if image.mode in ("RGB", "L"):
        return image
    if image.mode in _TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode.startswith("I"):
        # 16-bit greyscale: convert() would clip everything above 255 to white.
        return image.convert("I").point(lambda value: value / 256).convert("L")
    return image.convert("RGB")


def with_small_profile(
    image: Image.Image, icc_profile: bytes | None
) -> tuple[Image.Image, bytes | None]:
    """The pixels and the profile a rendition embeds: a small profile as it is; a large one
    applied (converted to sRGB, what viewers assume without one) and dropped; one that no
    colour manager can read dropped. Called on shrunk pixels, where converting is cheap."""
    if icc_profile is None or len(icc_profile) <= MAX_KEPT_ICC_BYTES:
        return image, icc_profile
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        converted = ImageCms.profileToProfile(
            image, profile, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        log.info("dropped an unreadable %d-byte colour profile", len(icc_profile))
        return image, None
    return converted, None
