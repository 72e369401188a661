"""A job kind is one module: a tiny kind registered by a fixture is in the OpenAPI schema and runs
through the API (submitted, run by the in-process runner, succeeded) with no edit anywhere else; and
every built-in kind's parameters take their defaults from the engine's configs."""

import pytest
from pydantic import Field

from backend.jobs import registry
from backend.models import JobStatus
from backend.schemas import Strict


class EchoParams(Strict):
    """Count to `n`, reporting progress; succeed with the count (test-only kind)."""

    n: int = Field(3, ge=1, le=10, description="how far to count")


def check(session, settings, params: EchoParams) -> None:
    if params.n == 7:
        raise ValueError("params.n: 7 is unlucky")


def run(ctx, job, params: EchoParams, attempt) -> None:
    for i in range(params.n):
        attempt.progress(i / params.n, "count", f"{i} of {params.n}", force=True)
    with ctx.db.session() as s:
        attempt.finish(s, JobStatus.succeeded, stage="done", message="counted", result={"count": params.n})


ECHO = registry.JobKind("echo", EchoParams, run, check=check)


@pytest.fixture
def echo_kind():
    registry.register(ECHO)
    yield ECHO
    registry.unregister(ECHO.name)


def test_a_kind_added_by_one_module_is_in_the_schema_and_runs(echo_kind, make_api):
    api = make_api()
    schema = api.client.get("/openapi.json").json()
    body = schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["mapping"]["echo"] == "#/components/schemas/EchoJob"
    params = schema["components"]["schemas"]["EchoParams"]["properties"]["n"]
    assert (params["default"], params["minimum"], params["maximum"]) == (3, 1, 10)
    kind_filter = next(p for p in schema["paths"]["/api/v1/jobs"]["get"]["parameters"] if p["name"] == "kind")
    assert "echo" in str(kind_filter["schema"])

    job = api.wait(api.submit("echo", {"n": 4}))
    assert job["status"] == "succeeded" and job["result"] == {"count": 4} and job["progress"] == 1.0
    assert api.wait(api.submit("echo"))["result"] == {"count": 3}  # every parameter has a default
    r = api.post_job("echo", {"n": 7})
    assert r.status_code == 422 and "unlucky" in r.json()["detail"]  # its check ran at submission
    r = api.post_job("echo", {"n": 11})
    assert r.status_code == 422 and "less than or equal to 10" in r.json()["detail"]
    listed = api.client.get("/api/v1/jobs?kind=echo").json()
    assert listed["total"] == 2


def test_builtin_kinds_and_their_engine_defaults():
    from worker.engine.activations import ProfileConfig
    from worker.engine.config import BridgeConfig
    from worker.engine.prune import PruneConfig
    from worker.engine.transcoders import TranscoderConfig

    kinds = registry.kinds()
    assert set(kinds) >= {"train", "profile", "prune", "bridge", "transcoder"}
    assert {k for k, kind in kinds.items() if kind.resumes} == {"train", "bridge"}
    prune = kinds["prune"].params(model_id=1, task="t")
    assert prune.target_loss == PruneConfig().target_loss and prune.runs == PruneConfig().runs
    profile = kinds["profile"].params(model_id=1)
    assert (profile.tokens, profile.context) == (ProfileConfig().tokens, ProfileConfig().context)
    bridge = kinds["bridge"].params(dense_model_id=1)
    assert bridge.kl_coef == BridgeConfig.model_fields["kl_coef"].default
    transcoder = kinds["transcoder"].params(model_id=1)
    assert transcoder.l1 == TranscoderConfig().l1 and transcoder.steps == TranscoderConfig().steps
