"""Where an $import input's NDJSON comes from, checked at kick-off and fetched by the worker.

Three kinds of `url` are read: http(s) URLs (streamed with httpx; redirects are not
followed, so the server fetches exactly the URL it was given; size and time bounded),
files under `<data dir>/bulk-import/` (a relative path or a file: URL; nothing outside
that folder, symbolic links included), and objects of the deployment's S3 bucket
(`s3://<EHR_BULK_S3_URL's bucket>/key`). Any other scheme is refused at kick-off.

A remote source is first spooled to the node's data dir and then loaded like a local
file: no database transaction waits on the network, and a resumed input (another node,
after a crash) fetches it again and skips the lines already committed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from .export_s3 import S3Bucket

STORAGE_TYPES = frozenset({"https", "http", "file", "s3"})  # storageDetail.type values understood
_GZIP_MAGIC = b"\x1f\x8b"


class SourceError(Exception):
    """An input that cannot be read: the message says why, for the client."""


def import_root(data_dir: Path) -> Path:
    """The folder whose files $import may read."""
    return data_dir / "bulk-import"


def spool_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "bulk-import-spool" / job_id


def kind_of(url: str) -> str:
    """http | file | s3 for a url $import reads; SourceError for any other."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme == "s3":
        return "s3"
    if scheme in ("", "file"):
        return "file"
    raise SourceError(f"input url scheme '{scheme[:20]}:' is not read: give an http(s) URL, an s3:// URL or a file")


def local_path(data_dir: Path, url: str) -> Path:
    """The file a file url names, inside <data dir>/bulk-import/ (SourceError otherwise)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file" and parts.netloc not in ("", "localhost"):
        raise SourceError("a file: URL of another host is not read")
    raw = unquote(parts.path) if parts.scheme else url
    root = import_root(data_dir).resolve()
    path = (root / raw).resolve()  # an absolute raw stays absolute; '..' and symbolic links resolved
    if not path.is_relative_to(root):
        raise SourceError(f"input files are read from the server's bulk-import folder only ({root.name}/)")
    if not path.is_file():
        raise SourceError(f"no input file '{raw[:200]}' in the bulk-import folder")
    return path


def check(url: str, data_dir: Path, bucket: S3Bucket | None) -> None:
    """At kick-off: SourceError for a url the worker could never read."""
    kind = kind_of(url)
    if kind == "http" and not urlsplit(url).hostname:
        raise SourceError(f"input url '{url[:200]}' has no host")
    if kind == "file":
        local_path(data_dir, url)
    if kind == "s3":
        _s3_key(url, bucket)


def _s3_key(url: str, bucket: S3Bucket | None) -> str:
    if bucket is None:
        raise SourceError("s3:// inputs need EHR_BULK_S3_URL (the deployment's bucket)")
    parts = urlsplit(url)
    if parts.netloc != bucket.bucket or not parts.path.strip("/"):
        raise SourceError(f"s3:// inputs are read from the bucket {bucket.bucket} only, by key")
    return unquote(parts.path.lstrip("/"))


async def fetch(
    url: str, spool: Path, *, data_dir: Path, bucket: S3Bucket | None, max_bytes: int, seconds: float
) -> tuple[Path, bool]:
    """The input as a local file, and whether it is a spooled copy (to remove after). A
    copy is named .ndjson.gz when its bytes are gzip (the importer decompresses it)."""
    kind = kind_of(url)
    if kind == "file":
        return local_path(data_dir, url), False
    spool.parent.mkdir(parents=True, exist_ok=True)
    partial = spool.with_name(spool.name + ".part")
    try:
        if kind == "http":
            await asyncio.wait_for(_download(url, partial, max_bytes), seconds)
        else:
            copy = asyncio.to_thread(_s3_download, bucket, _s3_key(url, bucket), partial, max_bytes)
            await asyncio.wait_for(copy, seconds)  # the thread runs on to its end; its result is dropped
    except TimeoutError:
        partial.unlink(missing_ok=True)
        raise SourceError(f"reading the input took longer than EHR_BULK_IMPORT_FETCH_SECONDS ({seconds:g} s)") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    gzipped = await asyncio.to_thread(_starts_with, partial, _GZIP_MAGIC)
    final = spool.with_name(spool.name + (".ndjson.gz" if gzipped else ".ndjson"))
    partial.replace(final)
    return final, True


async def _download(url: str, target: Path, max_bytes: int) -> None:
    timeout = httpx.Timeout(30.0, connect=10.0)  # per connect and read; the whole fetch is bounded by the caller
    try:
        async with (
            httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as http,
            http.stream("GET", url, headers={"Accept": "application/fhir+ndjson, application/ndjson, */*"}) as res,
        ):
            if res.is_redirect:
                where = res.headers.get("location", "")[:200]
                raise SourceError(f"the input url answered {res.status_code}, a redirect to '{where}': give that URL")
            if res.status_code != 200:
                raise SourceError(f"the input url answered HTTP {res.status_code}")
            size = 0
            out = await asyncio.to_thread(open, target, "wb")
            with out:
                async for chunk in res.aiter_bytes(1024 * 1024):  # decoded: Content-Encoding undone, bounded
                    size += len(chunk)
                    if size > max_bytes:
                        raise SourceError(f"the input is larger than EHR_BULK_IMPORT_MAX_BYTES ({max_bytes:,} bytes)")
                    await asyncio.to_thread(out.write, chunk)
    except httpx.HTTPError as exc:
        raise SourceError(f"the input url could not be read: {type(exc).__name__}: {str(exc)[:200]}") from None


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _s3_download(bucket: S3Bucket | None, key: str, target: Path, max_bytes: int) -> None:
    assert bucket is not None
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        head = bucket.client.head_object(Bucket=bucket.bucket, Key=key)
        if head["ContentLength"] > max_bytes:
            raise SourceError(f"the input is larger than EHR_BULK_IMPORT_MAX_BYTES ({max_bytes:,} bytes)")
        bucket.client.download_file(bucket.bucket, key, str(target))
    except (ClientError, BotoCoreError) as exc:
        raise SourceError(f"the s3 object '{key[:200]}' could not be read: {str(exc)[:200]}") from None
