"""Local paths and s3:// URIs behind one interface (pyarrow filesystems).

pyarrow's S3FileSystem ignores AWS_ENDPOINT_URL, so the endpoint is passed as
endpoint_override, from XTP_S3_ENDPOINT or AWS_ENDPOINT_URL. Credentials come from
the usual AWS environment and are never logged.
"""
from __future__ import annotations

import os
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
