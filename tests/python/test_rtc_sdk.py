"""Herald's RTC-flavour app and record-callback API driven through the official `huaweicloudsdkcloudrtc` SDK.

Covers (SPEC §2-§5, RTC-SIGNATURE.md): app create/show/list/delete and record callback
set/show/remove through the SDK; list count and offset/limit paging (offset is a row offset);
field validation (400 RTC.00001003 `InvalidParameterValue…` naming the field); unknown and
malformed app ids (404 RTC.00001003); bad AK/SK (401 APIGW.0301); project isolation; the
X-request-Id format; and end to end: an event ingested on `/v2/apps/{app_id}/record/events`
with a token reaches a receiver on 127.0.0.1 (via the `herald_private` server, which allows
private targets) with `app_id` plus the event's fields, and an X-Rtc-Signature recomputed
here over the raw body.

SDK facts relied on (huaweicloudsdkcloudrtc 3.1.219): the project goes in X-Project-Id;
list_apps sends offset/limit as given (no client-side checks, None left out); app ids are
percent-encoded into the path; delete accepts any status below 400.
"""

import calendar
import hashlib
import hmac
import json
import queue
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ServiceResponseException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcloudrtc.v2 import (
    AppCallbackUrlReq, AppReq, CloudRTCClient, CreateAppRequest, DeleteAppRequest, ListAppsRequest,
    ShowAppRequest, ShowRecordCallbackRequest, UpdateRecordCallbackRequest)

ERR = "RTC.00001003"
URL = "https://callback.example.com/rtc/record"
KEY = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"  # 32 ASCII letters and digits
SUBSCRIPTION = ["RECORD_NEW_FILE_START", "RECORD_FILE_COMPLETE", "CLOUD_RECORD_SERVER_OVER"]
APP_ID_RE = re.compile(r"[0-9a-f]{24}")
MS_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")
REQUEST_ID_RE = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
                           r"-(?P<ms>\d{13})-\S+")


# ---- SDK plumbing -------------------------------------------------------------------------

@pytest.fixture
def make_rtc_client():
    """Build a CloudRTCClient for a server and a credentials dict, only the endpoint changed."""
    clients = []

    def make(server, c, secret_key=None):
        config = HttpConfig.get_default_config()
        config.retry_times, config.timeout = 0, (5, 30)
        client = (CloudRTCClient.new_builder()
                  .with_http_config(config)
                  .with_credentials(BasicCredentials(c["access_key"], secret_key or c["secret_key"], c["project_id"]))
                  .with_endpoints([server.base_url])
                  .build())
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def rtc(herald, creds, make_rtc_client):
    return make_rtc_client(herald, creds)


def create_app(client, name="herald-test"):
    return client.create_app(CreateAppRequest(body=AppReq(app_name=name)))


def show_app(client, app_id):
    return client.show_app(ShowAppRequest(app_id=app_id))


def list_apps(client, **kw):
    return client.list_apps(ListAppsRequest(**kw))


def delete_app(client, app_id):
    return client.delete_app(DeleteAppRequest(app_id=app_id))


def set_callback(client, app_id, url=URL, auth_key=None):
    return client.update_record_callback(UpdateRecordCallbackRequest(
        app_id=app_id, body=AppCallbackUrlReq(url=url, auth_key=auth_key)))


def show_callback(client, app_id):
    return client.show_record_callback(ShowRecordCallbackRequest(app_id=app_id))


def wire(resp):
    """The JSON body exactly as Herald sent it."""
    return json.loads(resp.raw_content)


def assert_request_id(value):
    m = REQUEST_ID_RE.fullmatch(value or "")
    assert m, f"X-request-Id {value!r} is not {{uuid}}-{{unix_ms}}-{{hostname}}"
    assert abs(int(m["ms"]) - time.time() * 1000) < 5 * 60 * 1000, value


