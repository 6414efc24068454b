"""The origin's storage setting and its S3 credentials, parsed (no store needed).

``--storage`` is ``file://DIR`` or ``s3://BUCKET[/PREFIX][?endpoint=...&region=...]``;
credentials come from the config's ``s3_credentials`` file, then the AWS environment, then the
default shared credentials file, each failure saying what to set.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from yarl import URL

from krill.config import ConfigError
from krill.origin.config import OriginConfig
from krill.origin.storage_url import parse_storage_url, s3_credentials
from krill.s3backend import S3Location


def test_s3_url_with_endpoint_and_region_in_the_query() -> None:
    location = parse_storage_url(
        "s3://layers/krill/origin?endpoint=http://10.0.0.5:8333&region=eu-1"
    )
    assert location == S3Location(URL("http://10.0.0.5:8333/"), "layers", "krill/origin", "eu-1")


def test_s3_url_takes_the_settings_and_defaults_to_aws() -> None:
    assert parse_storage_url("s3://b", "http://h:9000", None) == S3Location(
        URL("http://h:9000/"), "b", "", "us-east-1"
    )
    aws = parse_storage_url("s3://b/p/", None, "eu-west-1")
    assert isinstance(aws, S3Location)
    assert (aws.endpoint, aws.prefix) == (URL("https://s3.eu-west-1.amazonaws.com/"), "p")


def test_file_url_sets_the_data_directory(tmp_path: Path) -> None:
    config = OriginConfig(storage=f"file://{tmp_path}/store")
    assert config.data == tmp_path / "store"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("gs://bucket", "file://DIR or s3://BUCKET"),
        ("s3:///prefix", "names no bucket"),
        ("s3://AKID:secret@bucket", "must not carry credentials"),
        ("s3://b?endpoint=ftp://h", "http:// or https://"),
        ("file://", "names no directory"),
        ("s3://b?endpoint=http://minio:abc", "has no usable port"),  # was a traceback
        ("s3://[b", "is not a URL (Invalid IPv6 URL)"),
    ],
)
def test_bad_storage_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        OriginConfig(storage=url)


def test_credentials_file_then_environment_then_default_file(tmp_path: Path) -> None:
    explicit = tmp_path / "explicit"
    explicit.write_text("[default]\naws_access_key_id = FILE\naws_secret_access_key = s1\n")
    default = tmp_path / "default"
    default.write_text("[ci]\naws_access_key_id = DEFAULT\naws_secret_access_key = s2\n")
    env = {
        "AWS_ACCESS_KEY_ID": "ENV",
        "AWS_SECRET_ACCESS_KEY": "s3",
        "AWS_SESSION_TOKEN": "tok",
        "AWS_SHARED_CREDENTIALS_FILE": str(default),
        "AWS_PROFILE": "ci",
    }
    with pytest.raises(ConfigError, match=r"no \[ci\] section"):
        s3_credentials(explicit, env)
    assert s3_credentials(explicit, {}).access_key == "FILE"
    from_env = s3_credentials(None, env)
    assert (from_env.access_key, from_env.session_token) == ("ENV", "tok")
    assert s3_credentials(None, {**env, "AWS_ACCESS_KEY_ID": ""}).access_key == "DEFAULT"


def test_no_credentials_says_where_it_looked(tmp_path: Path) -> None:
    nowhere = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent")}
    with pytest.raises(ConfigError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3_credentials(None, nowhere)
