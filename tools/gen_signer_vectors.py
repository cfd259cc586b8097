#!/usr/bin/env python3
"""Generate AK/SK "SDK-HMAC-SHA256" signature test vectors with the official
Huawei Cloud Python SDK signer, for Herald's request-signature verifier.

Every vector is signed by the SDK's own code: most go through the real
client path (LiveClient's ``_*_http_info`` request description ->
``Client.build_future_request`` -> ``BasicCredentials.sign_request``, which
adds X-Project-Id -> ``huaweicloudsdkcore.signer.signer.Signer.sign``). A few
are bare ``SdkRequest`` objects signed directly by ``Signer``. X-Sdk-Date is
set to a fixed value before signing, so the output is deterministic. The
canonical request and string-to-sign are the return values of the signer's
own ``_process_canonical_request`` / ``_process_string_to_sign`` (recorded by
a pass-through wrapper). Nothing is sent over the network.

Each vector records the request as it goes on the wire: ``raw_path`` and
``raw_query`` come from ``request.uri`` after the signer has rewritten it
(so the query on the wire is already the sorted, re-encoded canonical query),
``headers`` lists every signed header with the value as sent,
``unsigned_headers`` lists headers that are sent but not signed (names with
'_'), and ``body`` is the UTF-8 body as sent ("" when the SDK passes
``None``, see ``sdk_body``).

``--check`` recomputes every authorization from the recorded wire fields using
only hashlib/hmac/urllib.parse (not the SDK) and exits non-zero on any
disagreement.

Committed file produced with: Python 3.11.7, huaweicloudsdkcore 3.1.219,
huaweicloudsdklive 3.1.219 (the exact installed versions are also written
into the JSON under "package_versions").

Regenerate (from the repository root):

    /tmp/sdkvenv/bin/python tools/gen_signer_vectors.py > crates/herald-core/tests/fixtures/sdk_signer_vectors.json

Check (plain Python 3, SDK not needed):

    python3 tools/gen_signer_vectors.py --check [crates/herald-core/tests/fixtures/sdk_signer_vectors.json]
"""

import hashlib
import hmac
import json
import sys
from urllib.parse import quote, unquote

FIXTURE = "crates/herald-core/tests/fixtures/sdk_signer_vectors.json"
FIXED_DATE = "20261122T103000Z"

# Fake but realistically shaped credentials (AK: 20 upper-case alnum, SK: 40 alnum).
AK = "HPUAXPJ4TQW7ZKNV2M8R"
SK = "mQ3vT8kZp2Lx9RcN5wYb7Hf4Js6Ud1Ae0GiKoPlE"
AK2 = "QZ7N0W3KD9XLRB5TEMJ2"
SK2 = "Gx4pR9sLk2Vb7Nq1Wz8Tc3Hm6Yd0Jf5Ua2Ee7Ko9"
PROJECT_ID = "p1"
PROJECT_ID_REAL = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"  # 32 hex, the real shape

ENDPOINT = "http://127.0.0.1:8080"
# The real client sends "huaweicloud-usdk-python/3.0; <HttpConfig.user_agent>",
# where the suffix is normally generated from the OS, Python and a per-user
# app id stored in ~/.huaweicloud. Fix it so the output is deterministic.
UA_SUFFIX = ("os/Linux#6.8.0#x86_64 python/3.11.7 impl/CPython; "
             "app/5f0c9b2e-7d41-4c6a-9e3b-2a8d1f6c4b70")

ALGORITHM = "SDK-HMAC-SHA256"
EMPTY_HASH = hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------
# Generation (needs the SDK)
# --------------------------------------------------------------------------

def _generate():
    # Importing the SDK (huaweicloudsdkcore.auth.internal -> http.user_agent)
    # writes ~/.huaweicloud/application_id when missing. Point HOME at a
    # throw-away directory so regenerating leaves no trace; the User-Agent is
    # pinned below anyway.
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as home:
        old_home = os.environ.get("HOME")
        os.environ["HOME"] = home
        try:
            return _generate_in_home()
        finally:
            if old_home is None:
                del os.environ["HOME"]
            else:
                os.environ["HOME"] = old_home


