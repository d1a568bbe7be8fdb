"""A real S3-compatible server for the object-storage tests: moto's standalone server on 127.0.0.1, one per
test session, with one bucket, and a fresh study URI per test.

Registered as a pytest plugin by tests/conftest.py. Its credentials are put in the environment when this
module is imported, at the start of the session, not when the server starts: the two-node cluster
(tests/cluster_holder.py) may be started by an earlier test, and its nodes' worker processes, where Tune's
trials write their checkpoints, inherit the environment the holder was started with. The values are moto's
fakes ("testing"), and `setdefault` leaves real ones alone."""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

MOTO_MINIMUM = (5, 2, 5)  # older moto answers multipart uploads in a form pyarrow's S3 client rejects
BUCKET = "supcon-tests"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # No instance-metadata lookups: the credentials above are all there is (a lookup waits on a timeout).
    "AWS_EC2_METADATA_DISABLED": "true",
}
for _key, _value in CREDENTIALS.items():
    os.environ.setdefault(_key, _value)


@dataclass(frozen=True)
class S3Server:
    """The session's server: its `endpoint` (127.0.0.1:PORT), its `bucket`, and `client` (boto3)."""

    endpoint: str
    bucket: str
    client: object

    @property
    def query(self) -> str:
        """The URI query pyarrow (and so Ray) needs to reach this server."""
        return f"endpoint_override={self.endpoint}&scheme=http"

    def uri(self, prefix: str) -> str:
        """`s3://BUCKET/PREFIX?endpoint_override=...&scheme=http`."""
        return f"s3://{self.bucket}/{prefix.strip('/')}?{self.query}"

    def keys(self, prefix: str) -> list[str]:
        """Every object key under `prefix` (boto3, not the code under test), sorted."""
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix.strip("/") + "/"):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return sorted(keys)

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port for the whole session, with the bucket `BUCKET` created
    through boto3 (moto's server refuses pyarrow's bucket creation). A missing or too old moto is a skip."""
    moto = pytest.importorskip("moto")
    if _version(moto.__version__) < MOTO_MINIMUM:
        pytest.skip(f"moto {moto.__version__} is older than {'.'.join(map(str, MOTO_MINIMUM))} (pyproject's test "
                    "extra): its multipart responses break pyarrow")
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"{host}:{port}"
        client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                              aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        yield S3Server(endpoint=endpoint, bucket=BUCKET, client=client)
    finally:
        server.stop()


@pytest.fixture
def s3_study_root(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh `--storage` URI in the bucket for this test: `s3://BUCKET/<test name>?endpoint_override=...`."""
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    assert not s3_server.keys(prefix), f"{prefix} is not fresh in the bucket"
    return s3_server.uri(urllib.parse.quote(prefix))
