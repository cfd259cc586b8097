"""Herald's Live-flavour record-callback API driven through the official `huaweicloudsdklive` SDK.

Covers (SPEC §1, §3): create/list/show/update/delete round trip; defaults; list filters,
offset/limit paging and total; PUT semantics (publish_domain and app required, other fields kept when left out); field validation (400 LIVE.100011001
naming the field); duplicate (publish_domain, app); paging bounds; unknown ids (404
LIVE.100011004); AK/SK failures (401 APIGW.0301) and project isolation; the callback key never
appearing in a response; the X-request-id format on success and error.
"""

import json
import re
import time
import uuid

import pytest
from huaweicloudsdkcore.exceptions.exceptions import ServiceResponseException
from huaweicloudsdklive.v1 import (
    CreateRecordCallbackConfigRequest, DeleteRecordCallbackConfigRequest,
    ListRecordCallbackConfigsRequest, RecordCallbackConfigRequest,
    ShowRecordCallbackConfigRequest, UpdateRecordCallbackConfigRequest)

URL = "https://callback.example.com/record_notify"
KEY = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"  # 32 ASCII letters and digits
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
REQUEST_ID_RE = re.compile(
    r"(?P<uuid>[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12})-(?P<ms>\d{13})-(?P<host>\S+)",
    re.IGNORECASE)
CONFIG_FIELDS = {"id", "publish_domain", "app", "notify_callback_url", "notify_event_subscription",
                 "sign_type", "create_time", "update_time"}


def config_body(publish_domain="publish.example.com", app="live", **kw):
    kw.setdefault("notify_callback_url", URL)
    return RecordCallbackConfigRequest(publish_domain=publish_domain, app=app, **kw)


def create(client, **kw):
    return client.create_record_callback_config(CreateRecordCallbackConfigRequest(body=config_body(**kw)))


def show(client, id):
    return client.show_record_callback_config(ShowRecordCallbackConfigRequest(id=id))


def update(client, id, publish_domain="publish.example.com", app="live", **kw):
    """PUT: SPEC §1 requires publish_domain and app on update as on create; the other
    fields, when left out (the SDK drops None fields), keep their current values."""
    return client.update_record_callback_config(UpdateRecordCallbackConfigRequest(
        id=id, body=RecordCallbackConfigRequest(publish_domain=publish_domain, app=app, **kw)))


def delete(client, id):
    return client.delete_record_callback_config(DeleteRecordCallbackConfigRequest(id=id))


def list_configs(client, **kw):
    return client.list_record_callback_configs(ListRecordCallbackConfigsRequest(**kw))


def wire(resp):
    """The JSON body exactly as Herald sent it."""
    return json.loads(resp.raw_content)


def expect_error(status, code, fn, *args, **kw):
    with pytest.raises(ServiceResponseException) as info:
        fn(*args, **kw)
    e = info.value
    assert (e.status_code, e.error_code) == (status, code), str(e)
    return e


def assert_request_id(value):
    m = REQUEST_ID_RE.fullmatch(value or "")
    assert m, f"X-request-id {value!r} is not {{uuid}}-{{unix_ms}}-{{hostname}}"
    assert abs(int(m["ms"]) - time.time() * 1000) < 5 * 60 * 1000, value


