"""A real S3 server on loopback for the tests: moto's server mode (``moto[server]``), started once per session.

The test process and every worker it starts reach it through the standard AWS environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), exactly as they would reach AWS or MinIO; saekit itself is
given nothing but ``s3://`` URLs.
"""

import os

SECRET = "saekit-test-secret-key-4f1c"  # a secret that must never appear in a spec, a registry row or a log


def start():
    """Start the server, point the AWS environment at it; returns ``(server, previous environment)``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a log record per request (pytest captures them)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    values = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "saekit-test",
              "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return server, previous


def stop(server, previous) -> None:
    server.stop()
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
