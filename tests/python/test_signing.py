"""Herald's request authentication (SPEC §3), checked on the wire.

Requests are signed with the SDK's own `huaweicloudsdkcore.signer.signer.Signer` over an
`SdkRequest`, then sent with `requests`, so a test can change what goes on the wire after
signing. Covers: a query string sent in unsorted order, a percent-encoded path segment, the
15-minute X-Sdk-Date window, body/query/header tampering after signing, unsigned requests,
and token auth via X-Auth-Token (valid, garbage, and another project's token).
"""

import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest

REQUEST_ID_RE = re.compile(r"[0-9a-fA-F-]{32,36}-\d{13}-\S+")


def callbacks(project, *rest):
    return "/".join([f"/v1/{project}/record/callbacks", *rest])


def assert_401(resp):
    assert resp.status_code == 401, resp.text
    assert resp.json()["error_code"] == "APIGW.0301", resp.text
    assert REQUEST_ID_RE.fullmatch(resp.headers.get("X-request-id", "")), resp.headers


def test_signed_list(raw, creds):
    resp = raw.call("GET", callbacks(creds["project_id"]), creds)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"total": 0, "callback_config": []}


def test_unsorted_query_string_on_the_wire(raw, creds):
    path = callbacks(creds["project_id"])
    for domain, app in [("a.example.com", "*"), ("b.example.com", "*"), ("b.example.com", "live")]:
        created = raw.call("POST", path, creds, body={"publish_domain": domain, "app": app})
        assert created.status_code == 201, created.text

    req = raw.sign("GET", path, creds, query=[("publish_domain", "a.example.com"), ("app", "*"),
                                              ("offset", 0), ("limit", 5)])
    assert req.uri == f"{path}?app=%2A&limit=5&offset=0&publish_domain=a.example.com"  # the SDK's sorted form
    resp = raw.send(req, uri=f"{path}?limit=5&publish_domain=a.example.com&offset=0&app=%2A")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total"] == 1
    assert [(c["publish_domain"], c["app"]) for c in body["callback_config"]] == [("a.example.com", "*")]


def test_percent_encoded_path_segment(raw, creds):
    # Canonical URI is /v1/P/record/callbacks/a%20b/ ; a 404 (not 401) proves Herald rebuilt it.
    req = raw.sign("GET", callbacks(creds["project_id"], "a%20b"), creds)
    assert req.uri.endswith("/a%20b")
    resp = raw.send(req)
    assert resp.status_code == 404, resp.text
    assert resp.json()["error_code"] == "LIVE.100011004"


@pytest.mark.parametrize("skew_minutes,status", [(-16, 401), (16, 401), (-14, 200)])
def test_x_sdk_date_window(raw, creds, skew_minutes, status):
    date = (datetime.now(timezone.utc) + timedelta(minutes=skew_minutes)).strftime("%Y%m%dT%H%M%SZ")
    resp = raw.call("GET", callbacks(creds["project_id"]), creds, headers={"X-Sdk-Date": date})
    if status == 401:
        assert_401(resp)
    else:
        assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("tamper", ["body", "header", "query"])
def test_request_changed_after_signing_is_401(raw, creds, tamper):
    path = callbacks(creds["project_id"])
    if tamper == "query":
        req = raw.sign("GET", path, creds, query=[("limit", 5)])
        assert_401(raw.send(req, uri=f"{path}?limit=6"))
        assert raw.send(req).status_code == 200  # the untouched request is fine
        return
    req = raw.sign("POST", path, creds, body={"publish_domain": "a.example.com", "app": "live"})
    change = {"body": dict(body=b'{"publish_domain": "b.example.com", "app": "live"}'),
              "header": dict(headers={"Content-Type": "application/json; charset=utf-8"})}[tamper]
    assert_401(raw.send(req, **change))
    assert raw.send(req).status_code == 201  # the untouched request is fine
    listed = raw.call("GET", path, creds).json()
    assert [c["publish_domain"] for c in listed["callback_config"]] == ["a.example.com"]


def test_unsigned_and_malformed_authorization_are_401(raw, creds):
    path = callbacks(creds["project_id"])
    assert_401(raw.unsigned("GET", path))
    assert_401(raw.unsigned("GET", path, headers={"Authorization": "SDK-HMAC-SHA256 garbage"}))
    assert_401(raw.unsigned("POST", path, json={"publish_domain": "a.example.com", "app": "live"}))


def test_token_auth(herald, raw, creds):
    project = creds["project_id"]
    token = herald.cli("tokens", "create", "--project", project)
    assert token["project_id"] == project and token["token"]
    assert raw.call("POST", callbacks(project), creds,
                    body={"publish_domain": "a.example.com", "app": "live"}).status_code == 201

    resp = raw.unsigned("GET", callbacks(project), headers={"X-Auth-Token": token["token"]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["total"] == 1

    assert_401(raw.unsigned("GET", callbacks(project), headers={"X-Auth-Token": "garbage-" + uuid.uuid4().hex}))

    other = uuid.uuid4().hex
    herald.cli("credentials", "create", "--project", other)
    refused = raw.unsigned("GET", callbacks(other), headers={"X-Auth-Token": token["token"]})
    assert refused.status_code in (401, 403, 404), refused.text
    assert "callback_config" not in refused.text
