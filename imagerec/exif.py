"""A photo's EXIF block, measured before any library walks it, and read within that budget.

EXIF is a TIFF structure: directories (IFDs) of 12-byte entries, each naming a tag, a type, a
count of values and where they are. exifread (3.5) reads every value of every entry one by one
in Python, about 0.8 µs each, and nothing stops entries from sharing their values: one IFD of
65,535 entries of 999 values each is a 795 KB PNG and over a minute of CPU, a 64 KB JPEG of
5,400 such entries 4-18 s (issue 20). The same walk is done here first, cheaply (entries
only, never their values), counting the reads exifread would make; a block over the budget is
refused before it is parsed, so no attempt of extract-metadata can run long enough to overlap
its retry.
"""

from __future__ import annotations

import io
import logging
import struct
from typing import Any

import exifread

log = logging.getLogger("imagerec.exif")
logging.getLogger("exifread").setLevel(logging.ERROR)  # it complains about every odd tag

# A JPEG's APP1 segment holds at most 64 KB, so camera and phone writers keep EXIF within it
# in every format (the shared test photos: 32 bytes to 43 KB). Larger blocks are refused.
MAX_EXIF_BYTES = 64 * 1024
# Reads exifread may make (0.8-1.5 µs each: under a second of CPU). The shared test photos need
# 4-900; a corrupted entry count (up to 65,535 entries past the block's end) stays under.
MAX_EXIF_READS = 500_000

# exifread's walk (exifread/__init__.py process_file, core/exif_header.py dump_ifd), mirrored:
_EXIF_IFD = 0x8769  # followed from IFD0 only
_SUB_IFDS = (0x8825, 0xA005)  # GPS, Interoperability: followed from every IFD read as EXIF tags
_SKIPPED = (0x02BC, 0x927C, 0x9286)  # XMP, MakerNote, UserComment: skipped with details=False
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_RATIONALS = (5, 10)  # a Python object per value: five reads' CPU
_ASCII = 2
_MANY = 1000  # exifread reads no values of an entry with this many or more
_BYTES_PER_READ = 1024  # an ASCII value is copied whole: about one read's CPU per KB


class ExifTooLarge(ValueError):
    """The EXIF block is larger or more tangled than a photo's; says so in one sentence."""


def exif_block(info: dict[str, Any]) -> bytes | None:
    """The TIFF structure of the EXIF Pillow found (`Image.info`), without its "Exif" prefix."""
    raw = info.get("exif")
    if not raw:
        return None
    return raw[6:] if raw.startswith(b"Exif\x00\x00") else raw


def check_exif(block: bytes) -> None:
    """Raises ExifTooLarge when reading `block` would cost more than a photo's EXIF can."""
    if len(block) > MAX_EXIF_BYTES:
        raise ExifTooLarge(
            f"The photo's EXIF metadata is {len(block) / 1024:.0f} KB; "
            f"at most {MAX_EXIF_BYTES // 1024} KB is read."
        )
    if exif_reads(block) > MAX_EXIF_READS:
        raise ExifTooLarge(
            "The photo's EXIF metadata holds far more entries and values than any camera "
            "writes, so it is not read."
        )


def exifread_tags(block: bytes) -> dict[str, Any]:
    """exifread's tags of a block `check_exif` passed: only the IFDs the event needs (no
    MakerNote, no thumbnail), from the block itself rather than a search of the whole file."""
    try:
        return exifread.process_file(io.BytesIO(block), details=False, extract_thumbnail=False)
    except Exception:
        log.debug("exifread could not read the EXIF", exc_info=True)
        return {}


def exif_reads(block: bytes) -> int:
    """How many reads exifread makes walking `block` (a bound, checked; stops counting past
    MAX_EXIF_READS). Reads past the end yield zeros, as exifread's do."""
    if block[:4] not in (b"II*\x00", b"MM\x00*"):
        return 0  # exifread finds no TIFF header and reads nothing
    order = "<" if block[:2] == b"II" else ">"

    def number(offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(block):
            return 0
        return struct.unpack_from(order + {1: "B", 2: "H", 4: "I"}[size], block, offset)[0]

    reads = 0

    def walk(ifd: int, follow: tuple[int, ...]) -> list[tuple[int, int]]:
        """Counts one IFD's reads; returns (tag, first value) of the pointers in `follow`."""
        nonlocal reads
        entries = number(ifd, 2)
        pointers = []
        for i in range(entries):
            if reads > MAX_EXIF_READS:
                break
            entry = ifd + 2 + 12 * i
            tag, kind, count = number(entry, 2), number(entry + 2, 2), number(entry + 4, 4)
            reads += 4  # three numbers, and a tag object made of them
            size = _TYPE_SIZES.get(kind)
            if size is None or tag in _SKIPPED:
                continue
            offset = entry + 8 if count * size <= 4 else number(entry + 8, 4)
            if kind == _ASCII:
                reads += 1 + min(count, max(0, len(block) - offset)) // _BYTES_PER_READ
            elif count < _MANY:
                reads += count * (5 if kind in _RATIONALS else 1)
                if tag in follow and count:
                    pointers.append((tag, number(offset, min(size, 4))))
        return pointers

    def walk_exif_tags(ifd: int, follow: tuple[int, ...]) -> list[tuple[int, int]]:
        pointers = walk(ifd, follow)
        for tag, offset in pointers:
            if tag in _SUB_IFDS:
                walk(offset, ())
        return pointers

    exif_ifd = None
    seen: set[int] = set()
    chain = number(4, 4)
    while chain and chain not in seen and reads <= MAX_EXIF_READS:
        follow = _SUB_IFDS if seen else _SUB_IFDS + (_EXIF_IFD,)
        for tag, offset in walk_exif_tags(chain, follow):
            if tag == _EXIF_IFD:
                exif_ifd = offset
        seen.add(chain)
        following = number(chain + 2 + 12 * number(chain, 2), 4)
        chain = 0 if following == chain else following
    if exif_ifd is not None and reads <= MAX_EXIF_READS:
        walk_exif_tags(exif_ifd, _SUB_IFDS)
    return reads
