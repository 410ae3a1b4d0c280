"""Local paths and s3:// URIs behind one interface (pyarrow filesystems), and conditional writes on both
(create if absent, replace if unchanged: boto3 on s3://, a lock and an atomic rename on a local path).

pyarrow's S3FileSystem ignores AWS_ENDPOINT_URL, so the endpoint is passed as
endpoint_override, from XTP_S3_ENDPOINT or AWS_ENDPOINT_URL. Credentials come from
the usual AWS environment and are never logged.
"""
from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs as pafs


def _pafs():
    """pyarrow's filesystems, imported on first use (the engine and bench run where pyarrow is absent)."""
    import pyarrow.fs

    return pyarrow.fs


def s3_endpoint() -> str | None:
    return os.environ.get("XTP_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/key URI."""
    pafs = _pafs()
    uri = str(uri)
    if uri.startswith("s3://"):
        endpoint = s3_endpoint()
        kwargs = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
        # an unresponsive store must fail a request, not hang it: the caller retries
        timeout = float(os.environ.get("XTP_S3_TIMEOUT", "30"))
        kwargs["connect_timeout"] = timeout
        kwargs["request_timeout"] = timeout
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):].rstrip("/")
    if "://" in uri:
        raise ValueError(f"unsupported URI {uri!r}: use a local path or s3://bucket/prefix")
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def join_under(base: str, *parts: str) -> str:
    """`join(base, *parts)`, checked to stay under `base`: no empty, '.' or '..' segment, and for a local
    base the resolved path (links followed) lies inside the resolved base. Names from data and flags
    reach paths only through here."""
    segments = [seg for part in parts for seg in str(part).split("/")]
    if any(seg in ("", ".", "..") or "\\" in seg for seg in segments):
        raise ValueError(f"path {'/'.join(map(str, parts))!r} would leave {base}")
    uri = join(base, *parts)
    if "://" not in str(base):
        root, resolved = Path(base).resolve(), Path(uri).resolve()
        if resolved != root and root not in resolved.parents:
            raise ValueError(f"path {'/'.join(map(str, parts))!r} would leave {base}")
    return uri


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != _pafs().FileType.NotFound


def is_dir(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == _pafs().FileType.Directory


def list_names(uri: str) -> list[str]:
    """Names of the entries directly under a directory (sorted)."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(_pafs().FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_bytes(uri: str, data: bytes) -> None:
    """Write whole or not at all: a temporary name first, then a move into place."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as stream:
        stream.write(data)
    fs.move(tmp, path)


# ---------------------------------------------------------------- conditional writes
# Of two writers racing on one object, exactly one wins. A version names what was read or written: an
# S3 ETag, or for a local file the digest of its bytes. On s3://, a create is a put with `If-None-Match: *`
# and a replace a put with `If-Match: <ETag>`; on a local (or shared POSIX) filesystem every change holds
# an exclusive `flock` on a sibling lock file and lands with one atomic `os.replace`, so the file never
# goes missing between a read and a replace (a competitor's create cannot slip in).

def read_versioned(uri: str) -> tuple[str, str] | None:
    """(text, version) of the object, or None where there is none."""
    return _object(uri).read()


def create_exclusive(uri: str, text: str) -> str | None:
    """Write `text` where nothing is yet; its version, or None where the object exists."""
    return _object(uri).create(text)


def replace_versioned(uri: str, text: str, version: str) -> str | None:
    """Swap the object at `version` (as read) for `text`; the new version, or None where it changed meanwhile
    (or is gone)."""
    return _object(uri).replace(text, version)


def delete_versioned(uri: str, version: str) -> None:
    """Delete the object if it is still at `version`; anything else is left as it is."""
    _object(uri).delete(version)


def _object(uri: str):
    return _S3Object(uri) if str(uri).startswith("s3://") else _LocalObject(uri)


def _digest(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class _LocalObject:
    def __init__(self, uri: str):
        self.path = Path(resolve(uri)[1])

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> tuple[str, str] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data.decode("utf-8"), _digest(data)

    def _write(self, text: str) -> str:
        data = text.encode("utf-8")
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        return _digest(data)

    def create(self, text: str) -> str | None:
        with self._locked():
            return None if self.path.exists() else self._write(text)

    def replace(self, text: str, version: str) -> str | None:
        with self._locked():
            current = self.read()
            return self._write(text) if current is not None and current[1] == version else None

    def delete(self, version: str) -> None:
        with self._locked():
            current = self.read()
            if current and current[1] == version:
                self.path.unlink(missing_ok=True)


def _s3_client():
    """A boto3 S3 client for the current endpoint, timeout and credentials, made once (making one takes
    a while, and a lease's refresh must land well within its time to live)."""
    return _s3_client_for(s3_endpoint(), float(os.environ.get("XTP_S3_TIMEOUT", "30")),
                          *(os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                                                             "AWS_REGION")))


@functools.lru_cache(maxsize=8)
def _s3_client_for(endpoint: str | None, timeout: float, *environment: str | None):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 3}))


class _S3Object:
    def __init__(self, uri: str):
        self.bucket, _, self.key = str(uri)[len("s3://"):].partition("/")
        self.client = _s3_client()

    @staticmethod
    def _refused(exc) -> bool:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)

    def read(self) -> tuple[str, str] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return got["Body"].read().decode("utf-8"), got["ETag"]

    def _put(self, text: str, **condition) -> str | None:
        from botocore.exceptions import ClientError

        try:
            put = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=text.encode("utf-8"),
                                         ContentType="application/json" if self.key.endswith(".json") else
                                         "text/plain", **condition)
        except ClientError as exc:
            if self._refused(exc):
                return None
            raise
        return put["ETag"]

    def create(self, text: str) -> str | None:
        return self._put(text, IfNoneMatch="*")

    def replace(self, text: str, version: str) -> str | None:
        return self._put(text, IfMatch=version)

    def delete(self, version: str) -> None:
        current = self.read()
        if current and current[1] == version:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)