def expect_error(status, code, fn, *args, field=None):
    with pytest.raises(ServiceResponseException) as info:
        fn(*args)
    e = info.value
    assert (e.status_code, e.error_code) == (status, code), str(e)
    assert_request_id(e.request_id)
    if field is not None:
        assert e.error_msg.startswith("InvalidParameterValue") and field in e.error_msg, e.error_msg
    return e


def assert_recent(ts):
    """`ts` (…Z, UTC) is within five minutes of now."""
    parsed = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(parsed - time.time()) < 300, ts


# ---- management API ------------------------------------------------------------------------

def test_app_and_record_callback_round_trip(rtc):
    created = create_app(rtc, "my-rtc-app")
    assert created.status_code == 201 and APP_ID_RE.fullmatch(created.app_id), created
    assert wire(created) == {"app_id": created.app_id}
    assert_request_id(created.x_request_id)
    app_id = created.app_id

    shown = show_app(rtc, app_id)
    assert shown.status_code == 200
    app = wire(shown)
    assert (app["app_id"], app["app_name"], app["state"]["state"]) == (app_id, "my-rtc-app", "ACTIVATION")
    assert MS_TIME_RE.fullmatch(app["create_time"]) and TIME_RE.fullmatch(app["state"]["update_time"]), app
    assert_recent(app["create_time"])
    assert None not in app.values()

    others = [create_app(rtc, f"other-{i}").app_id for i in range(2)]
    listed = list_apps(rtc)
    assert listed.status_code == 200 and listed.count == 3
    assert [a["app_id"] for a in wire(listed)["apps"]] == [app_id, *others]  # creation order
    assert wire(listed)["apps"][0] == app  # the same representation as show
    page = wire(list_apps(rtc, offset=1, limit=2))  # offset counts rows, not pages
    assert page["count"] == 3 and [a["app_id"] for a in page["apps"]] == others
    assert [a["app_id"] for a in wire(list_apps(rtc, limit=1))["apps"]] == [app_id]
    assert wire(list_apps(rtc, offset=3, limit=5)) == {"count": 3, "apps": []}

    before = wire(show_callback(rtc, app_id))
    assert before["app_id"] == app_id
    assert (before["record_callback"]["url"], before["record_callback"]["auth_key"]) == ("", "")

    updated = set_callback(rtc, app_id, URL, KEY)
    assert updated.status_code == 200
    assert_request_id(updated.x_request_id)
    body = wire(updated)
    cb = body["record_callback"]
    assert body["app_id"] == app_id and set(body) == {"app_id", "record_callback"}
    assert (cb["url"], cb["auth_key"], cb["notify_event_subscription"]) == (URL, KEY, SUBSCRIPTION)
    assert MS_TIME_RE.fullmatch(cb["update_time"]), cb
    assert_recent(cb["update_time"])
    assert cb["update_time"] >= app["create_time"]
    shown_cb = show_callback(rtc, app_id)
    assert shown_cb.status_code == 200 and wire(shown_cb) == body
    assert shown_cb.record_callback.notify_event_subscription == SUBSCRIPTION  # the SDK model parses it

    removed = set_callback(rtc, app_id, "")
    assert removed.status_code == 200 and wire(removed)["record_callback"]["url"] == ""
    assert wire(show_callback(rtc, app_id))["record_callback"]["url"] == ""

    deleted = delete_app(rtc, app_id)
    assert deleted.status_code == 204
    expect_error(404, ERR, show_app, rtc, app_id)
    expect_error(404, ERR, show_callback, rtc, app_id)
    assert list_apps(rtc).count == 2


def test_boundary_values_are_accepted(rtc):
    for name in ("a", "x" * 64, "é" * 64):  # 64 characters, 128 bytes: the limit is in characters
        assert wire(show_app(rtc, create_app(rtc, name).app_id))["app_name"] == name
    app_id = create_app(rtc).app_id
    for url, key in [("http://callback.example.com:8080/x", KEY + "9" * 32),  # 64-character key
                     ("https://callback.example.com/" + "a" * (1024 - 29), None)]:  # exactly 1024 bytes
        cb = wire(set_callback(rtc, app_id, url, key))["record_callback"]
        assert cb["url"] == url and (key is None or cb["auth_key"] == key)


