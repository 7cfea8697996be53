"""Loopback-only infrastructure for development and tests.

`s3` runs a real S3-compatible object store (SeaweedFS) for DVC; `dvc_remote` points a DVC
repository at it. See docs/storage.md.
"""
