"""SigV4 against AWS's published examples (no network).

Vectors: the S3 API reference's "GET Object" example (Authenticating Requests:
Using the Authorization Header, with its intermediate canonical request and
string to sign), and ``get-vanilla`` from the Signature Version 4 test suite.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

from krill.s3sign import (
    EMPTY_SHA256,
    Credentials,
    canonical_path,
    canonical_query,
    canonical_request,
    sign_request,
    signing_key,
    string_to_sign,
)

S3_EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
SUITE_EXAMPLE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


def test_s3_get_object_example_canonical_request() -> None:
    canonical, signed = canonical_request(
        "GET",
        "/test.txt",
        {},
        {
            "Host": "examplebucket.s3.amazonaws.com",
            "Range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": "20130524T000000Z",
        },
        EMPTY_SHA256,
    )
    assert signed == "host;range;x-amz-content-sha256;x-amz-date"
    to_sign = string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", canonical)
    assert to_sign.splitlines()[-1] == (
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )


def test_s3_get_object_example_signature() -> None:
    signed = sign_request(
        S3_EXAMPLE,
        method="GET",
        host="examplebucket.s3.amazonaws.com",
        path="/test.txt",
        headers={"Range": "bytes=0-9"},
        now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC),
    )
    assert signed.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    assert signed.headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bd"
    )
    assert "host" not in signed.headers  # aiohttp sends Host from the URL


def test_suite_get_vanilla() -> None:
    canonical, _ = canonical_request(
        "GET",
        "/",
        {},
        {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"},
        EMPTY_SHA256,
    )
    to_sign = string_to_sign(
        "20150830T123600Z", "20150830/us-east-1/service/aws4_request", canonical
    )
    key = signing_key(SUITE_EXAMPLE.secret_key, "20150830", "us-east-1", "service")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    assert signature == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"


def test_query_is_sorted_and_encoded() -> None:
    assert canonical_query({"uploadId": "a/b c", "partNumber": "2"}) == (
        "partNumber=2&uploadId=a%2Fb%20c"
    )
    assert canonical_query({"uploads": ""}) == "uploads="


def test_path_keeps_slashes_and_encodes_the_rest() -> None:
    assert canonical_path("/bucket/blobs/sha256:ab cd") == "/bucket/blobs/sha256%3Aab%20cd"


def test_secret_never_in_repr() -> None:
    creds = Credentials("AKID", "very-secret", "token-secret")
    assert "very-secret" not in repr(creds) and "token-secret" not in repr(creds)


def test_session_token_is_signed() -> None:
    signed = sign_request(
        Credentials("AKID", "secret", "token"),
        method="GET",
        host="h",
        path="/b/k",
        now=dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    )
    assert signed.headers["x-amz-security-token"] == "token"
    assert "x-amz-security-token" in signed.headers["Authorization"]
