"""Where originals and thumbnails live: a local folder (embedded default) or Redis.

Both backends keep a blob as plain bytes under its key, so an outside emitter can
`SET` an original in Redis and then announce it with a CloudEvent.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class BlobNotFound(KeyError):
    """No blob under that key; not worth retrying."""


class InvalidBlobKey(ValueError):
    """Not a key this store makes or accepts (an event's mistake, not worth retrying)."""


class BlobStoreUnavailable(RuntimeError):
    """The store could not be reached; worth retrying."""


class BlobStoreFull(BlobStoreUnavailable):
    """The store refuses writes for want of space (Redis at maxmemory with noeviction, a full
    disk). Still worth retrying, as design.md's failure policy has a step do for what may pass
    (an operator frees space); the web tells its user the store is full, not unreachable."""


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def ages(self, prefix: str = "") -> Iterator[tuple[str, float]]: ...
    def delete_under(self, prefix: str) -> None: ...


def album_prefix(user_id: int, album_id: int) -> str:
    """Where every blob of one album lives (original_key): what an album's delete removes."""
    return f"{user_id}/{album_id}/"


def original_key(user_id: int, album_id: int, image_id: str, extension: str) -> str:
    """The service makes every key; a client's file name never becomes part of one."""
    return check_key(f"{user_id}/{album_id}/{image_id}.{extension.lower()}")


def thumbnail_key(original: str) -> str:
    """Beside the original, so deleting an album's folder of keys takes both."""
    stem = original.rsplit(".", 1)[0]
    return check_key(f"{stem}.thumb.jpg")


# Originals that no browser shows and no decoder shrinks while decoding (HEIC: about 0.4 s
# of CPU per full decode) get a working copy: an upright JPEG the size a screen or the
# detector can use, made once by make-thumbnail and read by detect-objects and the web.
WORKING_COPY_SIDE = 2048
_WORKING_COPY_EXTENSIONS = {"heic"}


def has_working_copy(original: str) -> bool:
    return original.rsplit(".", 1)[-1].lower() in _WORKING_COPY_EXTENSIONS


def working_key(original: str) -> str:
    """Beside the original, as the thumbnail; deleted with it."""
    stem = original.rsplit(".", 1)[0]
    return check_key(f"{stem}.work.jpg")


def photo_keys(original: str) -> list[str]:
    """Every key one photo's blobs live under: its original, thumbnail and any working copy.
    Derived from the original's key, never from a stored thumbnail key (which only says that
    a thumbnail exists, and may be written after a row was read)."""
    keys = {original, thumbnail_key(original)}
    if has_working_copy(original):
        keys.add(working_key(original))
    return sorted(keys)


def check_key(key: str) -> str:
    # Each segment is a file or folder name in the folder backend: keep under NAME_MAX (255).
    if len(key) > 512 or not _KEY.match(key) or ".." in key or max(map(len, key.split("/"))) > 200:
        raise InvalidBlobKey(f"invalid blob key {key!r}")
    return key


class FolderBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename, so readers never see half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BlobStoreFull(f"blob store full: {e}") from e
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None

    def ages(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every key starting with `prefix`, with the seconds since it was written."""
        now = time.time()
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            # A half-written file (put's ".tmp-") is no key; put removes it itself.
            if key.startswith(prefix) and _KEY.match(key) and path.is_file():
                try:
                    yield key, now - path.stat().st_mtime
                except FileNotFoundError:  # deleted while we looked
                    continue

    def delete_under(self, prefix: str) -> None:
        for key, _ in list(self.ages(prefix)):
            self.delete(key)


class RedisBlobStore:
    def __init__(self, url: str) -> None:
        # Imported here: a process on the folder store never needs the Redis client.
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)

    def put(self, key: str, data: bytes) -> None:
        with _unavailable_on_connection_error():
            self.client.set(check_key(key), data)

    def get(self, key: str) -> bytes:
        with _unavailable_on_connection_error():
            data = self.client.get(check_key(key))
        if data is None:
            raise BlobNotFound(key)
        return data

    def delete(self, key: str) -> None:
        with _unavailable_on_connection_error():
            self.client.delete(check_key(key))

    def exists(self, key: str) -> bool:
        with _unavailable_on_connection_error():
            return bool(self.client.exists(check_key(key)))

    def size(self, key: str) -> int:
        with _unavailable_on_connection_error():
            exists, length = self.client.pipeline().exists(check_key(key)).strlen(key).execute()
        if not exists:
            raise BlobNotFound(key)
        return int(length)

    def ages(self, prefix: str = "") -> Iterator[tuple[str, float]]:
        """Every key starting with `prefix`, with the seconds since it was last touched (OBJECT
        IDLETIME: a lower bound on its age, since every write or read resets it). Redis under
        an LFU maxmemory-policy tracks no idle time and refuses (knative/ uses noeviction)."""
        with _unavailable_on_connection_error():
            for batch in _batches(self.client.scan_iter(match=_glob(prefix) + "*", count=500)):
                pipe = self.client.pipeline(transaction=False)
                for key in batch:
                    pipe.object("idletime", key)
                for key, idle in zip(batch, pipe.execute(), strict=True):
                    name = key.decode(errors="replace")
                    if idle is not None and _KEY.match(name):
                        yield name, float(idle)

    def delete_under(self, prefix: str) -> None:
        with _unavailable_on_connection_error():
            for batch in _batches(self.client.scan_iter(match=_glob(prefix) + "*", count=500)):
                self.client.delete(*batch)


def _glob(prefix: str) -> str:
    """`prefix` as a Redis MATCH pattern that matches only itself."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", prefix)


def _batches(keys: Iterator[bytes], size: int = 500) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _unavailable_on_connection_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        redis = sys.modules.get("redis")  # imported by RedisBlobStore, the only user of this
        if exc is None or redis is None:
            return False
        if isinstance(exc, redis.exceptions.ConnectionError | redis.TimeoutError):
            raise BlobStoreUnavailable(f"blob store unreachable: {exc}") from exc
        # Full (maxmemory with noeviction): a write may succeed once space is made; retry.
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            raise BlobStoreFull(f"blob store full: {exc}") from exc
        return False


_stores: dict[str, BlobStore] = {}


def open_blob_store(url: str) -> BlobStore:
    """One store per URL per process: the Redis pool is made once and reused."""
    if url not in _stores:
        scheme = urlparse(url).scheme
        if scheme in ("redis", "rediss", "unix"):
            _stores[url] = RedisBlobStore(url)
        elif scheme == "file":
            _stores[url] = FolderBlobStore(Path(urlparse(url).path))
        elif scheme == "":
            _stores[url] = FolderBlobStore(Path(url))
        else:
            raise ValueError(f"unsupported IMAGEREC_BLOB_URL scheme {scheme!r}")
    return _stores[url]
