"""An S3-compatible bucket for $export files (EHR_BULK_S3_URL=s3://bucket/prefix).

Parts are still written to the data dir while they grow (a resumed job cuts the current
part back to its committed length); a part that is complete is uploaded before the
progress commit that records it, then deleted locally, so a node holds at most one part
per running job. The manifest then names pre-signed GET URLs, valid until the job
expires (at most 7 days, SigV4's limit), and says `requiresAccessToken: false`.
Credentials, region and endpoint come from boto3's usual sources (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL_S3 for MinIO and the like). Every
call here blocks: callers run them in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

MAX_URL_SECONDS = 7 * 24 * 3600  # the longest a SigV4 pre-signed URL may be valid
NDJSON = "application/fhir+ndjson"


class S3Bucket:
    """Where a deployment's export files go: a bucket and a key prefix."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or len(parts.netloc) < 3:
            raise ValueError(f"EHR_BULK_S3_URL must be s3://bucket[/prefix], not '{url[:200]}'")
        self.bucket = parts.netloc
        prefix = parts.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # only deployments that set EHR_BULK_S3_URL load it
            from botocore.config import Config

            custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            # an S3-compatible server of one's own (MinIO…) is addressed by path, not by bucket host name
            config = Config(s3={"addressing_style": "path"} if custom else {})
            self._client = boto3.client("s3", config=config)
        return self._client

    def key(self, job_id: str, name: str) -> str:
        return f"{self.prefix}{job_id}/{name}"

    def upload(self, path: Path, job_id: str, name: str) -> None:
        """Store a complete part (multipart for large ones); overwriting it again is harmless."""
        self.client.upload_file(str(path), self.bucket, self.key(job_id, name), ExtraArgs={"ContentType": NDJSON})

    def url(self, job_id: str, name: str, seconds: float) -> str:
        """A pre-signed GET URL of a part, valid for seconds (at most 7 days)."""
        valid = int(min(max(seconds, 60), MAX_URL_SECONDS))
        params = {"Bucket": self.bucket, "Key": self.key(job_id, name)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=valid)

    def remove(self, job_id: str) -> None:
        """Delete every object of a job (none is fine)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key(job_id, ""))
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
