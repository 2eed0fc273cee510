"""`imagerec upload FILES... --album NAME`: upload photos through the JSON API, with progress.

Usable as a library too: `upload(base_url, files, album, username, password, progress=...)`.
"""

from __future__ import annotations

import argparse
import getpass
import mimetypes
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

Progress = Callable[[str, int, int], None]  # (file name, bytes sent, bytes in all)
FINAL_STATES = {"done", "rejected", "failed"}


class ClientError(RuntimeError):
    """The service refused a request; the message is the service's own."""


@dataclass
class UploadResult:
    path: Path
    outcome: str  # "uploaded", "duplicate" or "error"
    message: str
    image: dict[str, Any] | None = field(default=None)


class ApiSession:
    """A signed-in session: cookie, CSRF token and base URL, kept for every call."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = requests.Session()
        self.timeout = timeout
        self.csrf = self.call("GET", "/api/session")["csrfToken"]

    def sign_in(self, username: str, password: str) -> None:
        body = self.call("POST", "/api/session", json={"username": username, "password": password})
        self.csrf = body["csrfToken"]

    def call(self, method: str, path: str, ok: Sequence[int] = (200, 201, 202, 204), **kw) -> Any:
        response = self.send(method, path, **kw)
        if response.status_code not in ok:
            raise ClientError(_error_text(response))
        return response.json() if response.content else None

    def send(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        if method != "GET":
            headers["X-CSRF-Token"] = self.csrf
        try:
            return self.http.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, **kw
            )
        except requests.RequestException as e:
            raise ClientError(f"cannot reach {self.base_url}: {e}") from e

    def album_id(self, name: str) -> int:
        """The album called `name`, created when there is none."""
        for album in self.call("GET", "/api/albums")["albums"]:
            if album["name"] == " ".join(name.split()):
                return album["id"]
        return self.call("POST", "/api/albums", json={"name": name})["album"]["id"]

    def upload_file(self, album_id: int, path: Path, progress: Progress | None) -> UploadResult:
        body = _MultipartFile(path, progress)
        response = self.send(
            "POST",
            f"/api/albums/{album_id}/images",
            data=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))},
        )
        payload = _json_or_empty(response)
        if response.status_code == 201:
            image = payload["images"][0]
            return UploadResult(path, "uploaded", f"uploaded as {image['id']}", image)
        if response.status_code == 409 and payload.get("duplicates"):
            duplicate = payload["duplicates"][0]
            return UploadResult(path, "duplicate", duplicate["message"], duplicate["duplicateOf"])
        return UploadResult(path, "error", _error_text(response))

    def wait_for(self, image_ids: list[str], poll: float = 1.5, timeout: float = 600) -> dict:
        """The images once each is done, rejected or failed (or at `timeout`)."""
        deadline = time.monotonic() + timeout
        images: dict[str, dict] = {}
        while True:
            for image_id in image_ids:
                if images.get(image_id, {}).get("status") not in FINAL_STATES:
                    images[image_id] = self.call("GET", f"/api/images/{image_id}")["image"]
            if all(i["status"] in FINAL_STATES for i in images.values()):
                return images
            if time.monotonic() > deadline:
                return images
            time.sleep(poll)


def upload(
    base_url: str,
    files: Sequence[str | Path],
    album: str,
    username: str,
    password: str,
    progress: Progress | None = None,
) -> list[UploadResult]:
    """Sign in, find or create `album`, and upload each file; one result per file."""
    session = ApiSession(base_url)
    session.sign_in(username, password)
    album_id = session.album_id(album)
    return [session.upload_file(album_id, Path(f), progress) for f in files]


class _MultipartFile:
    """One file as a multipart/form-data body that reports how much of it has been read."""

    def __init__(self, path: Path, progress: Progress | None) -> None:
        boundary = uuid.uuid4().hex
        name = path.name.replace('"', "%22").replace("\r", "").replace("\n", "")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {kind}\r\n\r\n"
        ).encode()
        self._parts = [head, path.read_bytes(), f"\r\n--{boundary}--\r\n".encode()]
        self._body = b"".join(self._parts)
        self._offset = 0
        self._name = path.name
        self._progress = progress
        self.content_type = f"multipart/form-data; boundary={boundary}"

    def __len__(self) -> int:
        return len(self._body)

    def read(self, size: int = -1) -> bytes:
        end = len(self._body) if size is None or size < 0 else self._offset + min(size, 64 * 1024)
        chunk = self._body[self._offset : end]
        self._offset += len(chunk)
        if self._progress is not None and chunk:
            self._progress(self._name, self._offset, len(self._body))
        return chunk


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(response: requests.Response) -> str:
    message = _json_or_empty(response).get("error") or response.text[:200] or response.reason
    return f"{message} (HTTP {response.status_code})"


def _progress_bar() -> Progress:
    """A bar redrawn in place on a terminal; only the finished line when stderr is a file."""

    def show(name: str, sent: int, total: int) -> None:
        stream = sys.stderr
        done = sent >= total
        if not (done or stream.isatty()):
            return
        width = 30
        share = min(sent / max(total, 1), 1.0)
        filled = int(width * share)
        percent = 100 if done else min(int(share * 100), 99)
        line = f"\r{name[:40]:40} [{'#' * filled}{'.' * (width - filled)}] {percent:3d}%"
        stream.write(line + ("\n" if done else ""))
        stream.flush()

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="imagerec upload", description="Upload photos into an album of an imagerec service."
    )
    parser.add_argument("files", nargs="+", type=Path, help="photos to upload")
    parser.add_argument("--album", required=True, help="album name (created when missing)")
    parser.add_argument(
        "--url",
        default=os.environ.get("IMAGEREC_URL", "http://127.0.0.1:5000"),
        help="the web service (default: $IMAGEREC_URL or http://127.0.0.1:5000)",
    )
    parser.add_argument(
        "--user",
        default=os.environ.get("IMAGEREC_USER") or getpass.getuser(),
        help="username (default: $IMAGEREC_USER, else your login name)",
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait until each photo is processed and show labels"
    )
    args = parser.parse_args(argv)

    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    password = os.environ.get("IMAGEREC_PASSWORD") or getpass.getpass(f"Password for {args.user}: ")
    try:
        session = ApiSession(args.url)
        session.sign_in(args.user, password)
        album_id = session.album_id(args.album)
        results = [session.upload_file(album_id, f, _progress_bar()) for f in args.files]
    except ClientError as e:
        print(f"imagerec upload: {e}", file=sys.stderr)
        return 2
    for result in results:
        print(f"{result.path}: {result.outcome}: {result.message}")
    if args.wait:
        started = [r.image["id"] for r in results if r.outcome == "uploaded" and r.image]
        for image in session.wait_for(started).values():
            labels = ", ".join(f"{x['label']} {x['score']:.0%}" for x in image["labels"])
            detail = image["reason"] or labels or "no objects recognised"
            print(f"{image['fileName']}: {image['status']}: {detail}")
    return 1 if any(r.outcome == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
