"""Schema-driven fuzzing (schemathesis) with every check it has (`--checks all`: no server error,
status codes, content types, headers and bodies as documented, invalid data rejected, valid data
accepted, unsupported methods, ignored auth, ...), over every operation with a valid key: the OpenAPI
document describes the responses. Job submission is left out (valid bodies would start real training
runs); its validation is covered by tests/test_jobs.py and tests/test_reliability.py. Hypothesis drives
schemathesis' strategies directly (its pytest plugin does not support pytest 9); bounded in examples."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

EXAMPLES = 12  # per operation and mode


def test_the_openapi_document_describes_every_response(api_backend):
    load_all_checks()
    checks = CHECKS.get_all()
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_backend.client.app)
    schema = schema.exclude(path="/api/v1/jobs", method="POST")
    headers = {"x-api-key": api_backend.key}
    operations, calls, failures = [], [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case):
                try:
                    response = case.call_and_validate(headers=headers, checks=checks)
                    calls.append(response.status_code)
                except (
                    Exception,
                    BaseExceptionGroup,
                ) as e:  # every failure of every operation, not the first
                    failures.append(f"{case.method} {case.formatted_path}: {str(e)[:600]}")

            try:
                fuzz()
            except Unsatisfiable:  # e.g. no invalid input exists for an operation without parameters
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert failures == []
    assert "POST /api/v1/circuits/{circuit_id}/ablate" in operations and len(operations) >= 20
    assert len(calls) > 5 * len(operations)
