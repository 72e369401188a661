"""The browser's one-time sign-in of `circuits serve` on loopback: the token works once, the cookie it
sets stands in for the x-api-key header only from a loopback client and the app's own origin."""

from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from backend.auth import (
    BROWSER_COOKIE,
    BROWSER_KEY_NAME,
    BrowserLogin,
    browser_login,
    is_loopback,
    login_url,
)
from backend.db import Database
from backend.models import ApiKey

TINY = {"preset": "test", "steps": 8, "train": {"max_corpus_bytes": 200_000}}
LOCAL = ("127.0.0.1", 5555)
REMOTE = ("10.1.2.3", 5555)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("example.org", False), ("", False)],
)  # fmt: skip
def test_only_loopback_hosts_get_a_sign_in(tmp_path, host, loopback):
    from backend.db import upgrade
    from backend.settings import Settings

    settings = Settings(data_dir=tmp_path)
    upgrade(settings)
    db = Database(settings)
    with db.session() as s:
        login = browser_login(s, host)
    with db.session() as s:
        keys = s.scalars(select(ApiKey.name)).all()
    db.dispose()
    assert is_loopback(host) is loopback
    assert (login is not None) is loopback
    assert keys == ([BROWSER_KEY_NAME] if loopback else [])


def test_login_url_names_the_host():
    login = BrowserLogin("sce_x")
    assert login_url("127.0.0.1", 8000, login) == f"http://127.0.0.1:8000/login?token={login.token}"
    assert login_url("::1", 8000, login).startswith("http://[::1]:8000/login?token=")


@pytest.fixture
def signed_in(make_api):
    """(api, local client, token): an app whose serve made a sign-in, and a loopback client."""
    api = make_api()
    db = Database(api.settings)
    with db.session() as s:
        api.client.app.state.browser_login = browser_login(s, "127.0.0.1")
    db.dispose()
    local = TestClient(api.client.app, client=LOCAL, follow_redirects=False)
    return api, local, api.client.app.state.browser_login.token


def test_token_signs_in_once_and_wrong_tokens_are_refused(signed_in):
    api, local, token = signed_in
    assert local.get("/login", params={"token": "nope"}).status_code == 403
    assert local.get("/login").status_code == 403
    r = local.get("/login", params={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert f"{BROWSER_COOKIE}=sce_" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/" in cookie
    again = TestClient(api.client.app, client=LOCAL, follow_redirects=False)
    second = again.get("/login", params={"token": token})
    assert second.status_code == 403 and "already used" in second.text
    assert BROWSER_COOKIE not in again.cookies


def test_login_from_another_host_is_refused_and_keeps_the_token(signed_in):
    api, local, token = signed_in
    remote = TestClient(api.client.app, client=REMOTE, follow_redirects=False)
    r = remote.get("/login", params={"token": token})
    assert r.status_code == 403 and "only from the machine" in r.text
    assert local.get("/login", params={"token": token}).status_code == 303  # still unused


def test_no_sign_in_without_a_loopback_serve(make_api):
    api = make_api()
    local = TestClient(api.client.app, client=LOCAL, follow_redirects=False)
    r = local.get("/login", params={"token": "anything"})
    assert r.status_code == 403 and "no sign-in link" in r.text


def test_cookie_writes_from_loopback_only(signed_in):
    api, local, token = signed_in
    assert local.get("/api/v1/session").json() == {"authenticated": False, "via": None, "key_prefix": None}
    assert local.post("/api/v1/jobs", json={"kind": "train", "params": TINY}).status_code == 401
    local.get("/login", params={"token": token})
    session = local.get("/api/v1/session").json()
    assert (
        session["authenticated"] and session["via"] == "cookie" and session["key_prefix"].startswith("sce_")
    )

    r = local.post("/api/v1/jobs", json={"kind": "train", "params": TINY})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert local.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202  # the cookie's own job

    # The same cookie from another host, or from another origin's page on this one, is no key.
    remote = TestClient(api.client.app, client=REMOTE)
    remote.cookies.set(BROWSER_COOKIE, local.cookies[BROWSER_COOKIE])
    r = remote.post("/api/v1/jobs", json={"kind": "train", "params": TINY})
    assert r.status_code == 401 and "x-api-key" in r.json()["detail"]
    assert remote.get("/api/v1/session").json()["authenticated"] is False
    for headers in ({"origin": "http://localhost:9999"}, {"sec-fetch-site": "same-site"}):
        r = local.post("/api/v1/jobs", json={"kind": "train", "params": TINY}, headers=headers)
        assert r.status_code == 401, headers
    same = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}
    r = local.post("/api/v1/jobs", json={"kind": "train", "params": {**TINY, "steps": 1}}, headers=same)
    assert r.status_code == 202, r.text

    # A header key works from anywhere, and is what /session reports when both are there.
    r = remote.post(
        "/api/v1/jobs", json={"kind": "train", "params": {**TINY, "steps": 2}}, headers={"x-api-key": api.key}
    )
    assert r.status_code == 202, r.text
    keyed = local.get("/api/v1/session", headers={"x-api-key": api.key}).json()
    assert keyed == {"authenticated": True, "via": "key", "key_prefix": api.key[:12]}
    assert local.get("/api/v1/session", headers={"x-api-key": "sce_wrong"}).json()["authenticated"] is False
    for job in api.client.get("/api/v1/jobs").json()["items"]:
        if job["status"] in ("queued", "running"):
            api.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers={"x-api-key": api.key})

    db = Database(api.settings)
    with db.session() as s:
        s.scalar(select(ApiKey).where(ApiKey.name == BROWSER_KEY_NAME)).revoked_at = datetime.now(UTC)
    db.dispose()
    r = local.post("/api/v1/jobs", json={"kind": "train", "params": TINY})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert local.get("/api/v1/session").json()["authenticated"] is False


def test_cookie_counts_as_keyed_for_interactive_rate_limits(signed_in):
    from backend.interactive import caller_key

    api, local, token = signed_in
    local.get("/login", params={"token": token})

    class Req:
        def __init__(self, client, cookies, headers=None):
            self.client = type("C", (), {"host": client[0]})
            self.cookies, self.headers = cookies, headers or {}
            self.app = api.client.app

    cookies = dict(local.cookies)
    assert caller_key(Req(LOCAL, cookies)) is True
    assert caller_key(Req(REMOTE, cookies)) is False
    assert caller_key(Req(LOCAL, {BROWSER_COOKIE: "sce_stale"})) is False
    assert caller_key(Req(LOCAL, {})) is False
