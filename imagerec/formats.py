"""The image formats imagerec accepts, in one table, judged by content (magic bytes), never by
file name or claimed type; and the HEIF decoder, registered with Pillow once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # as Pillow reports it, and as `images.format` stores it
    label: str  # as people call it
    extensions: tuple[str, ...]  # the first one names blob keys
    mime_type: str
    browsers_show: bool  # every browser shows it in an <img> as it is


FORMATS = {
    f.name: f
    for f in (
        Format("JPEG", "JPEG", ("jpg", "jpeg"), "image/jpeg", True),
        Format("PNG", "PNG", ("png",), "image/png", True),
        Format("WEBP", "WebP", ("webp",), "image/webp", True),
        Format("HEIF", "HEIC/HEIF", ("heic", "heif"), "image/heic", False),
    )
}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def sniff_format(head: bytes) -> str | None:
    """The supported format the first bytes announce, or None; decoding decides the rest."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def extension_for(head: bytes) -> str:
    """The blob-key extension for content starting with `head` ("bin" when unsupported)."""
    kind = sniff_format(head)
    return FORMATS[kind].extensions[0] if kind else "bin"


@functools.cache
def register_heif_opener() -> None:
    """Teach Pillow to open HEIC/HEIF; every decoder of originals calls this before opening.

    Imported here, not at module level: only processes that decode pay for pillow-heif.
    """
    import pillow_heif

    pillow_heif.register_heif_opener()
