"""Integration tests a bank would write against govbridge, in Python.

They run against the `sandbox` fixture of conftest.py (`govbridge sandbox`):
the real gateway and policies, mock agencies with known people.

    GOVBRIDGE=target/debug/govbridge python3 -m pytest examples/python
"""

import grpc
import pytest

KYC_DESK = "SN/COM/CBAO/kyc"


def verify_request(sandbox, person):
    registry = sandbox.messages("civilregistry")
    return registry.VerifyIdentityRequest(
        nin=person["nin"],
        first_names=person["first_names"],
        last_name=person["last_name"],
        date_of_birth=person["date_of_birth"],
    )


def bridge_error(error):
    """The gateway's `bridge-error` of a refused call, if it made one."""
    for key, value in error.trailing_metadata() or ():
        if key == "bridge-error":
            return value
    return None


def test_a_known_adult_is_verified_and_the_call_is_logged(sandbox):
    registry = sandbox.stub("civilregistry", "CivilRegistry", KYC_DESK)
    adult = sandbox.test_data["adult_with_account"]
    answer, call = registry.VerifyIdentity.with_call(
        verify_request(sandbox, adult), metadata=sandbox.declared("KYC"), timeout=10
    )
    messages = sandbox.messages("civilregistry")
    assert answer.result == messages.VERIFICATION_RESULT_MATCH
    headers = dict(call.initial_metadata())
    assert "bridge-request-id" in headers
    assert "bridge-audit-index" in headers


def test_a_deceased_person_is_reported_as_such(sandbox):
    registry = sandbox.stub("civilregistry", "CivilRegistry", KYC_DESK)
    answer = registry.VerifyIdentity(
        verify_request(sandbox, sandbox.test_data["deceased"]),
        metadata=sandbox.declared("KYC"),
        timeout=10,
    )
    messages = sandbox.messages("civilregistry")
    assert answer.result == messages.VERIFICATION_RESULT_DECEASED


def test_the_kyc_desk_may_not_read_the_whole_record(sandbox):
    registry = sandbox.stub("civilregistry", "CivilRegistry", KYC_DESK)
    messages = sandbox.messages("civilregistry")
    adult = sandbox.test_data["adult_with_account"]
    with pytest.raises(grpc.RpcError) as refused:
        registry.GetPerson(
            messages.GetPersonRequest(nin=adult["nin"]),
            metadata=sandbox.declared("KYC"),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert bridge_error(refused.value) == "policy-denied"


def test_a_company_in_good_standing_is_found(sandbox):
    companies = sandbox.stub("business", "BusinessRegistry", KYC_DESK)
    messages = sandbox.messages("business")
    company = sandbox.test_data["company_in_good_standing"]
    answer = companies.GetCompany(
        messages.GetCompanyRequest(ninea=company["ninea"]),
        metadata=sandbox.declared("KYC"),
        timeout=10,
    )
    assert answer.legal_name == company["legal_name"]


def test_an_agency_failing_on_request_gives_its_status(sandbox):
    registry = sandbox.stub("civilregistry", "CivilRegistry", KYC_DESK)
    adult = sandbox.test_data["adult_with_account"]
    fault = (sandbox.fault_header, "status=UNAVAILABLE")
    with pytest.raises(grpc.RpcError) as failed:
        registry.VerifyIdentity(
            verify_request(sandbox, adult),
            metadata=sandbox.declared("KYC", fault),
            timeout=10,
        )
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    # The agency's own status, relayed: no bridge-error from the gateway.
    assert bridge_error(failed.value) is None
    # Only that call failed: the same one without the header passes.
    registry.VerifyIdentity(
        verify_request(sandbox, adult), metadata=sandbox.declared("KYC"), timeout=10
    )
