#!/usr/bin/env python3
"""A bank without gRPC calling the civil registry through govbridge, with
requests: JSON over HTTPS.

CBAO's KYC desk (member SN/COM/CBAO/kyc) checks the identity a customer
presents at the counter: POST /v1/persons/{nin}:verify-identity, over mutual
TLS with the bank's member certificate, declaring its purpose, the agent
acting and why, exactly as a gRPC client would. The gateway turns the call
into the civil registry's VerifyIdentity method, under the same policies and
exchange log. It prints the answer and the gateway's headers
(bridge-request-id, bridge-audit-index), or, when the call is refused, the
status, its message and the gateway's bridge-error.

Exit status: 0 when the call succeeded, 1 when it failed, 2 on bad usage or
missing files.
"""

import argparse
import os
import sys
import uuid

import requests


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Verify a citizen's identity at the civil registry, "
        "through govbridge, as CBAO's KYC desk, in JSON."
    )
    parser.add_argument(
        "--gateway",
        default="127.0.0.1:8443",
        help="the gateway's HOST:PORT (default: %(default)s, as `govbridge dev`)",
    )
    parser.add_argument(
        "--dev-dir",
        default="dev",
        help="the directory of `govbridge dev --dir` or `govbridge demo --dir`; "
        "certificates are read from DIR/pki (default: %(default)s)",
    )
    parser.add_argument(
        "--member",
        default="cbao-kyc",
        help="the demo member certificate DIR/pki/member-NAME.pem/.key "
        "(default: %(default)s)",
    )
    parser.add_argument("--nin", required=True, help="the citizen's NIN, 13 digits")
    parser.add_argument("--first-names", required=True)
    parser.add_argument("--last-name", required=True)
    parser.add_argument("--date-of-birth", required=True, help="YYYY-MM-DD")
    parser.add_argument(
        "--purpose", default="KYC", help="bridge-purpose (default: %(default)s)"
    )
    parser.add_argument(
        "--reason",
        default="account opening, branch Dakar-Plateau",
        help="bridge-reason (default: %(default)s)",
    )
    parser.add_argument(
        "--user-id", default="agent-0042", help="bridge-user-id (default: %(default)s)"
    )
    return parser.parse_args(argv)


def fail(message):
    print(f"verify_identity_json: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    args = parse_args(argv)
    pki = os.path.join(args.dev_dir, "pki")
    ca = os.path.join(pki, "ca.pem")
    certificate = os.path.join(pki, f"member-{args.member}.pem")
    key = os.path.join(pki, f"member-{args.member}.key")
    for path in (ca, certificate, key):
        if not os.path.exists(path):
            fail(f"{path} is missing: run `govbridge dev --dir {args.dev_dir}` first")

    response = requests.post(
        f"https://{args.gateway}/v1/persons/{args.nin}:verify-identity",
        json={
            "firstNames": args.first_names,
            "lastName": args.last_name,
            "dateOfBirth": args.date_of_birth,
        },
        headers={
            "bridge-purpose": args.purpose,
            "bridge-reason": args.reason,
            "bridge-user-id": args.user_id,
            "bridge-request-id": str(uuid.uuid4()),
        },
        cert=(certificate, key),
        verify=ca,
        timeout=10,
    )
    for name in ("bridge-request-id", "bridge-audit-index"):
        if name in response.headers:
            print(f"{name}: {response.headers[name]}")
    body = response.json()
    if response.ok:
        print("status: OK")
        print(f"result: {body['result']}")
        return 0
    print(f"http-status: {response.status_code}")
    print(f"status: {body['status']}")
    print(f"message: {body['message']}")
    if body.get("bridge_error"):
        print(f"bridge-error: {body['bridge_error']}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
