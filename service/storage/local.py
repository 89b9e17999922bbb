"""Blobs as files on local disk, behind HMAC-signed URLs that the API serves (embedded mode)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import urlencode

from service.storage.base import (
    COPY_CHUNK_BYTES,
    CREATE_ONLY_HEADERS,
    BlobExistsError,
    BlobInfo,
    BlobLengthMismatchError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobTooLargeError,
    PresignedRequest,
    UploadInterruptedError,
    download_name,
    expiry_instant,
    validate_expiry,
    validate_header_value,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
# Temp files of in-flight writes carry this marker. It is outside the key alphabet, so a temp
# file can never be mistaken for (or collide with) a blob.
_TEMP_MARKER = "~"


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root/<key>``, for the embedded single-machine mode.

    Presigned URLs point at the API (``{public_url}/blobs/<key>?...``), which serves them with
    ``service.api.blobs``; they are HMAC-SHA256 signed with a key derived from ``secret_key``
    over the method, key, expiry, length, content type and download name, so changing any of
    them (or using the URL after ``expires``) is refused. ``clock`` returns Unix seconds.

    Every write goes to a temp file in the target's directory and is renamed over the target
    with ``os.replace`` once complete, so readers see the old blob or the whole new one, never a
    partial upload. A directory layout cannot hold both ``a`` and ``a/b``; our key scheme never
    asks for that, and such a write raises :class:`BlobStoreError`.
    """

    def __init__(
        self,
        root: Path,
        *,
        public_url: str,
        secret_key: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret_key:
            raise ValueError("LocalBlobStore needs a secret_key to sign its URLs")
        self._root = Path(root)
        self._public_url = public_url.rstrip("/")
        # A purpose-bound subkey: the same secret may sign other things (sessions, tokens)
        # without a signature from one context ever validating in another.
        self._signing_key = hmac.new(
            secret_key.encode(), b"pagelane local blob URL v1", hashlib.sha256
        ).digest()
        self._clock = clock

    @property
    def root(self) -> Path:
        return self._root

    @property
    def public_url(self) -> str:
        """Base URL of the API that serves this store's signed URLs (no trailing slash)."""
        return self._public_url

    # --- signing ----------------------------------------------------------------------------

    def _signature(
        self,
        method: str,
        key: str,
        expires: int,
        length: int | None,
        content_type: str,
        filename: str,
    ) -> str:
        # JSON gives an unambiguous encoding: no choice of field values can make two different
        # tuples serialise to the same message.
        message = json.dumps([method, key, expires, length, content_type, filename])
        return hmac.new(self._signing_key, message.encode(), hashlib.sha256).hexdigest()

    def verify(
        self,
        method: str,
        key: str,
        expires: int,
        length: int | None,
        sig: str,
        content_type: str | None = None,
        *,
        filename: str | None = None,
    ) -> bool:
        """Whether ``sig`` was issued by this store for exactly these values and is unexpired.

        ``content_type`` is the type the request carries: a URL signed with a content type
        accepts only that one, a URL signed without one accepts any (as on S3). ``filename``
        is the download name a GET URL was signed with. Invalid keys are never valid.
        """
        try:
            validate_key(key)
        except ValueError:
            return False
        if not _HEX_SHA256.fullmatch(sig) or self._clock() >= expires:
            return False
        name = filename or ""
        if hmac.compare_digest(
            self._signature(method, key, expires, length, content_type or "", name), sig
        ):
            return True
        return bool(content_type) and hmac.compare_digest(
            self._signature(method, key, expires, length, "", name), sig
        )

    def _signed_url(self, key: str, query: dict[str, str]) -> str:
        # Keys use only URL-safe characters, so they go into the path unescaped.
        return f"{self._public_url}/blobs/{key}?{urlencode(query)}"

    def presign_put(
        self, key: str, *, content_length: int | None, content_type: str | None, expires_in: int
    ) -> PresignedRequest:
        validate_key(key)
        validate_expiry(expires_in)
        validate_header_value("content_type", content_type)
        if content_length is not None and content_length < 0:
            raise ValueError("content_length must be >= 0")
        expires_at = expiry_instant(self._clock(), expires_in)
        expires = int(expires_at.timestamp())
        sig = self._signature("PUT", key, expires, content_length, content_type or "", "")
        url = self._signed_url(
            key,
            {
                "method": "PUT",
                "expires": str(expires),
                "len": "" if content_length is None else str(content_length),
                "sig": sig,
            },
        )
        headers = {"Content-Type": content_type} if content_type else {}
        headers.update(CREATE_ONLY_HEADERS)  # not needed here (every upload is create-only)
        return PresignedRequest(method="PUT", url=url, headers=headers, expires_at=expires_at)

    def presign_get(self, key: str, *, expires_in: int, filename: str | None = None) -> str:
        validate_key(key)
        validate_expiry(expires_in)
        expires = int(expiry_instant(self._clock(), expires_in).timestamp())
        name = download_name(filename) if filename is not None else ""
        query = {"method": "GET", "expires": str(expires), "len": ""}
        if name:
            query["filename"] = name
        query["sig"] = self._signature("GET", key, expires, None, "", name)
        return self._signed_url(key, query)

    # --- files ------------------------------------------------------------------------------

    def blob_path(self, key: str) -> Path:
        """Where ``key``'s file lives (validated). The file may vanish at any moment, so open
        it and handle ``FileNotFoundError`` rather than checking first."""
        return self._root / validate_key(key)

    @contextlib.contextmanager
    def _os_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise BlobStoreError(f"local blob store: {what} failed: {exc}") from exc

    def _create_temp_beside(self, path: Path) -> tuple[int, str]:
        # `delete` prunes empty directories, so one may vanish between mkdir and mkstemp;
        # creating it again is the whole fix.
        for _ in range(5):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return tempfile.mkstemp(
                    prefix=f"{path.name}{_TEMP_MARKER}", suffix=".part", dir=path.parent
                )
            except FileNotFoundError:
                continue
        raise BlobStoreError(f"local blob store: cannot create a temp file in {path.parent}")

    @contextlib.contextmanager
    def _atomic_replace(self, path: Path) -> Iterator[BinaryIO]:
        """Yield a file to write; on success it replaces ``path`` whole, on failure it is gone."""
        fd, temp_name = self._create_temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                # An upload reported as stored must survive a power cut, not just a crash.
                os.fsync(out.fileno())
            os.replace(temp_name, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise

    @contextlib.contextmanager
    def _atomic_create(self, path: Path, key: str) -> Iterator[BinaryIO]:
        """Like :meth:`_atomic_replace`, but the finished file is linked in only if ``path``
        does not exist (``link`` fails on an existing target, atomically): create-only."""
        fd, temp_name = self._create_temp_beside(path)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temp_name, path)
            except FileExistsError as exc:
                raise BlobExistsError(key) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)

    def receive_upload(self, key: str, body: IO[bytes], *, expected_length: int | None) -> int:
        """Copy ``body`` to ``key`` in chunks and publish it atomically; returns bytes stored.

        Create-only: when ``key`` already holds a blob, :class:`BlobExistsError` is raised
        (before the body is read when the blob was there first; if a concurrent upload wins
        the race, after) and the stored blob is left as it is.

        With ``expected_length``, a body of any other length raises
        :class:`BlobLengthMismatchError` and stores nothing; at most one byte past the expected
        length is read. When reading the body fails (a client hanging up) nothing is stored
        and :class:`UploadInterruptedError` is raised, or the body's own disconnect error
        (werkzeug's ``ClientDisconnected``) passes through unchanged.
        """
        path = self.blob_path(key)
        if self.head(key) is not None:
            raise BlobExistsError(key)
        received = 0
        with self._os_errors(f"upload of {key!r}"), self._atomic_create(path, key) as out:
            # Read one byte past the signed length so an overlong body is detected, not cut.
            budget = None if expected_length is None else expected_length + 1
            while budget is None or received < budget:
                want = (
                    COPY_CHUNK_BYTES if budget is None else min(COPY_CHUNK_BYTES, budget - received)
                )
                try:
                    chunk = body.read(want)
                except OSError as exc:
                    # The client's connection failed, not our disk: keep it out of BlobStoreError.
                    raise UploadInterruptedError(f"upload of {key!r} interrupted: {exc}") from exc
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
            if expected_length is not None and received != expected_length:
                raise BlobLengthMismatchError(expected_length, received)
        return received

    def head(self, key: str) -> BlobInfo | None:
        path = self.blob_path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise BlobStoreError(f"local blob store: stat {key!r} failed: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            return None
        return BlobInfo(key=key, size=st.st_size, last_modified=_mtime(st))

    def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self.blob_path(key)
        try:
            with open(path, "rb") as blob:
                size = os.fstat(blob.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLargeError(key, size)
                return blob.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise BlobNotFoundError(key) from exc
        except OSError as exc:
            raise BlobStoreError(f"local blob store: read {key!r} failed: {exc}") from exc

    def download_to(self, key: str, destination: Path, *, max_bytes: int | None = None) -> str:
        path = self.blob_path(key)
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                if max_bytes is not None and size > max_bytes:
                    raise BlobTooLargeError(key, size)
                with open(destination, "wb") as out:
                    while chunk := source.read(COPY_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if not path.is_file():
                raise BlobNotFoundError(key) from exc
            raise BlobStoreError(f"local blob store: copy of {key!r} failed: {exc}") from exc
        except OSError as exc:
            raise BlobStoreError(f"local blob store: copy of {key!r} failed: {exc}") from exc
        return digest.hexdigest()

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        # The content type is not kept: downloads are typed from the key's extension.
        path = self.blob_path(key)
        with self._os_errors(f"write of {key!r}"), self._atomic_replace(path) as out:
            out.write(data)

    def put_file(
        self, key: str, source: Path, *, content_type: str = "application/octet-stream"
    ) -> None:
        path = self.blob_path(key)
        # Opened before _os_errors is entered: a missing source is the caller's error
        # (FileNotFoundError, as on S3), not the store's.
        with (
            open(source, "rb") as data,
            self._os_errors(f"write of {key!r}"),
            self._atomic_replace(path) as out,
        ):
            shutil.copyfileobj(data, out, COPY_CHUNK_BYTES)

    def delete(self, key: str) -> None:
        path = self.blob_path(key)
        with self._os_errors(f"delete of {key!r}"):
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            except IsADirectoryError:
                return  # a key prefix, not a blob: nothing stored under this exact key
        self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, directory: Path) -> None:
        # Results live in one directory per batch; without pruning, retention sweeps would
        # leave thousands of empty directories behind. rmdir refuses non-empty directories,
        # which makes this safe against concurrent writers.
        root = self._root.resolve()
        current = directory.resolve()
        while current != root and root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def list_prefix(self, prefix: str, *, start_after: str | None = None) -> Iterator[BlobInfo]:
        validate_prefix(prefix)
        directory_part = prefix.rpartition("/")[0]
        start = self._root / directory_part if directory_part else self._root
        key_prefix = f"{directory_part}/" if directory_part else ""
        for info in self._walk_in_key_order(start, key_prefix, prefix):
            if start_after is None or info.key > start_after:
                yield info

    def _walk_in_key_order(
        self, directory: Path, key_prefix: str, prefix: str
    ) -> Iterator[BlobInfo]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise BlobStoreError(f"local blob store: listing {directory} failed: {exc}") from exc
        # Sorting a directory's own entries, with each subdirectory ranked as "name/", yields
        # exactly S3's order of full keys, without reading the whole tree first.
        ranked: list[tuple[str, bool, os.DirEntry[str]]] = []
        for entry in entries:
            if _TEMP_MARKER in entry.name:
                continue  # an upload in flight (or abandoned): not a blob
            is_dir = entry.is_dir(follow_symlinks=False)
            rank = f"{key_prefix}{entry.name}/" if is_dir else f"{key_prefix}{entry.name}"
            wanted = rank.startswith(prefix) or (is_dir and prefix.startswith(rank))
            if wanted:
                ranked.append((rank, is_dir, entry))
        ranked.sort(key=lambda item: item[0])
        for rank, is_dir, entry in ranked:
            if is_dir:
                yield from self._walk_in_key_order(Path(entry.path), rank, prefix)
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we listed
            if stat.S_ISREG(st.st_mode):
                yield BlobInfo(key=rank, size=st.st_size, last_modified=_mtime(st))

    def ensure_ready(self) -> None:
        with self._os_errors(f"creating {self._root}"):
            self._root.mkdir(parents=True, exist_ok=True)
        if not os.access(self._root, os.W_OK):
            raise BlobStoreError(f"local blob store: {self._root} is not writable")

    def ping(self) -> bool:
        if self._root.is_dir() and os.access(self._root, os.W_OK):
            return True
        log.warning("blob store not ready: %s is missing or not writable", self._root)
        return False


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)
