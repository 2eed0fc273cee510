"""Image formats judged by content (magic bytes), never by file name or claimed type."""

from __future__ import annotations

# Format name (as Pillow reports it) -> file extension used in blob keys.
SUPPORTED = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif"}


def sniff_format(head: bytes) -> str | None:
    """The supported format the first bytes announce, or None; decoding decides the rest."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS - {b"avif"}:
        return "HEIF"
    return None


def extension_for(head: bytes) -> str:
    """The blob-key extension for content starting with `head` ("bin" when unsupported)."""
    return SUPPORTED.get(sniff_format(head) or "", "bin")