OPS = {
    "show_app": lambda c, i: show_app(c, i),
    "show_callback": lambda c, i: show_callback(c, i),
    "update_callback": lambda c, i: set_callback(c, i, URL, KEY),
    "delete_app": lambda c, i: delete_app(c, i),
}


@pytest.mark.parametrize("op", OPS)
def test_unknown_app_is_404(rtc, op):
    create_app(rtc)
    expect_error(404, ERR, OPS[op], rtc, uuid.uuid4().hex[:24])


@pytest.mark.parametrize("bad_id", ["not-an-app-id", "0" * 23, "0" * 25, "g" * 24, "UPPER"])
def test_malformed_app_id_is_404(rtc, bad_id):
    app_id = create_app(rtc).app_id
    if bad_id == "UPPER":  # ids are lowercase: the upper-case spelling of a real id is not that app
        bad_id = app_id.upper()
    expect_error(404, ERR, show_app, rtc, bad_id)
    expect_error(404, ERR, set_callback, rtc, bad_id)


BAD_CALLBACKS = [
    ("url", "callback.example.com/x", None),
    ("url", "ftp://callback.example.com/x", None),
    ("url", "https://callback.example.com/x?a=b", None),
    ("url", "https://callback.example.com/x#frag", None),
    ("url", "https:///x", None),
    ("url", "https://callback.example.com/" + "a" * 1000, None),
    ("url", "http://127.0.0.1/x", None),
    ("url", "http://10.0.0.1/x", None),
    ("url", "http://localhost/x", None),
    ("auth_key", URL, KEY[:31]),
    ("auth_key", URL, KEY * 2 + "A"),
    ("auth_key", URL, KEY[:31] + "-"),
]


@pytest.mark.parametrize("field,url,key", BAD_CALLBACKS, ids=[f"{f}-{i}" for i, (f, *_) in enumerate(BAD_CALLBACKS)])
def test_invalid_record_callback_is_400_and_changes_nothing(rtc, field, url, key):
    app_id = create_app(rtc).app_id
    before = wire(set_callback(rtc, app_id, URL, KEY))
    expect_error(400, ERR, set_callback, rtc, app_id, url, key, field=field)
    assert wire(show_callback(rtc, app_id)) == before


@pytest.mark.parametrize("body,field", [(AppReq(), "app_name"), (AppReq(app_name=""), "app_name"),
                                        (AppReq(app_name="x" * 65), "app_name"),
                                        (None, "")],  # no body at all: the message may name the body
                         ids=["missing", "empty", "65-chars", "no-body"])
def test_invalid_app_name_is_400(rtc, body, field):
    expect_error(400, ERR, rtc.create_app, CreateAppRequest(body=body), field=field)
    assert list_apps(rtc).count == 0


@pytest.mark.parametrize("field,params", [("limit", dict(limit=0)), ("limit", dict(limit=101)),
                                          ("offset", dict(offset=-1))])
def test_out_of_range_paging_is_400(rtc, field, params):
    # The SDK sends these as they are (`?limit=0`, …): Herald is the one to refuse them.
    expect_error(400, ERR, lambda: list_apps(rtc, **params), field=field)


def test_bad_credentials_are_401(herald, creds, make_rtc_client):
    sk = creds["secret_key"]
    wrong_sk = make_rtc_client(herald, creds, sk[:-1] + ("A" if sk[-1] != "A" else "B"))
    expect_error(401, "APIGW.0301", list_apps, wrong_sk)
    expect_error(401, "APIGW.0301", create_app, wrong_sk)
    unknown_ak = make_rtc_client(herald, {**creds, "access_key": uuid.uuid4().hex.upper()[:20]})
    expect_error(401, "APIGW.0301", list_apps, unknown_ak)


