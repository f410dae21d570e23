# Bootstrap the IAM-enforcing moto (hack/localenv.sh, service moto-iam).
# Run with the moto venv's python:
#   python moto-iam-bootstrap.py bootstrap ENDPOINT OUTFILE
#   python moto-iam-bootstrap.py check ENDPOINT KEYFILE
#
# moto-iam starts with INITIAL_NO_AUTH_ACTION_COUNT=3: moto lets the first
# three requests through without checking signature or permission
# (moto/core/authorization.py, ActionAuthenticatorMixin), and checks every
# request after them. The three are spent here, in this order, on an
# administrator the tests use to make users, roles and policies:
#   1. iam:CreateUser tenantry-iam-admin
#   2. iam:PutUserPolicy (inline: Allow * on *)
#   3. iam:CreateAccessKey
# Then it checks that enforcement is on: the new keys are accepted, keys moto
# does not know are refused. OUTFILE gets two lines: access key id, secret.
# `check` exits 0 only if the keys in KEYFILE still name the admin (moto keeps
# its state in memory: a restarted moto-iam has forgotten them).
import os
import sys

import boto3
from botocore.exceptions import ClientError

ADMIN = "tenantry-iam-admin"
ADMIN_POLICY = (
    '{"Version": "2012-10-17", "Statement": '
    '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
)


def client(service, endpoint, key_id, secret):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def is_admin(endpoint, key_id, secret):
    arn = client("sts", endpoint, key_id, secret).get_caller_identity()["Arn"]
    return arn.endswith(f":user/{ADMIN}")


def check(endpoint, keyfile):
    try:
        with open(keyfile) as f:
            key_id, secret = f.read().split()
        return is_admin(endpoint, key_id, secret)
    except (OSError, ValueError, ClientError):
        return False


def bootstrap(endpoint, outfile):
    # Any credentials: these three requests are not checked.
    iam = client("iam", endpoint, "bootstrap", "bootstrap")
    iam.create_user(UserName=ADMIN)
    iam.put_user_policy(UserName=ADMIN, PolicyName="admin", PolicyDocument=ADMIN_POLICY)
    key = iam.create_access_key(UserName=ADMIN)["AccessKey"]
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]

    if not is_admin(endpoint, key_id, secret):
        sys.exit(f"moto-iam: the new keys do not identify user/{ADMIN}")
    try:
        client("sts", endpoint, "testing", "testing").get_caller_identity()
    except ClientError as e:
        if e.response["Error"]["Code"] != "InvalidClientTokenId":
            raise
    else:
        sys.exit("moto-iam: unknown keys were accepted; IAM enforcement is not on")

    tmp = outfile + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key_id}\n{secret}\n")
    os.replace(tmp, outfile)


if __name__ == "__main__":
    mode, endpoint, path = sys.argv[1:4]
    if mode == "bootstrap":
        bootstrap(endpoint, path)
    elif mode == "check":
        sys.exit(0 if check(endpoint, path) else 1)
    else:
        sys.exit(f"unknown mode {mode!r}")
