"""Schema-driven fuzzing (schemathesis): requests generated from the OpenAPI document, valid ones and
invalid ones, must never get a 5xx. Job submission is left out (it would start real training runs).
Hypothesis drives schemathesis' strategies directly (its pytest plugin does not support pytest 9)."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES = 25  # per operation and mode


def test_no_server_errors(api_backend):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_backend.client.app)
    schema = schema.exclude(path_regex="^/api/v1/jobs")
    headers = {"x-api-key": api_backend.key}
    operations, calls = [], []
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
                response = case.call(headers=headers)
                calls.append(response.status_code)
                assert response.status_code < 500, (
                    case.method,
                    case.formatted_path,
                    case.body,
                    response.text,
                )

            try:
                fuzz()
            except Unsatisfiable:  # e.g. no invalid input exists for an operation without parameters
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert "POST /api/v1/circuits/{circuit_id}/ablate" in operations and len(operations) >= 12
    assert len(calls) > 10 * len(operations)