def test_crud_round_trip(live_client):
    created = create(live_client, app="live", sign_type="MD5", key=KEY,
                     notify_event_subscription=["RECORD_START", "RECORD_FILE_COMPLETE"])
    assert created.status_code == 201
    body = wire(created)
    assert set(body) <= CONFIG_FIELDS and "key" not in body
    assert body["id"]
    assert (body["publish_domain"], body["app"], body["notify_callback_url"], body["sign_type"]) == \
        ("publish.example.com", "live", URL, "MD5")
    assert body["notify_event_subscription"] == ["RECORD_START", "RECORD_FILE_COMPLETE"]
    assert TIME_RE.fullmatch(body["create_time"]) and TIME_RE.fullmatch(body["update_time"])

    shown = show(live_client, created.id)
    assert shown.status_code == 200 and wire(shown) == body

    listed = list_configs(live_client)
    assert listed.status_code == 200 and listed.total == 1
    assert wire(listed) == {"total": 1, "callback_config": [body]}

    new_url = "https://other.example.com/hook"
    updated = update(live_client, created.id, publish_domain="publish.example.com", app="live",
                     notify_callback_url=new_url, notify_event_subscription=["RECORD_OVER"])
    assert updated.status_code == 200
    after = wire(updated)
    assert after["id"] == body["id"] and after["create_time"] == body["create_time"]
    assert after["notify_callback_url"] == new_url and after["notify_event_subscription"] == ["RECORD_OVER"]
    assert after["sign_type"] == "MD5" and TIME_RE.fullmatch(after["update_time"])
    assert after["update_time"] >= body["update_time"]
    assert wire(show(live_client, created.id)) == after

    deleted = delete(live_client, created.id)
    assert deleted.status_code == 204
    expect_error(404, "LIVE.100011004", show, live_client, created.id)
    assert wire(list_configs(live_client)) == {"total": 0, "callback_config": []}


def test_create_defaults(live_client):
    body = wire(create(live_client, app="*", notify_callback_url=None))
    assert body["sign_type"] == "HMACSHA256"
    assert body["notify_event_subscription"] == ["RECORD_FILE_COMPLETE"]
    assert body["app"] == "*" and not body.get("notify_callback_url")


@pytest.mark.parametrize("url", [
    "http://callback.example.com/x",
    "https://callback.example.com:8443/record/notify",
    "https://callback.example.com/" + "a" * (1024 - len("https://callback.example.com/")),  # exactly 1024
])
def test_accepted_urls(live_client, url):
    assert wire(create(live_client, notify_callback_url=url))["notify_callback_url"] == url


def test_list_filters_and_paging(live_client):
    ids = {create(live_client, publish_domain="a.example.com", app=f"app{i:02}").id for i in range(12)}
    ids.add(create(live_client, publish_domain="b.example.com", app="app00").id)

    default = list_configs(live_client)
    assert default.total == 13 and len(default.callback_config) == 10  # default limit is 10
    everything = list_configs(live_client, limit=100)
    assert everything.total == 13 and {c.id for c in everything.callback_config} == ids

    by_domain = list_configs(live_client, publish_domain="a.example.com", limit=100)
    assert by_domain.total == 12
    assert {c.publish_domain for c in by_domain.callback_config} == {"a.example.com"}
    one = list_configs(live_client, publish_domain="a.example.com", app="app03")
    assert one.total == 1 and [(c.publish_domain, c.app) for c in one.callback_config] == [("a.example.com", "app03")]
    by_app = list_configs(live_client, app="app00")
    assert by_app.total == 2 and {c.publish_domain for c in by_app.callback_config} == {"a.example.com", "b.example.com"}
    assert wire(list_configs(live_client, publish_domain="nothing.example.com")) == {"total": 0, "callback_config": []}

    seen = []
    for offset in range(0, 13, 5):
        page = list_configs(live_client, offset=offset, limit=5)
        assert page.total == 13 and len(page.callback_config) == min(5, 13 - offset)
        seen += [c.id for c in page.callback_config]
    assert len(seen) == 13 and set(seen) == ids  # stable order: no duplicates, nothing skipped
    assert [c.id for c in list_configs(live_client, offset=2, limit=1).callback_config] == seen[2:3]
    assert wire(list_configs(live_client, offset=13, limit=5)) == {"total": 13, "callback_config": []}