def _generate_in_home():
    from importlib.metadata import version

    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer
    from huaweicloudsdklive.v1 import (
        CreateRecordCallbackConfigRequest,
        DeleteRecordCallbackConfigRequest,
        ListRecordCallbackConfigsRequest,
        RecordCallbackConfigRequest,
        UpdateRecordCallbackConfigRequest,
    )
    from huaweicloudsdklive.v1.live_client import LiveClient

    # Pass-through wrappers recording what the official signer computed.
    recorded = {}
    orig_canonical = Signer._process_canonical_request
    orig_sts = Signer._process_string_to_sign

    def rec_canonical(self, request, signed_headers):
        out = orig_canonical(self, request, signed_headers)
        recorded["canonical_request"] = out
        return out

    def rec_sts(self, canonical_request, t):
        out = orig_sts(self, canonical_request, t)
        recorded["string_to_sign"] = out
        return out

    Signer._process_canonical_request = rec_canonical
    Signer._process_string_to_sign = rec_sts

    def make_client(ak=AK, sk=SK, project_id=PROJECT_ID, endpoint=ENDPOINT, ignore_ct_get=False):
        # Same wiring as ClientBuilder.build(), minus the user-agent module
        # (which would write ~/.huaweicloud/application_id).
        config = HttpConfig.get_default_config()
        config.user_agent = UA_SUFFIX
        config.ignore_content_type_for_get_request = ignore_ct_get
        client = LiveClient()
        client.with_credentials(BasicCredentials(ak, sk, project_id)).with_config(config)
        client.with_http_handler(None)
        client.init_http_client()
        client.with_endpoints([endpoint])
        return client

    def via_client(client, http_info, extra_headers=None):
        """Exactly what LiveClient.<op>() does up to the wire, with X-Sdk-Date pinned."""
        header_params = dict(http_info.get("header_params") or {})
        header_params.update(extra_headers or {})
        header_params["X-Sdk-Date"] = FIXED_DATE
        recorded.clear()
        req = client.build_future_request(
            http_info["method"], http_info["resource_path"], http_info.get("path_params"),
            http_info.get("query_params"), header_params, http_info.get("body"),
            http_info.get("post_params"), http_info.get("cname"), http_info.get("response_type"),
            http_info.get("collection_formats") or {}, None).result()
        return req, client.get_credentials().ak, client.get_credentials().sk

    def via_signer(ak, sk, **kw):
        """A bare SdkRequest signed directly by Signer."""
        kw.setdefault("header_params", {})
        kw["header_params"]["X-Sdk-Date"] = FIXED_DATE
        req = SdkRequest(**kw)
        recorded.clear()
        Signer(BasicCredentials(ak, sk)).sign(req)
        return req, ak, sk

    def raw(method, resource_path, query_params=None, header_params=None, body=None):
        # Generic http_info, as a generated *_http_info() would produce.
        return {"method": method, "resource_path": resource_path, "query_params": query_params or [],
                "header_params": header_params or {}, "body": body, "path_params": {},
                "collection_formats": {}, "post_params": {}}

    live = make_client()
    live_real_project = make_client(AK2, SK2, PROJECT_ID_REAL, "https://live.cn-north-4.myhuaweicloud.com")
    live_no_ct_get = make_client(ignore_ct_get=True)

    cb_body = RecordCallbackConfigRequest(
        publish_domain="push.example.com", app="live",
        notify_callback_url="https://cb.example.com/notify",
        notify_event_subscription=["RECORD_FILE_COMPLETE"])
    cb_body_cn = RecordCallbackConfigRequest(
        publish_domain="push.example.com", app="直播",
        notify_callback_url="https://cb.example.com/notify",
        notify_event_subscription=["RECORD_FILE_COMPLETE"])
    cb_body_raw_utf8 = ('{"publish_domain":"push.example.com","app":"直播",'
                        '"notify_callback_url":"https://cb.example.com/notify",'
                        '"notify_event_subscription":["RECORD_FILE_COMPLETE"]}')
    json_ct = "application/json; charset=utf-8"

    cases = []

    def add(name, note, signed, **extra):
        req, ak, sk = signed
        cases.append((name, note, req, ak, sk, dict(recorded), extra))

    add("live_list_callbacks",
        "LiveClient.list_record_callback_configs; SDK builds query in order publish_domain, app, offset, limit",
        via_client(live, LiveClient._list_record_callback_configs_http_info(ListRecordCallbackConfigsRequest(
            publish_domain="push.example.com", app="live", offset=0, limit=10))))
    add("list_query_unsorted_input",
        "query given as limit, offset, app, publish_domain; wire query is sorted by the signer",
        via_client(live, raw("GET", "/v1/{project_id}/record/callbacks",
                             [("limit", 20), ("offset", 40), ("app", "live"), ("publish_domain", "play.example.com")],
                             {"Content-Type": "application/json"})))
    add("list_query_space_and_star",
        "publish_domain with a space, app='*' -> %20 and %2A on the wire",
        via_client(live, LiveClient._list_record_callback_configs_http_info(ListRecordCallbackConfigsRequest(
            publish_domain="push example.com", app="*", offset=0, limit=10))))
    add("list_query_slash_colon",
        "values containing '/' and ':' are percent-encoded (%2F, %3A)",
        via_client(live, LiveClient._list_record_callback_configs_http_info(ListRecordCallbackConfigsRequest(
            publish_domain="rtmp://push.example.com:1935/live", app="live/sub", limit=100))))
    add("list_query_reserved_chars",
        "value with + = & ~ % and an empty value; '~' stays literal, '+' is %2B, empty value gives 'app='",
        via_client(live, raw("GET", "/v1/{project_id}/record/callbacks",
                             [("publish_domain", "a+b=c&d~e%f"), ("app", "")],
                             {"Content-Type": "application/json"})))
    add("list_query_sort_decoded_not_encoded",
        "repeated key; pairs are sorted on DECODED values ('~live' < 'élive'), which differs from "
        "sorting the encoded strings ('%C3%A9live' < '~live')",
        via_client(live, raw("GET", "/v1/{project_id}/record/callbacks",
                             [("app", "élive"), ("app", "~live"), ("publish_domain", "push.example.com")],
                             {"Content-Type": "application/json"})))
    add("list_query_bool_int",
        "bool query value serialized as lower-case 'true', int as decimal",
        via_client(live, raw("GET", "/v1/{project_id}/stream/snapshot",
                             [("page_size", 20), ("fuzzy", True), ("domain", "push.example.com")],
                             {"Content-Type": "application/json"})))
    add("live_list_no_content_type",
        "HttpConfig.ignore_content_type_for_get_request=True: GET without Content-Type",
        via_client(live_no_ct_get, LiveClient._list_record_callback_configs_http_info(
            ListRecordCallbackConfigsRequest(publish_domain="push.example.com"))))
    add("live_create_callback_json",
        "LiveClient.create_record_callback_config; simplejson body with ', ' and ': ' separators",
        via_client(live, LiveClient._create_record_callback_config_http_info(
            CreateRecordCallbackConfigRequest(body=cb_body))))
    add("live_create_callback_non_ascii_model",
        "non-ASCII in a model body: the SDK's simplejson escapes it (\\u76f4\\u64ad), body is pure ASCII",
        via_client(live, LiveClient._create_record_callback_config_http_info(
            CreateRecordCallbackConfigRequest(body=cb_body_cn))))
    add("create_callback_raw_utf8_body",
        "str body with raw UTF-8 '直播' (multi-byte) passed through unchanged; hash is over UTF-8 bytes",
        via_client(live, raw("POST", "/v1/{project_id}/record/callbacks", None,
                             {"Content-Type": json_ct}, cb_body_raw_utf8)))
    add("live_create_callback_empty_body",
        "POST with no body: SDK passes body=None, payload hash is the empty hash, requests sends Content-Length: 0",
        via_client(live, LiveClient._create_record_callback_config_http_info(
            CreateRecordCallbackConfigRequest())))
    add("live_update_callback_put",
        "LiveClient.update_record_callback_config (PUT with JSON body)",
        via_client(live, LiveClient._update_record_callback_config_http_info(
            UpdateRecordCallbackConfigRequest(id="6f1e2d3c4b5a69788796a5b4c3d2e1f0", body=cb_body))))
    add("live_delete_callback",
        "LiveClient.delete_record_callback_config: DELETE, body None, still Content-Type application/json",
        via_client(live, LiveClient._delete_record_callback_config_http_info(
            DeleteRecordCallbackConfigRequest(id="6f1e2d3c4b5a69788796a5b4c3d2e1f0"))))
    add("path_percent_space",
        "resource_path with a%20b (as the SDK produces for id='a b')",
        via_client(live, raw("DELETE", "/v1/p1/record/callbacks/a%20b", None,
                             {"Content-Type": "application/json"})))
    add("path_percent_non_ascii",
        "resource_path caf%C3%A9 (id='café')",
        via_client(live, LiveClient._delete_record_callback_config_http_info(
            DeleteRecordCallbackConfigRequest(id="café"))))
    add("path_encoded_slash",
        "id='a b/c' -> wire a%20b%2Fc; canonical URI unquotes the WHOLE path before splitting on '/', "
        "so %2F becomes a real '/' separator in the canonical URI",
        via_client(live, LiveClient._update_record_callback_config_http_info(
            UpdateRecordCallbackConfigRequest(id="a b/c", body=cb_body))))
    add("path_literal_plus",
        "literal '+' in the wire path is NOT a space: canonical segment is x%2By",
        via_signer(AK, SK, method="GET", schema="http", host="127.0.0.1:8080",
                   resource_path="/v1/p1/record/callbacks/x+y", query_params=[]))
    add("path_trailing_slash",
        "path already ending in '/': canonical URI does not add another",
        via_signer(AK, SK, method="GET", schema="http", host="127.0.0.1:8080",
                   resource_path="/v1/p1/record/callbacks/", query_params=[]))
    add("real_project_id_https_default_port",
        "32-hex project id in path and X-Project-Id; https endpoint without port -> Host has no port",
        via_client(live_real_project, LiveClient._list_record_callback_configs_http_info(
            ListRecordCallbackConfigsRequest(limit=10))))
    add("header_with_underscore_unsigned",
        "header 'X_Request_Tag' contains '_' so the signer leaves it out of SignedHeaders (still sent)",
        via_client(live, raw("POST", "/v1/{project_id}/record/callbacks", None,
                             {"Content-Type": json_ct, "X_Request_Tag": "tag-1"},
                             '{"publish_domain":"push.example.com","app":"live"}')))
    add("header_value_trimmed",
        "extra header with surrounding whitespace: signer trims both canonical and sent value; inner spaces kept",
        via_client(live, raw("GET", "/v1/{project_id}/record/callbacks", [("app", "live")],
                             {"Content-Type": "application/json", "X-Request-Id": "  req 42  x  "})))
    add("unsigned_payload_text_plain",
        "non-JSON Content-Type: signer adds X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD (signed) and uses it as payload hash",
        via_client(live, raw("POST", "/v1/{project_id}/record/callbacks", None,
                             {"Content-Type": "text/plain; charset=utf-8"}, "hello, herald")),
        expect_unsigned_payload=True)
    add("unsigned_payload_header_but_empty_body",
        "non-JSON Content-Type with NO body: X-Sdk-Content-Sha256: UNSIGNED-PAYLOAD is added and signed, "
        "but the payload hash is the EMPTY hash (empty-body check comes first)",
        via_client(live, raw("DELETE", "/v1/{project_id}/record/callbacks/cb1", None,
                             {"Content-Type": "text/plain"})),
        expect_unsigned_payload=False)
    add("minimal_sdkrequest",
        "bare SdkRequest, no Content-Type/User-Agent/X-Project-Id: only host;x-sdk-date signed",
        via_signer(AK2, SK2, method="GET", schema="http", host="127.0.0.1:8080",
                   resource_path="/v1/p1/record/callbacks", query_params=[("app", "live")]))

    vectors = []
    for name, note, req, ak, sk, rec, extra in cases:
        path, _, query = req.uri.partition("?")
        auth = req.header_params["Authorization"]
        signed = auth.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        headers, unsigned = [], []
        for k, v in req.header_params.items():
            if k == "Authorization":
                continue
            # The signer stores values as latin-1 decoded UTF-8 bytes (what goes on the wire).
            v = v.encode("iso-8859-1").decode("utf-8")
            (headers if k.lower() in signed else unsigned).append([k, v])
        body = req.body
        if body is None:
            sdk_body = "None"
            body_text = ""
        else:
            sdk_body = type(body).__name__
            body_text = body.decode("utf-8") if isinstance(body, bytes) else str(body)
        v = {
            "name": name,
            "note": note,
            "ak": ak,
            "sk": sk,
            "method": req.method,
            "raw_path": path,
            "raw_query": query,
            "headers": headers,
            "unsigned_headers": unsigned,
            "body": body_text,
            "sdk_body": sdk_body,
            "canonical_request": rec["canonical_request"],
            "string_to_sign": rec["string_to_sign"],
            "authorization": auth,
        }
        v.update(extra)
        vectors.append(v)

    Signer._process_canonical_request = orig_canonical
    Signer._process_string_to_sign = orig_sts

    return {
        "generated_by": "tools/gen_signer_vectors.py with huaweicloudsdkcore %s" % version("huaweicloudsdkcore"),
        "package_versions": {
            "python": "%d.%d.%d" % sys.version_info[:3],
            "huaweicloudsdkcore": version("huaweicloudsdkcore"),
            "huaweicloudsdklive": version("huaweicloudsdklive"),
        },
        "x_sdk_date": FIXED_DATE,
        "vectors": vectors,
    }


