"""Where call recordings are kept: a directory (the default, under the state dir) or any S3-compatible store.

analytics writes them (``put_file``), control-api serves and deletes them (``read``, ``delete``). An object is named
by its tenant and call (``key``), so one tenant's recordings never share a name with another's. The S3 store uses
``aioboto3``, imported only when it is configured. Recordings are personal data: nothing here logs a key's content.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from voice_schemas import subjects

from .paths import state_dir
from .settings import _Settings

CHUNK = 256 * 1024  # bytes per read when serving a recording
MEDIA_TYPE = "audio/wav"


class RecordingNotFound(LookupError):
    """No object under that key."""


class RecordingStoreSettings(_Settings):
    """The recording store (analytics writes, control-api reads and deletes): a directory unless
    RECORDING_S3_BUCKET is set."""

    recording_dir: Path | None = Field(
        None, description="Directory of the default store; STATE_DIR/recordings when unset. Production: use S3 "
        "(a directory is per machine unless every replica mounts the same volume)",
    )
    recording_s3_bucket: str | None = Field(None, description="Store recordings in this S3 bucket (must exist)")
    recording_s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph, R2, ...); AWS when unset"
    )
    recording_s3_region: str = Field("us-east-1", description="S3 region")
    recording_s3_prefix: str = Field("recordings/", max_length=200, description="Key prefix inside the bucket")
    recording_s3_access_key_id: SecretStr | None = Field(
        None, description="S3 access key id; the default AWS credential chain (IAM role, env) when unset"
    )
    recording_s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret access key")
    recording_s3_timeout_s: float = Field(30.0, gt=0, le=600, description="Connect/read timeout per S3 request")

    @field_validator("recording_s3_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and not v.endswith("/"):
            v += "/"
        if v.startswith("/") or ".." in v:
            raise ValueError("RECORDING_S3_PREFIX is a relative key prefix without '..'")
        return v


def key(tenant_id: str, call_id: str) -> str:
    """The object name of a call's recording: ``<tenant_id>/<call_id>.wav`` (ids validated: no path tricks)."""
    return f"{subjects.check_id(tenant_id, 'tenant_id')}/{subjects.check_id(call_id, 'call_id')}.wav"


class RecordingStore(ABC):
    """An object store for finished recordings."""

    kind: str

    @abstractmethod
    async def put_file(self, key: str, path: Path) -> int:
        """Store the file at ``path`` under ``key`` (the file is consumed); its size in bytes."""

    @abstractmethod
    def read(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks; ``RecordingNotFound`` (on the first iteration) when there is none."""

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete the object; nothing happens when there is none."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release clients (the directory store holds none)."""


class DirectoryStore(RecordingStore):
    kind = "directory"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError("recording key outside the store")
        return p

    async def put_file(self, key: str, path: Path) -> int:
        dest = self._path(key)

        def move() -> int:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            shutil.move(str(path), tmp)  # a rename on the same file system, else a copy
            os.replace(tmp, dest)  # readers see the whole file or none
            return dest.stat().st_size

        return await asyncio.to_thread(move)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as e:
            raise RecordingNotFound(key) from e
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)


class S3Store(RecordingStore):
    """Any S3-compatible store through aioboto3 (one client, opened on first use)."""

    kind = "s3"

    def __init__(self, s: RecordingStoreSettings) -> None:
        import aioboto3  # optional: needed only when RECORDING_S3_BUCKET is set
        from botocore.config import Config

        assert s.recording_s3_bucket
        self.bucket, self.prefix = s.recording_s3_bucket, s.recording_s3_prefix
        self._session = aioboto3.Session()
        self._client_args: dict[str, Any] = {
            "region_name": s.recording_s3_region,
            "endpoint_url": s.recording_s3_endpoint_url,
            "config": Config(connect_timeout=s.recording_s3_timeout_s, read_timeout=s.recording_s3_timeout_s,
                             retries={"max_attempts": 3, "mode": "standard"}),
        }
        if s.recording_s3_access_key_id and s.recording_s3_secret_access_key:
            self._client_args["aws_access_key_id"] = s.recording_s3_access_key_id.get_secret_value()
            self._client_args["aws_secret_access_key"] = s.recording_s3_secret_access_key.get_secret_value()
        self._client: Any = None
        self._ctx: Any = None
        self._lock = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._ctx = self._session.client("s3", **self._client_args)
                self._client = await self._ctx.__aenter__()
            return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def put_file(self, key: str, path: Path) -> int:
        s3 = await self._s3()
        size = (await asyncio.to_thread(path.stat)).st_size
        await s3.upload_file(str(path), self.bucket, self._key(key),
                             ExtraArgs={"ContentType": MEDIA_TYPE})  # multipart above 8 MiB
        await asyncio.to_thread(path.unlink, missing_ok=True)
        return size

    async def read(self, key: str) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        try:
            obj = await s3.get_object(Bucket=self.bucket, Key=self._key(key))
        except s3.exceptions.NoSuchKey as e:
            raise RecordingNotFound(key) from e
        body = obj["Body"]
        try:
            while chunk := await body.read(CHUNK):
                yield chunk
        finally:
            body.close()

    async def exists(self, key: str) -> bool:
        s3 = await self._s3()
        try:
            await s3.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx, self._client = self._ctx, None, None
            await ctx.__aexit__(None, None, None)


def make_store(s: RecordingStoreSettings) -> RecordingStore:
    """The S3 store when RECORDING_S3_BUCKET is set, else the directory store."""
    if s.recording_s3_bucket:
        return S3Store(s)
    return DirectoryStore(s.recording_dir or state_dir() / "recordings")