def test_update_keeps_omitted_fields_and_empty_string_removes(live_client):
    cfg = create(live_client, app="live", sign_type="MD5", key=KEY,
                 notify_event_subscription=["RECORD_OVER"])
    # The SDK drops None fields, so url/sign_type/key are left out of the PUT.
    partial = wire(update(live_client, cfg.id, notify_event_subscription=["RECORD_FAILED", "RECORD_START"]))
    assert (partial["publish_domain"], partial["app"], partial["notify_callback_url"], partial["sign_type"]) == \
        ("publish.example.com", "live", URL, "MD5")
    assert partial["notify_event_subscription"] == ["RECORD_FAILED", "RECORD_START"]

    cleared = update(live_client, cfg.id, notify_callback_url="", key="")
    assert cleared.status_code == 200
    assert not wire(cleared).get("notify_callback_url")
    assert not wire(show(live_client, cfg.id)).get("notify_callback_url")
    assert wire(show(live_client, cfg.id))["sign_type"] == "MD5"


@pytest.mark.parametrize("missing", ["publish_domain", "app"])
def test_update_requires_publish_domain_and_app(live_client, missing):
    cfg = create(live_client)
    before = wire(show(live_client, cfg.id))
    e = expect_error(400, "LIVE.100011001", update, live_client, cfg.id, **{missing: None},
                     notify_event_subscription=["RECORD_OVER"])
    assert missing in e.error_msg
    assert wire(show(live_client, cfg.id)) == before


def test_update_is_validated_and_leaves_config_unchanged(live_client):
    cfg = create(live_client)
    before = wire(show(live_client, cfg.id))
    e = expect_error(400, "LIVE.100011001", update, live_client, cfg.id, notify_callback_url="ftp://x.example.com/a")
    assert "notify_callback_url" in e.error_msg
    expect_error(400, "LIVE.100011001", update, live_client, cfg.id, key="short")
    assert wire(show(live_client, cfg.id)) == before


INVALID = [
    ("publish_domain", dict(publish_domain=None)),
    ("app", dict(app=None)),
    ("notify_callback_url", dict(notify_callback_url="callback.example.com/record")),
    ("notify_callback_url", dict(notify_callback_url="https://callback.example.com/record?a=b")),
    ("notify_callback_url", dict(notify_callback_url="https://callback.example.com/record#frag")),
    ("notify_callback_url", dict(notify_callback_url="https://callback.example.com/" + "a" * 1000)),
    ("notify_callback_url", dict(notify_callback_url="ftp://callback.example.com/record")),
    ("notify_callback_url", dict(notify_callback_url="https:///record")),
    ("notify_callback_url", dict(notify_callback_url="http://127.0.0.1/x")),
    ("notify_callback_url", dict(notify_callback_url="http://10.0.0.1/x")),
    ("notify_callback_url", dict(notify_callback_url="http://localhost/x")),
    ("key", dict(key=KEY[:31])),
    ("key", dict(key=KEY + "A")),
    ("key", dict(key=KEY[:31] + "!")),
    ("sign_type", dict(sign_type="SHA1")),
    ("notify_event_subscription", dict(notify_event_subscription=["RECORD_FILE_COMPLETE", "RECORD_BOGUS"])),
]


