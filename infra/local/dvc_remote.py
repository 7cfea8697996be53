"""Point a DVC repository's default remote at the object store, keeping machine-specific settings
out of git.

The committed `.dvc/config` names the remote and its bucket URL only:

    [core]
        remote = storage
    ['remote "storage"']
        url = s3://routerops/dvc

Where this machine reaches that bucket (the endpoint) and how it signs requests (keys) goes to
`.dvc/config.local`, which DVC's own `.dvc/.gitignore` keeps out of git. The same committed
config therefore serves the loopback SeaweedFS store, a team MinIO, or AWS S3: only the local
file (or the AWS_* environment) differs. See docs/storage.md.

CLI: `python -m infra.local.dvc_remote configure [--repo PATH] [--endpoint URL | --aws]`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.s3 import DEFAULT_BUCKET, DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3, LocalS3Error, ServerState

__all__ = [
    "LOCAL_ONLY_KEYS",
    "REMOTE_NAME",
    "REMOTE_URL",
    "ConfiguredRemote",
    "DvcRemoteError",
    "configure_remote",
]

REMOTE_NAME = "storage"
REMOTE_URL = f"s3://{DEFAULT_BUCKET}/dvc"
# Settings that describe this machine rather than the project: never in the committed config.
LOCAL_ONLY_KEYS = ("endpointurl", "access_key_id", "secret_access_key", "session_token")


class DvcRemoteError(RuntimeError):
    pass


@dataclass(frozen=True)
class ConfiguredRemote:
    name: str
    url: str
    endpoint_url: str | None
    committed_config: Path
    local_config: Path
    # Local-only keys that were found in the committed config and removed from it.
    removed_from_committed: tuple[str, ...]


def configure_remote(
    repo: Path | str,
    *,
    endpoint_url: str | None,
    access_key_id: str | None = DEV_ACCESS_KEY,
    secret_access_key: str | None = DEV_SECRET_KEY,
    name: str = REMOTE_NAME,
    url: str = REMOTE_URL,
    make_default: bool = True,
) -> ConfiguredRemote:
    """Make `name` (default `storage`, at `url`) the repository's default DVC remote.

    `endpoint_url=None` means real AWS S3 (no custom endpoint); `access_key_id=None` means keys
    come from the AWS credential chain (environment, `~/.aws`, an IAM role). Both are written to
    `.dvc/config.local` only; any of them found in the committed `.dvc/config` are removed from
    it. Idempotent, and it works on any DVC repository (tests use temporary ones).
    """
    from dvc.config import Config, ConfigError

    root = Path(repo).resolve()
    dvc_dir = root / ".dvc"
    if not dvc_dir.is_dir():
        raise DvcRemoteError(f"{root} is not a DVC repository (no .dvc/); run `dvc init` there first")
    if (access_key_id is None) != (secret_access_key is None):
        raise DvcRemoteError("give both access_key_id and secret_access_key, or neither")
    if not url.startswith("s3://"):
        raise DvcRemoteError(f"remote URL must be s3://BUCKET/PREFIX, got {url!r}")

    try:
        config = Config(dvc_dir=str(dvc_dir))
        with config.edit("repo") as committed:
            remote: dict[str, Any] = committed["remote"].setdefault(name, {})
            removed = tuple(key for key in LOCAL_ONLY_KEYS if remote.pop(key, None) is not None)
            remote["url"] = url
            if make_default:
                committed.setdefault("core", {})["remote"] = name
        with config.edit("local") as local:
            remote = local["remote"].setdefault(name, {})
            for key in LOCAL_ONLY_KEYS:
                remote.pop(key, None)
            if endpoint_url is not None:
                remote["endpointurl"] = endpoint_url
            if access_key_id is not None and secret_access_key is not None:
                remote["access_key_id"] = access_key_id
                remote["secret_access_key"] = secret_access_key
            if not remote:
                del local["remote"][name]
    except ConfigError as exc:
        raise DvcRemoteError(f"DVC rejected the configuration in {dvc_dir}: {exc}") from exc
    return ConfiguredRemote(name, url, endpoint_url, dvc_dir / "config", dvc_dir / "config.local", removed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.dvc_remote",
        description="Make the S3 bucket the DVC default remote; endpoint and keys go to .dvc/config.local.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("configure", help="configure the default remote")
    cfg.add_argument("--repo", default=".", help="DVC repository root (default: current directory)")
    cfg.add_argument("--name", default=REMOTE_NAME, help="remote name (default: %(default)s)")
    cfg.add_argument("--url", default=REMOTE_URL, help="remote URL (default: %(default)s)")
    target = cfg.add_mutually_exclusive_group()
    target.add_argument("--endpoint", default=None,
                        help="S3 endpoint URL (default: the local store's: its running or recorded ports)")
    target.add_argument("--aws", action="store_true",
                        help="real AWS S3: no endpoint and no keys in config.local (AWS credential chain)")
    cfg.add_argument("--data-dir", default=None, help="local store data dir to read the endpoint from")
    args = parser.parse_args(argv)

    if args.aws:
        endpoint, key, secret = None, None, None
    else:
        store = LocalS3(data_dir=Path(args.data_dir)) if args.data_dir else LocalS3()
        key, secret = store.access_key, store.secret_key
        endpoint = args.endpoint
        if endpoint is None:
            try:
                # The running store's ports, or (never started, or stopped) the ones its next start
                # will use, recorded now so that start keeps them.
                store.assign_ports()
            except LocalS3Error as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            status = store.status()
            endpoint = status.endpoint_url
            if status.state is not ServerState.RUNNING:
                where = f" --data-dir {shlex.quote(str(store.data_dir))}" if args.data_dir else ""
                print(f"note: the local store is {status.state.value}; using the endpoint its next start will serve, "
                      f"{endpoint} (ports recorded in {store.ports_file}). "
                      f"Start it with `python -m infra.local.s3 start{where}`.", file=sys.stderr)
    try:
        done = configure_remote(args.repo, endpoint_url=endpoint, access_key_id=key, secret_access_key=secret,
                                name=args.name, url=args.url)
    except DvcRemoteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"default DVC remote '{done.name}' = {done.url} (in {done.committed_config})")
    print(f"endpoint: {done.endpoint_url or 'AWS S3 default'}; credentials: "
          f"{'local dev keys' if key else 'AWS credential chain'} (in {done.local_config}, git-ignored)")
    if done.removed_from_committed:
        print(f"warning: removed {', '.join(done.removed_from_committed)} from {done.committed_config}; "
              f"if it was ever committed, rotate those credentials", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