# --------------------------------------------------------------------------
# Independent check (hashlib/hmac only, no SDK)
# --------------------------------------------------------------------------

def _enc(s):
    return quote(s, safe="~")


def _canonical_uri(raw_path):
    out = "/".join(_enc(seg) for seg in unquote(raw_path).split("/"))
    return out if out.endswith("/") else out + "/"


def _canonical_query(raw_query):
    if not raw_query:
        return ""
    pairs = []
    for part in raw_query.split("&"):
        k, _, v = part.partition("=")
        pairs.append((unquote(k), unquote(v)))  # no '+' -> space
    pairs.sort()
    return "&".join("%s=%s" % (_enc(k), _enc(v)) for k, v in pairs)


def _check_vector(v):
    problems = []
    auth = v["authorization"]
    prefix = ALGORITHM + " "
    if not auth.startswith(prefix):
        return ["authorization does not start with %r" % prefix]
    fields = dict(p.strip().split("=", 1) for p in auth[len(prefix):].split(","))
    if fields["Access"] != v["ak"]:
        problems.append("Access %r != ak %r" % (fields["Access"], v["ak"]))
    hdrs = {}
    for k, val in v["headers"]:
        hdrs[k.lower()] = val.strip()
    signed = sorted(k for k in hdrs if "_" not in k)
    if ";".join(signed) != fields["SignedHeaders"]:
        problems.append("SignedHeaders %r != recomputed %r" % (fields["SignedHeaders"], ";".join(signed)))
    for k, _ in v.get("unsigned_headers", []):
        if "_" not in k:
            problems.append("unsigned header %r has no '_'" % k)
    body = v["body"].encode("utf-8")
    if not body:
        payload = EMPTY_HASH
    elif "x-sdk-content-sha256" in hdrs:
        payload = hdrs["x-sdk-content-sha256"]
    else:
        payload = hashlib.sha256(body).hexdigest()
    if v.get("expect_unsigned_payload") and payload != "UNSIGNED-PAYLOAD":
        problems.append("expected UNSIGNED-PAYLOAD, got %s" % payload)
    canonical = "\n".join([
        v["method"].upper(),
        _canonical_uri(v["raw_path"]),
        _canonical_query(v["raw_query"]),
        "".join("%s:%s\n" % (k, hdrs[k]) for k in signed),
        ";".join(signed),
        payload,
    ])
    if canonical != v["canonical_request"]:
        problems.append("canonical request differs:\n  sdk:  %r\n  mine: %r" % (v["canonical_request"], canonical))
    sts = "%s\n%s\n%s" % (ALGORITHM, hdrs["x-sdk-date"], hashlib.sha256(canonical.encode("utf-8")).hexdigest())
    if sts != v["string_to_sign"]:
        problems.append("string to sign differs:\n  sdk:  %r\n  mine: %r" % (v["string_to_sign"], sts))
    sig = hmac.new(v["sk"].encode("utf-8"), sts.encode("utf-8"), hashlib.sha256).hexdigest()
    if sig != fields["Signature"]:
        problems.append("signature differs: sdk %s, mine %s" % (fields["Signature"], sig))
    return problems


def _check(path):
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    bad = 0
    for v in doc["vectors"]:
        problems = _check_vector(v)
        print("%-4s %s" % ("ok" if not problems else "FAIL", v["name"]))
        for p in problems:
            print("     " + p)
        bad += bool(problems)
    print("%d vectors, %d disagreements" % (len(doc["vectors"]), bad))
    return 1 if bad else 0


def main(argv):
    if len(argv) > 1 and argv[1] == "--check":
        return _check(argv[2] if len(argv) > 2 else FIXTURE)
    doc = _generate()
    sys.stdout.reconfigure(encoding="utf-8")
    json.dump(doc, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
