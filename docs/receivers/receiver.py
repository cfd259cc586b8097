#!/usr/bin/env python3
"""Receives Herald recording callbacks and verifies them (Python 3, standard library only).

Live callbacks carry auth_sign/auth_timestamp in the JSON body, RTC callbacks X-Rtc-* headers;
repeats of a Herald-Event-Id are acknowledged and dropped. Run:
    PORT=9000 HERALD_KEY=<config key or auth_key> [HERALD_SIGN_TYPE=MD5] python3 receiver.py
"""
import hashlib, hmac, json, os, re, time
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT = int(os.environ.get("PORT", "9000"))
KEY = os.environ["HERALD_KEY"].encode()
SIGN_TYPE = os.environ.get("HERALD_SIGN_TYPE", "HMACSHA256")  # Live only: HMACSHA256 or MD5
TOLERANCE = 300  # seconds either side of X-Rtc-Timestamp
DIGITS = re.compile(r"[0-9]{1,12}")
LIVE_SIGNED = ("event_type", "publish_domain", "app", "stream", "download_url", "play_url")
seen_signatures = {}  # X-Rtc-Signature -> its timestamp, kept while a replay could still pass
seen_events = set()  # Herald-Event-Id already handled (use your database in production)


class Rejected(Exception):
    pass


def equal(a, b):
    return hmac.compare_digest(a.encode(), b.encode())


def verify_rtc(headers, raw):
    rand, ts = headers.get("X-Rtc-Rand", ""), headers.get("X-Rtc-Timestamp", "")
    now = int(time.time())
    if not rand or not DIGITS.fullmatch(ts) or abs(now - int(ts)) > TOLERANCE:
        raise Rejected("missing X-Rtc-Rand or X-Rtc-Timestamp outside tolerance")
    expected = hmac.new(KEY, (rand + ts).encode() + raw, hashlib.sha256).hexdigest()
    if not equal(expected, headers["X-Rtc-Signature"]):
        raise Rejected("bad X-Rtc-Signature")
    for s in [s for s, t in seen_signatures.items() if t < now - TOLERANCE]:
        del seen_signatures[s]
    # Known by its signature, which covers rand, timestamp and body: a replay is the same signed
    # callback again, while two callbacks can share a 32-bit rand by chance.
    if expected in seen_signatures:
        raise Rejected("replayed callback")
    seen_signatures[expected] = int(ts)
    return json.loads(raw)


def verify_live(raw):
    body = json.loads(raw)
    sign, ts = body.get("auth_sign"), body.get("auth_timestamp")
    if not isinstance(sign, str) or not isinstance(ts, str) or not DIGITS.fullmatch(ts):
        raise Rejected("missing auth_sign or auth_timestamp")
    if int(ts) < int(time.time()):
        raise Rejected("expired auth_timestamp")
    if SIGN_TYPE == "MD5":
        expected = hashlib.md5(KEY + ts.encode()).hexdigest()
    else:
        message = ts + "".join(body.get(name, "") for name in LIVE_SIGNED)
        expected = hmac.new(KEY, message.encode(), hashlib.sha256).hexdigest()
    if not equal(expected, sign):
        raise Rejected("bad auth_sign")
    return body


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))  # the exact bytes
        event_id = self.headers.get("Herald-Event-Id", "")
        try:
            rtc = "X-Rtc-Signature" in self.headers
            body = verify_rtc(self.headers, raw) if rtc else verify_live(raw)
        except Exception as e:  # Rejected, or a body that is not the JSON object expected
            return self.answer(401, f"REJECTED {e if isinstance(e, Rejected) else 'malformed body'}")
        if event_id in seen_events:
            return self.answer(200, f"DUPLICATE {event_id}")
        seen_events.add(event_id)
        # Queue the work and answer now: Herald waits at most 5 s, then retries.
        self.answer(200, f"VERIFIED {body.get('event_type')} {event_id}")

    def answer(self, status, line):
        print(line, flush=True)
        payload = b'{"status":1,"result":"success"}' if status == 200 else b'{"status":0}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):  # keep stdout for the lines above
        pass


server = HTTPServer(("127.0.0.1", PORT), Handler)  # one request at a time: no locks needed
print(f"LISTENING {PORT}", flush=True)
server.serve_forever()