def test_apps_are_scoped_to_the_credentials_project(herald, rtc, make_rtc_client):
    mine = create_app(rtc, "secret-app-7f3").app_id
    mine_cb = wire(set_callback(rtc, mine, URL, KEY))
    other = make_rtc_client(herald, herald.cli("credentials", "create", "--project", uuid.uuid4().hex))
    theirs = create_app(other, "theirs").app_id

    for op in OPS:
        e = expect_error(404, ERR, OPS[op], other, mine)
        assert KEY not in e.error_msg and "secret-app-7f3" not in e.error_msg
    assert wire(list_apps(other)) == {"count": 1, "apps": [wire(show_app(other, theirs))]}
    assert wire(show_app(rtc, mine))["app_name"] == "secret-app-7f3"
    assert wire(show_callback(rtc, mine)) == mine_cb
    assert [a["app_id"] for a in wire(list_apps(rtc))["apps"]] == [mine]


def test_token_sees_only_its_project(herald, rtc, creds):
    app_id = create_app(rtc).app_id
    token = herald.cli("tokens", "create", "--project", creds["project_id"])["token"]
    resp = requests.get(f"{herald.base_url}/v2/apps", headers={"X-Auth-Token": token}, timeout=30)
    assert resp.status_code == 200 and [a["app_id"] for a in resp.json()["apps"]] == [app_id], resp.text
    assert_request_id(resp.headers.get("X-request-Id"))
    other = herald.cli("tokens", "create", "--project", uuid.uuid4().hex)["token"]
    resp = requests.get(f"{herald.base_url}/v2/apps/{app_id}", headers={"X-Auth-Token": other}, timeout=30)
    assert (resp.status_code, resp.json()["error_code"]) == (404, ERR), resp.text


# ---- ingest and delivery (end to end) -----------------------------------------------------

class Receiver:
    """An HTTP server on 127.0.0.1 that answers 200 and queues (path, headers, raw body)."""

    def __init__(self):
        received = self.received = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                received.put((self.path, self.headers, self._body()))
                answer = b'{"status": 1, "result": "success"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _body(self):
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    return self.rfile.read(int(self.headers.get("Content-Length", 0)))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout=30):
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no callback reached the receiver within {timeout}s")


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def private(herald_private, make_rtc_client):
    """(client, ingest) for a fresh project on the server that allows private targets."""
    project = uuid.uuid4().hex
    client = make_rtc_client(herald_private, herald_private.cli("credentials", "create", "--project", project))
    token = herald_private.cli("tokens", "create", "--project", project)["token"]

    def ingest(app_id, body, token=token):
        return requests.post(f"{herald_private.base_url}/v2/apps/{app_id}/record/events", json=body,
                             headers={"X-Auth-Token": token}, timeout=30)

    return client, ingest


EVENT = {  # seed 000's example, minus app_id
    "event_type": "RECORD_FILE_COMPLETE", "stream_name": "mystream", "record_format": "HLS",
    "download_url": "https://abc-rtc-bucket2.obs.cn-north-4.myhuaweicloud.com/Record/mystream.m3u8",
    "file_size": 26254952, "record_duration": 65, "start_time": "2021-04-28T08:56:57Z",
    "end_time": "2021-04-28T08:58:02Z", "width": 1280, "height": 720,
    "obs_location": "http://obs.cn-north-4.myhuaweicloud.com", "obs_bucket": "abc-rtc-bucket2",
    "obs_object": "Record/mystream.m3u8", "job_id": "608196a2fa1xxxxxx515147f32ef463b", "room_id": "room01",
    "detail_message": "fichier prêt — 完成",  # non-ASCII: the signature covers the raw UTF-8 bytes
}


