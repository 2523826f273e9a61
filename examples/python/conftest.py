"""A pytest fixture for integration tests against govbridge, in Python.

The `sandbox` fixture starts `govbridge sandbox` once per test session: the
real gateway with the dev policies, every mock agency and a fresh PKI, on
ports the system picks. It reads the JSON manifest the sandbox writes (the
gateway's address, the CA, each demo member's certificate and key, the
known test data by role) and hands tests a `Sandbox` object:

    def test_a_known_adult_is_verified(sandbox):
        registry = sandbox.stub("civilregistry", "CivilRegistry", "SN/COM/CBAO/kyc")
        adult = sandbox.test_data["adult_with_account"]
        answer = registry.VerifyIdentity(
            sandbox.messages("civilregistry").VerifyIdentityRequest(
                nin=adult["nin"], first_names=adult["first_names"],
                last_name=adult["last_name"], date_of_birth=adult["date_of_birth"]),
            metadata=sandbox.declared("KYC"))

Which `govbridge` binary: the GOVBRIDGE environment variable, else
`target/debug/govbridge` of this repository (`cargo build` first). The
stubs are generated from the repository's proto/ with grpcio-tools into a
temporary directory: nothing generated is kept.
"""

import importlib
import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.normpath(os.path.join(HERE, "..", ".."))
PROTO_ROOT = os.path.join(REPOSITORY, "proto")
# package -> proto file, for every service a test may call.
PROTOS = {
    "civilregistry": "govbridge/civilregistry/v1/civil_registry.proto",
    "tax": "govbridge/tax/v1/tax.proto",
    "business": "govbridge/business/v1/business.proto",
    "bank": "govbridge/bank/v1/bank.proto",
    "consent": "govbridge/consent/v1/consent.proto",
}
OPTIONS_PROTO = "govbridge/options/v1/options.proto"
# Imported too: the HTTP routes of JSON calls (google.api.http).
HTTP_PROTOS = ("google/api/http.proto", "google/api/annotations.proto")


def govbridge_binary():
    binary = os.environ.get("GOVBRIDGE") or os.path.join(
        REPOSITORY, "target", "debug", "govbridge"
    )
    if not os.path.exists(binary):
        pytest.exit(
            f"no govbridge binary at {binary}: run `cargo build` or set GOVBRIDGE",
            returncode=2,
        )
    return binary


def generate_stubs(out_dir):
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    for proto in (*HTTP_PROTOS, OPTIONS_PROTO, *PROTOS.values()):
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--proto_path={well_known}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                proto,
            ]
        )
        if status != 0:
            pytest.exit(f"protoc failed on {proto}", returncode=2)
    sys.path.insert(0, out_dir)


class Sandbox:
    """A running `govbridge sandbox`, as its manifest describes it."""

    def __init__(self, manifest):
        self.manifest = manifest
        self.address = manifest["gateway"]["address"]
        self.test_data = manifest["test_data"]
        self.members = manifest["members"]
        self.fault_header = manifest["faults"]["header"]
        with open(manifest["gateway"]["ca_certificate"], "rb") as file:
            self._ca = file.read()
        self._channels = {}

    def channel(self, member):
        """A mutual-TLS channel to the gateway with `member`'s certificate."""
        if member not in self._channels:
            files = self.members[member]
            with open(files["private_key"], "rb") as key, open(
                files["certificate"], "rb"
            ) as certificate:
                credentials = grpc.ssl_channel_credentials(
                    root_certificates=self._ca,
                    private_key=key.read(),
                    certificate_chain=certificate.read(),
                )
            # The gateway's certificate names `server_name`, not the address.
            options = [
                (
                    "grpc.ssl_target_name_override",
                    self.manifest["gateway"]["server_name"],
                )
            ]
            self._channels[member] = grpc.secure_channel(
                self.address, credentials, options=options
            )
        return self._channels[member]

    @staticmethod
    def messages(package):
        """The generated messages of `package` (`civilregistry`, `tax`...)."""
        module = PROTOS[package].removesuffix(".proto").replace("/", ".")
        return importlib.import_module(f"{module}_pb2")

    def stub(self, package, service, member):
        """A client of `service` in `package`, calling as `member`."""
        module = PROTOS[package].removesuffix(".proto").replace("/", ".")
        services = importlib.import_module(f"{module}_pb2_grpc")
        return getattr(services, f"{service}Stub")(self.channel(member))

    @staticmethod
    def declared(purpose, *extra):
        """The headers the dev policies ask of calls to personal data."""
        return (
            ("bridge-purpose", purpose),
            ("bridge-user-id", "pytest-agent"),
            ("bridge-reason", "integration test"),
            *extra,
        )

    def close(self):
        for channel in self._channels.values():
            channel.close()


# How long the sandbox may take to start (a debug build makes its dataset
# and keys in a few seconds).
START_TIMEOUT = 60


def wait_until_ready(process):
    """Waits for the sandbox's `sandbox ready:` line; False if it exited or
    timed out first. Its output is read on a thread so that a sandbox that
    hangs cannot hang the test session."""
    ready = threading.Event()

    def read():
        for line in process.stdout:
            if line.startswith("sandbox ready: "):
                ready.set()
        # Drained to the end, so that the sandbox never blocks on a full pipe.

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.05):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
    return True


def stop(process):
    """Closes the sandbox's standard input (--stop-with-parent) and waits
    for it; kills it if it does not stop. Returns its exit status."""
    if process.stdin and not process.stdin.closed:
        process.stdin.close()
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """A govbridge sandbox for the whole test session."""
    scratch = tmp_path_factory.mktemp("govbridge")
    (scratch / "stubs").mkdir()
    generate_stubs(str(scratch / "stubs"))
    manifest_path = scratch / "sandbox.json"
    process = subprocess.Popen(
        [govbridge_binary(), "sandbox", "--stop-with-parent", "--manifest", str(manifest_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        text=True,
    )
    if not wait_until_ready(process):
        running = process.poll() is None
        status = stop(process) if running else process.returncode
        pytest.exit(
            f"govbridge sandbox was not ready within {START_TIMEOUT} s"
            if running
            else f"govbridge sandbox exited with status {status} before it was ready",
            returncode=2,
        )
    with open(manifest_path) as file:
        running = Sandbox(json.load(file))
    try:
        yield running
    finally:
        running.close()
        status = stop(process)
    assert status == 0, f"govbridge sandbox exited with status {status}"
    assert not manifest_path.exists(), "the manifest outlived the sandbox"
