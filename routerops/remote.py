"""A DVC remote on S3, read directly: the objects `dvc push` wrote, fetched by hash with boto3.

Lineage verification must not trust DVC's local cache, its index or its code, so it reads the
remote itself. DVC 3 stores every file at `<remote url>/files/md5/<first 2 hex>/<other 30>` and a
directory's JSON listing at the same place with a `.dir` suffix. The remote's URL comes from the
repository's `.dvc/config`, its endpoint and keys from `.dvc/config.local` (where
`infra/local/dvc_remote.py` puts them) or, for AWS, from the usual AWS environment.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from routerops.lineage import ObjectMissing, RemoteUnavailable

__all__ = ["DvcS3Remote", "RemoteConfig", "read_remote_config"]


@dataclass(frozen=True)
class RemoteConfig:
    name: str
    url: str  # s3://bucket/prefix
    endpoint_url: str | None
    access_key_id: str | None
    secret_access_key: str | None
    region: str | None


def _sections(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(path, encoding="utf-8")
    # DVC writes remote sections as ['remote "name"'] (configobj quoting).
    return {s[1:-1] if len(s) > 1 and s[0] == s[-1] == "'" else s: dict(cp[s]) for s in cp.sections()}


def read_remote_config(repo: Path, name: str | None = None) -> RemoteConfig:
    """The named (default: the core) remote of the repository, local settings over committed."""
    merged: dict[str, dict[str, str]] = {}
    for f in (repo / ".dvc" / "config", repo / ".dvc" / "config.local"):
        for section, values in _sections(f).items():
            merged.setdefault(section, {}).update(values)
    remote = name or merged.get("core", {}).get("remote")
    if not remote:
        raise RemoteUnavailable(f"{repo / '.dvc' / 'config'}: no default remote (core.remote); configure one "
                                "(docs/storage.md)")
    values = merged.get(f'remote "{remote}"') or {}
    if "url" not in values:
        raise RemoteUnavailable(f"{repo / '.dvc' / 'config'}: remote {remote!r} has no url")
    if not values["url"].startswith("s3://"):
        raise RemoteUnavailable(f"remote {remote!r} is {values['url']}: only S3 remotes are supported")
    return RemoteConfig(remote, values["url"].rstrip("/"), values.get("endpointurl"), values.get("access_key_id"),
                        values.get("secret_access_key"), values.get("region"))


class DvcS3Remote:
    """`lineage.ObjectSource` over a DVC S3 remote. One attempt per request and short connect
    timeouts: verification checks reachability first and must fail in seconds, not retry for
    minutes (botocore's default is 5 attempts per request)."""

    def __init__(self, config: RemoteConfig, *, connect_timeout_s: float = 2.0, read_timeout_s: float = 30.0) -> None:
        import boto3
        from botocore.config import Config

        self.config = config
        parsed = urlparse(config.url)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self._client: Any = boto3.client(
            "s3", endpoint_url=config.endpoint_url, aws_access_key_id=config.access_key_id or None,
            aws_secret_access_key=config.secret_access_key or None,
            region_name=config.region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(connect_timeout=connect_timeout_s, read_timeout=read_timeout_s,
                          retries={"max_attempts": 1, "mode": "standard"}))

    @property
    def where(self) -> str:
        return self.config.endpoint_url or "AWS S3"

    def key(self, md5: str) -> str:
        return f"{self.prefix}/files/md5/{md5[:2]}/{md5[2:]}".lstrip("/")

    def url(self, md5: str) -> str:
        return f"s3://{self.bucket}/{self.key(md5)}"

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise RemoteUnavailable(f"S3 remote {self.config.name!r} at {self.where}: bucket {self.bucket!r} "
                                    f"refused: {exc.response.get('Error', {}).get('Code', exc)}") from None
        except BotoCoreError as exc:
            raise RemoteUnavailable(f"S3 remote {self.config.name!r} at {self.where} is unreachable: {exc}") from None

    @contextmanager
    def _object(self, md5: str) -> Iterator[None]:
        """botocore's errors for one object as ours: absent, or the remote unreachable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise ObjectMissing(self.url(md5)) from None
            raise RemoteUnavailable(f"{self.url(md5)}: {exc}") from None
        except BotoCoreError as exc:
            raise RemoteUnavailable(f"S3 remote at {self.where}: {exc}") from None

    def download(self, md5: str, target: Path) -> None:
        with self._object(md5):
            self._client.download_file(self.bucket, self.key(md5), str(target))

    def get(self, md5: str) -> bytes:
        with self._object(md5):
            body: bytes = self._client.get_object(Bucket=self.bucket, Key=self.key(md5))["Body"].read()
        return body
