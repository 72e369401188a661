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

EXAMPLES = 8  # per operation and mode
# positive_data_acceptance says a request valid under the schema must get a 2xx/404/409/...; on these
# operations validity also depends on rules JSON Schema cannot state, so a schema-valid request may
# rightly get a 422 naming the problem (every other check still runs on them):
DATA_RULES = {
    "POST /api/v1/tasks": "a pair's two prompts differ; the completions start with different tokens",
    "POST /api/v1/circuits/{circuit_id}/trace": "`off` names nodes of that circuit",
    "POST /api/v1/circuits/{circuit_id}/ablate": "switched nodes lie on the layers' sites; a work cap",
    "POST /api/v1/models/{model_id}/steer": "the model has bridges; a work cap",
}


def fuzz(operation, mode, checks, headers, calls: list, failures: list) -> None:
    """EXAMPLES cases of one operation in one generation mode; every failure is collected."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case):
        try:
            response = case.call_and_validate(headers=headers, checks=checks)
            calls.append(response.status_code)
        except (Exception, BaseExceptionGroup) as e:  # every failure of every operation, not the first
            failures.append(f"{case.method} {case.formatted_path}: {str(e)[:600]}")

    try:
        run()
    except Unsatisfiable:  # e.g. no invalid input exists for an operation without parameters
        assert mode == GenerationMode.NEGATIVE, operation.label


def test_the_openapi_document_describes_every_response(api_backend):
    load_all_checks()
    every_check = CHECKS.get_all()
    from backend.app import create_app

    # An app of its own over the shared backend's database: schemathesis enters and leaves the ASGI
    # lifespan on every call, which would stop the shared app's job runner for the tests after this one.
    # Its body cap is lifted so that a huge invalid body meets validation (a 422), not the cap's 413
    # (the cap is tested in tests/test_reliability.py).
    settings = api_backend.settings.model_copy(update={"max_body_bytes": 2**30})
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    schema = schema.exclude(path="/api/v1/jobs", method="POST")
    headers = {"x-api-key": api_backend.key}
    operations, calls, failures = [], [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.append(operation.label)
        skip = {"positive_data_acceptance"} if operation.label in DATA_RULES else set()
        checks = [c for c in every_check if c.__name__ not in skip]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, checks, headers, calls, failures)
    assert failures == [], f"{len(failures)} failures:\n" + "\n".join(failures)
    assert "POST /api/v1/circuits/{circuit_id}/ablate" in operations and len(operations) >= 20
    assert set(DATA_RULES) <= set(operations)
    assert len(calls) > 5 * len(operations)