@pytest.mark.parametrize("field,override", INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
def test_create_rejects_invalid_field(live_client, field, override):
    e = expect_error(400, "LIVE.100011001", create, live_client, **override)
    assert field in e.error_msg, e.error_msg
    assert list_configs(live_client).total == 0


def test_duplicate_publish_domain_and_app(live_client):
    first = create(live_client, app="live")
    e = expect_error(400, "LIVE.100011001", create, live_client, app="live", notify_callback_url="https://b.example.com/x")
    assert e.error_msg
    create(live_client, app="*")  # same domain, another app: fine
    other = create(live_client, app="other")
    expect_error(400, "LIVE.100011001", update, live_client, other.id, app="live")  # PUT into a taken slot
    assert list_configs(live_client).total == 3
    assert wire(show(live_client, first.id))["notify_callback_url"] == URL


@pytest.mark.parametrize("field,params", [
    ("limit", dict(limit=0)), ("limit", dict(limit=101)), ("offset", dict(offset=-1))])
def test_list_rejects_out_of_range_paging(live_client, field, params):
    # The SDK validates nothing client-side and sends these values as they are.
    e = expect_error(400, "LIVE.100011001", list_configs, live_client, **params)
    assert field in e.error_msg, e.error_msg


@pytest.mark.parametrize("op", ["show", "update", "delete"])
def test_unknown_id_is_404(live_client, op):
    create(live_client)
    unknown = uuid.uuid4().hex
    call = {"show": lambda: show(live_client, unknown),
            "update": lambda: update(live_client, unknown, publish_domain="x.example.com", app="x"),
            "delete": lambda: delete(live_client, unknown)}[op]
    expect_error(404, "LIVE.100011004", call)


def test_wrong_secret_key_is_401(make_client, creds):
    sk = creds["secret_key"]
    bad = make_client(creds["access_key"], sk[:-1] + ("A" if sk[-1] != "A" else "B"), creds["project_id"])
    expect_error(401, "APIGW.0301", list_configs, bad)


def test_unknown_access_key_is_401(make_client, project):
    client = make_client(uuid.uuid4().hex.upper()[:20], uuid.uuid4().hex + uuid.uuid4().hex, project)
    expect_error(401, "APIGW.0301", list_configs, client)


def test_other_projects_credentials_are_refused(herald, make_client, live_client, creds):
    other = herald.cli("credentials", "create", "--project", uuid.uuid4().hex)
    other_client = make_client(other["access_key"], other["secret_key"], other["project_id"])
    theirs = create(other_client, publish_domain="secret.example.com")

    # Our AK/SK on the other project's paths (the SDK puts project_id in the path and X-Project-Id).
    intruder = make_client(creds["access_key"], creds["secret_key"], other["project_id"])
    for call in (lambda: list_configs(intruder), lambda: show(intruder, theirs.id),
                 lambda: update(intruder, theirs.id, notify_callback_url="https://evil.example.com/x"),
                 lambda: delete(intruder, theirs.id), lambda: create(intruder, app="mine")):
        with pytest.raises(ServiceResponseException) as info:
            call()
        assert info.value.status_code in (401, 403, 404), str(info.value)
        assert "secret.example.com" not in (info.value.error_msg or "")
    assert wire(show(other_client, theirs.id)) == wire(theirs)
    assert list_configs(other_client).total == 1

    # Ids are scoped to the project: our own credentials on our own path cannot see theirs.
    expect_error(404, "LIVE.100011004", show, live_client, theirs.id)
    expect_error(404, "LIVE.100011004", delete, live_client, theirs.id)


def test_key_is_never_returned(live_client, sdk_responses):
    cfg = create(live_client, key=KEY)
    show(live_client, cfg.id)
    list_configs(live_client)
    update(live_client, cfg.id, key=KEY[::-1], sign_type="MD5")
    with pytest.raises(ServiceResponseException):
        create(live_client, key=KEY)  # duplicate: the error must not echo the request either
    assert len(sdk_responses) == 5
    for resp in sdk_responses:
        assert KEY not in resp.text and KEY[::-1] not in resp.text, resp.text
        body = resp.json()
        for item in body.get("callback_config", [body]):
            assert "key" not in item


def test_x_request_id_on_success_and_error(live_client, sdk_responses):
    list_configs(live_client)
    assert sdk_responses[-1].status_code == 200
    ok_id = sdk_responses[-1].headers.get("X-request-id")
    assert_request_id(ok_id)

    e = expect_error(404, "LIVE.100011004", show, live_client, "does-not-exist")
    assert_request_id(e.request_id)  # the SDK reads X-Request-Id into the exception
    assert e.request_id == sdk_responses[-1].headers.get("X-request-id") != ok_id