def test_signed_callback_end_to_end(private, receiver):
    client, ingest = private
    app_id = create_app(client).app_id
    key = KEY + "Z" * 32  # 64 characters
    set_callback(client, app_id, receiver.url + "/rtc/record", key)

    event_id = uuid.uuid4().hex
    resp = ingest(app_id, {"event_id": event_id, **EVENT})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"event_id": event_id, "deliveries": 1}
    assert ingest(app_id, {"event_id": event_id, **EVENT}).json() == resp.json()  # idempotent

    path, headers, raw = receiver.next()
    now = time.time()
    assert path == "/rtc/record"
    assert headers["Content-Type"].replace(" ", "").lower() == "application/json;charset=utf-8"
    body = json.loads(raw)
    assert body == {"app_id": app_id, **EVENT}  # numbers as numbers; no event_id, no nulls, nothing extra
    assert all(type(body[k]) is int for k in ("file_size", "record_duration", "width", "height"))
    assert (headers["Herald-Event-Id"], headers["Herald-Delivery-Attempt"]) == (event_id, "1")

    rand, ts, sig = headers["X-Rtc-Rand"], headers["X-Rtc-Timestamp"], headers["X-Rtc-Signature"]
    assert rand.isdigit() and int(rand) < 2 ** 32, rand
    assert ts.isdigit() and abs(int(ts) - now) <= 60, ts
    expected = hmac.new(key.encode(), rand.encode() + ts.encode() + raw, hashlib.sha256).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", sig) and hmac.compare_digest(sig, expected), (sig, expected)


def test_unsigned_callback_without_auth_key_then_removed(private, receiver):
    client, ingest = private
    app_id = create_app(client).app_id
    set_callback(client, app_id, receiver.url + "/plain")
    event = {"event_type": "CLOUD_RECORD_SERVER_OVER", "stream_name": "s1", "job_id": "job-1",
             "detail_message": "job finished"}
    resp = ingest(app_id, event)
    assert resp.status_code == 202 and resp.json()["deliveries"] == 1, resp.text

    path, headers, raw = receiver.next()
    assert path == "/plain" and json.loads(raw) == {"app_id": app_id, **event}
    assert headers["Herald-Event-Id"] == resp.json()["event_id"]
    assert not {"X-Rtc-Rand", "X-Rtc-Timestamp", "X-Rtc-Signature"} & {h.title() for h in headers}

    set_callback(client, app_id, "")  # an empty url removes the callback: nothing to deliver
    resp = ingest(app_id, event)
    assert resp.status_code == 202 and resp.json()["deliveries"] == 0, resp.text


@pytest.mark.parametrize("field,event", [
    ("event_type", {"event_type": "RECORD_OVER", "stream_name": "s"}),  # Live-only type
    ("event_type", {"event_type": "RECORD_BOGUS", "stream_name": "s"}),
    ("event_type", {"stream_name": "s"}),
    ("stream_name", {"event_type": "RECORD_NEW_FILE_START"}),
    ("file_size", {"event_type": "RECORD_FILE_COMPLETE", "stream_name": "s", "file_size": "big"}),
])
def test_invalid_event_is_400_and_not_delivered(private, receiver, field, event):
    client, ingest = private
    app_id = create_app(client).app_id
    set_callback(client, app_id, receiver.url + "/hook")
    resp = ingest(app_id, event)
    assert resp.status_code == 400 and field in resp.json()["error_msg"], resp.text
    # Same stream, so per-stream order puts anything stored by the refused request first.
    good = {"event_type": "RECORD_NEW_FILE_START", "stream_name": "s"}
    assert ingest(app_id, good).status_code == 202
    assert json.loads(receiver.next()[2]) == {"app_id": app_id, **good}


def test_ingest_for_unknown_or_foreign_app_is_404(herald_private, private):
    client, ingest = private
    app_id = create_app(client).app_id
    event = {"event_type": "RECORD_NEW_FILE_START", "stream_name": "s"}
    assert ingest(uuid.uuid4().hex[:24], event).status_code == 404
    foreign = herald_private.cli("tokens", "create", "--project", uuid.uuid4().hex)["token"]
    assert ingest(app_id, event, token=foreign).status_code == 404
    assert ingest(app_id, event, token="garbage").status_code == 401
