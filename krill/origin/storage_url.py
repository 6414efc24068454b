"""The origin's ``storage`` setting: ``file://DIR`` or ``s3://BUCKET[/PREFIX]``, and S3 credentials.

Kept apart from ``origin.storage`` (which wires the app) so ``origin.config``
can check the URL when the settings load, without importing the app's keys.

``s3://BUCKET/PREFIX`` takes its endpoint and region from the URL's query
(``?endpoint=http://127.0.0.1:8333&region=us-east-1``) or from the
``s3_endpoint`` / ``s3_region`` settings (the query wins); with neither
endpoint, AWS's own for the region. Credentials (``s3_credentials``) are
looked for in this order, and never logged:

1. the ``s3_credentials`` file, if set: an AWS shared credentials file
   (INI; the ``AWS_PROFILE`` section, else ``[default]``);
2. ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``);
3. ``AWS_SHARED_CREDENTIALS_FILE``, else ``~/.aws/credentials``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from yarl import URL

from krill.config import ConfigError, check_http_url
from krill.s3backend import S3Location
from krill.s3sign import Credentials

__all__ = ["parse_storage_url", "s3_credentials"]

DEFAULT_REGION = "us-east-1"


def parse_storage_url(
    url: str | None, endpoint: str | None = None, region: str | None = None
) -> Path | S3Location | None:
    """None (the data directory), a directory, or an S3 location; ConfigError saying why not."""
    if not url:
        return None
    try:
        parsed = URL(url)
    except ValueError as exc:  # yarl's: an unclosed [IPv6], a port that is no number
        raise ConfigError(f"storage {url!r} is not a URL ({exc})") from None
    if parsed.scheme == "file":
        if not parsed.path or parsed.path == "/":
            raise ConfigError(f"storage {url!r} names no directory; use file:///path/to/dir")
        return Path(parsed.path)
    if parsed.scheme != "s3":
        raise ConfigError(f"storage must be file://DIR or s3://BUCKET[/PREFIX], got {url!r}")
    if parsed.user or parsed.password:
        raise ConfigError(
            "storage URL must not carry credentials (they would show in logs); "
            "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or s3_credentials instead"
        )
    bucket = parsed.raw_host or ""
    if not bucket:
        raise ConfigError(f"storage {url!r} names no bucket; use s3://BUCKET[/PREFIX]")
    region = parsed.query.get("region") or region or DEFAULT_REGION
    return S3Location(
        _endpoint(parsed.query.get("endpoint") or endpoint, region),
        bucket,
        parsed.path.strip("/"),
        region,
    )


def _endpoint(text: str | None, region: str) -> URL:
    if text is None:
        return URL(f"https://s3.{region}.amazonaws.com")
    endpoint = URL(check_http_url(text, "s3_endpoint"))
    if endpoint.scheme not in ("http", "https") or not endpoint.host:
        raise ConfigError(f"s3_endpoint must be an http:// or https:// URL, got {text!r}")
    return endpoint.with_path("/")


def s3_credentials(
    credentials_file: Path | None, environ: Mapping[str, str] = os.environ
) -> Credentials:
    """The access key pair, from the file, the environment or the default file (see above)."""
    profile = environ.get("AWS_PROFILE", "default")
    if credentials_file is not None:
        return _from_file(credentials_file, profile)
    access_key = environ.get("AWS_ACCESS_KEY_ID")
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return Credentials(access_key, secret_key, environ.get("AWS_SESSION_TOKEN") or None)
    default = environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(Path.home() / ".aws/credentials")
    if Path(default).is_file():
        return _from_file(Path(default), profile)
    raise ConfigError(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or s3_credentials "
        f"to an AWS credentials file (nothing at {default} either)"
    )


def _from_file(path: Path, profile: str) -> Credentials:
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read S3 credentials file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"S3 credentials file {path} is not an INI file: {exc}") from None
    if not parser.has_section(profile):
        raise ConfigError(f"S3 credentials file {path} has no [{profile}] section")
    section = parser[profile]
    access_key = section.get("aws_access_key_id")
    secret_key = section.get("aws_secret_access_key")
    if not access_key or not secret_key:
        raise ConfigError(
            f"[{profile}] in {path} needs aws_access_key_id and aws_secret_access_key"
        )
    return Credentials(access_key, secret_key, section.get("aws_session_token") or None)
