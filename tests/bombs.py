"""Hostile photos made on the fly (never committed): EXIF blocks whose entries share their
values, ICC profiles of any size, and the containers that carry them (JPEG APP1/APP2, PNG
eXIf). Each is a valid file that every decoder opens; only the metadata is out of proportion."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageCms


def exif_bomb(entries: int, kind: int = 7, count: int = 999) -> bytes:
    """A little-endian TIFF block: IFD0 of `entries` entries (tag ids 0xC000 up, unknown to
    every reader), each of `count` values of TIFF type `kind`, all of them the IFD's own bytes."""
    block = bytearray(b"II*\x00" + struct.pack("<IH", 8, entries))
    for i in range(entries):
        block += struct.pack("<HHII", 0xC000 + i % 0x3000, kind, count, 8)
    return bytes(block + b"\x00" * 4)


def _small_photo(format: str, **options) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(out, format, **options)
    return out.getvalue()


def jpeg_with_exif(block: bytes) -> bytes:
    """A 64x48 JPEG carrying `block` as its APP1 EXIF segment (at most 65,527 bytes)."""
    segment = b"Exif\x00\x00" + block
    assert len(segment) + 2 <= 0xFFFF, "an APP1 segment holds at most 64 KB"
    jpeg = _small_photo("JPEG")
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + jpeg[2:]


def png_with_exif(block: bytes) -> bytes:
    """A 64x48 PNG carrying `block` in an eXIf chunk before its pixels."""
    png = _small_photo("PNG")
    chunk = struct.pack(">I", len(block)) + b"eXIf" + block
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + block))
    header_end = 8 + 25  # the signature and IHDR
    return png[:header_end] + chunk + png[header_end:]


def icc_profile(size: int) -> bytes:
    """A valid sRGB profile padded with a private tag to `size` bytes (colour managers read it
    as sRGB and skip the tag)."""
    base = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tag_count = struct.unpack(">I", base[128:132])[0]
    table_end = 132 + 12 * tag_count
    padding = size - len(base) - 12
    assert padding >= 8, f"an sRGB profile is already {len(base)} bytes"
    # The new tag's entry goes at the end of the table, so every old offset moves by 12.
    entries = b"".join(
        base[132 + 12 * i : 136 + 12 * i]
        + struct.pack(">I", struct.unpack(">I", base[136 + 12 * i : 140 + 12 * i])[0] + 12)
        + base[140 + 12 * i : 144 + 12 * i]
        for i in range(tag_count)
    )
    private = struct.pack(">4sI", b"zzzz", len(base) + 12) + struct.pack(">I", padding)
    body = base[table_end:] + b"zzzz" + bytes(padding - 4)
    profile = (
        struct.pack(">I", size)
        + base[4:128]
        + struct.pack(">I", tag_count + 1)
        + entries
        + private
        + body
    )
    assert len(profile) == size
    return profile


def jpeg_with_icc(profile: bytes, size: tuple[int, int] = (640, 480)) -> bytes:
    """A JPEG of `size` embedding `profile` (Pillow splits it into APP2 segments)."""
    out = io.BytesIO()
    Image.new("RGB", size, (30, 140, 200)).save(out, "JPEG", icc_profile=profile)
    return out.getvalue()


def jpeg_scan_bomb(scans: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A progressive JPEG whose smallest scan is repeated until it has `scans` scans: every
    copy makes the decoder visit every block again (libjpeg warns, and decodes)."""
    out = io.BytesIO()
    Image.new("RGB", size, (30, 140, 200)).save(out, "JPEG", progressive=True)
    jpeg = out.getvalue()
    starts = [i for i in range(len(jpeg) - 1) if jpeg[i : i + 2] == b"\xff\xda"]
    ends = starts[1:] + [len(jpeg) - 2]
    smallest = min((jpeg[a:b] for a, b in zip(starts, ends, strict=True)), key=len)
    return jpeg[:-2] + smallest * (scans - len(starts)) + b"\xff\xd9"


def png_with_text(chunks: int, size: int) -> bytes:
    """A 64x48 PNG with `chunks` zTXt chunks before its pixels, each `size` bytes of text once
    decompressed (a few KB compressed: zlib shrinks repeated text a thousandfold)."""
    png = _small_photo("PNG")
    text = b""
    for i in range(chunks):
        body = f"Comment{i}".encode() + b"\x00\x00" + zlib.compress(b"a" * size, 9)
        text += struct.pack(">I", len(body)) + b"zTXt" + body
        text += struct.pack(">I", zlib.crc32(b"zTXt" + body))
    header_end = 8 + 25
    return png[:header_end] + text + png[header_end:]
