#!/usr/bin/env python3
"""A bank calling the civil registry through govbridge, with grpcio.

CBAO's KYC desk (member SN/COM/CBAO/kyc) checks the identity a customer
presents at the counter: VerifyIdentity at the civil registry, over mutual
TLS with the bank's member certificate, declaring its purpose, the agent
acting and why. It prints the answer, the gateway's response headers and
trailers (bridge-request-id, bridge-audit-index), or, when the call is
refused, the status, its message and the gateway's bridge-error.

The Python stubs are generated from the repository's proto/ into a
temporary directory at every run (grpcio-tools), so nothing generated is
kept. Exit status: 0 when the call succeeded, 1 when it failed, 2 on bad
usage or missing files.
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
SERVICE_PROTO = "govbridge/civilregistry/v1/civil_registry.proto"
# Imported by the service's proto: its module must exist for the stubs to load.
OPTIONS_PROTO = "govbridge/options/v1/options.proto"
# Imported too: the HTTP routes of JSON calls (google.api.http).
HTTP_PROTOS = ("google/api/http.proto", "google/api/annotations.proto")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Verify a citizen's identity at the civil registry, "
        "through govbridge, as CBAO's KYC desk."
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
    parser.add_argument(
        "--server-name",
        default="localhost",
        help="the name in the gateway's certificate (default: %(default)s)",
    )
    parser.add_argument("--nin", required=True, help="the citizen's NIN, 13 digits")
    parser.add_argument(
        "--first-names", required=True, help="given names as presented"
    )
    parser.add_argument("--last-name", required=True, help="family name as presented")
    parser.add_argument(
        "--date-of-birth", required=True, help="date of birth as presented, YYYY-MM-DD"
    )
    parser.add_argument(
        "--purpose",
        default="KYC",
        help="bridge-purpose: a purpose registered at the gateway (default: %(default)s)",
    )
    parser.add_argument(
        "--user-id",
        default="agent-17",
        help="bridge-user-id: the agent acting at the bank (default: %(default)s)",
    )
    parser.add_argument(
        "--reason",
        default="account opening 2025-0042",
        help="bridge-reason: why the bank asks (default: %(default)s)",
    )
    parser.add_argument(
        "--consent",
        help="bridge-consent: the citizen's consent artefact from MyGov, "
        "where a policy asks for one",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="the call's deadline in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--proto-root",
        default=DEFAULT_PROTO_ROOT,
        help="the repository's proto/ directory (default: %(default)s)",
    )
    return parser.parse_args(argv)


def fail(message):
    print(f"verify_identity: {message}", file=sys.stderr)
    sys.exit(2)


def load_stubs(proto_root, out_dir):
    """Generates the messages and the client stub, and imports them."""
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for proto in (*HTTP_PROTOS, OPTIONS_PROTO, SERVICE_PROTO):
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={proto_root}",
                f"--proto_path={well_known}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                proto,
            ]
        )
        if status != 0:
            fail(f"protoc failed on {os.path.join(proto_root, proto)}")
    sys.path.insert(0, out_dir)
    messages = importlib.import_module("govbridge.civilregistry.v1.civil_registry_pb2")
    services = importlib.import_module(
        "govbridge.civilregistry.v1.civil_registry_pb2_grpc"
    )
    return messages, services


def read(path):
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")


def channel_to(args):
    """A mutual-TLS channel: trust the dev CA, present the member certificate."""
    pki = os.path.join(args.dev_dir, "pki")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(os.path.join(pki, "ca.pem")),
        private_key=read(os.path.join(pki, f"member-{args.member}.key")),
        certificate_chain=read(os.path.join(pki, f"member-{args.member}.pem")),
    )
    # Check the gateway's certificate for `localhost`, the name it carries,
    # whatever address is dialled (an IP address, a tunnel, a container name).
    options = [("grpc.ssl_target_name_override", args.server_name)]
    return grpc.secure_channel(args.gateway, credentials, options=options)


def declared_metadata(args):
    """What the dev policies ask of every call: purpose, agent and reason."""
    metadata = [
        ("bridge-purpose", args.purpose),
        ("bridge-user-id", args.user_id),
        ("bridge-reason", args.reason),
    ]
    if args.consent:
        metadata.append(("bridge-consent", args.consent))
    return metadata


def print_metadata(title, metadata):
    print(f"{title}:")
    for key, value in metadata or ():
        print(f"  {key}: {value}")


def main(argv):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="govbridge-stubs-") as stubs:
        messages, services = load_stubs(args.proto_root, stubs)
        request = messages.VerifyIdentityRequest(
            nin=args.nin,
            first_names=args.first_names,
            last_name=args.last_name,
            date_of_birth=args.date_of_birth,
        )
        with channel_to(args) as channel:
            registry = services.CivilRegistryStub(channel)
            try:
                answer, call = registry.VerifyIdentity.with_call(
                    request, metadata=declared_metadata(args), timeout=args.timeout
                )
            except grpc.RpcError as error:
                print(f"status: {error.code().name}")
                print(f"message: {error.details()}")
                trailers = error.trailing_metadata() or ()
                bridge_error = dict(trailers).get("bridge-error")
                # Set when the gateway refused or failed the call; without it
                # the status is the agency's own, or no connection was made.
                print(f"bridge-error: {bridge_error or '(none)'}")
                print_metadata("response headers", error.initial_metadata())
                print_metadata("trailers", trailers)
                return 1
            print("status: OK")
            print(f"result: {messages.VerificationResult.Name(answer.result)}")
            print(f"  first_names_match: {answer.first_names_match}")
            print(f"  last_name_match: {answer.last_name_match}")
            print(f"  date_of_birth_match: {answer.date_of_birth_match}")
            print_metadata("response headers", call.initial_metadata())
            print_metadata("trailers", call.trailing_metadata())
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
