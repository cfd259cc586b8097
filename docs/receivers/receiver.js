// Receives Herald recording callbacks and verifies them (Node.js 20, no npm packages).
//
// Live callbacks carry auth_sign/auth_timestamp in the JSON body, RTC callbacks X-Rtc-* headers;
// repeats of a Herald-Event-Id are acknowledged and dropped. Run:
//   PORT=9000 HERALD_KEY=<config key or auth_key> [HERALD_SIGN_TYPE=MD5] node receiver.js
'use strict';
const crypto = require('node:crypto');
const http = require('node:http');

const PORT = Number(process.env.PORT || 9000);
const KEY = process.env.HERALD_KEY;
const SIGN_TYPE = process.env.HERALD_SIGN_TYPE || 'HMACSHA256'; // Live only: HMACSHA256 or MD5
const TOLERANCE = 300; // seconds either side of X-Rtc-Timestamp
const DIGITS = /^[0-9]{1,12}$/;
const LIVE_SIGNED = ['event_type', 'publish_domain', 'app', 'stream', 'download_url', 'play_url'];
const seenSignatures = new Map(); // X-Rtc-Signature -> its timestamp, kept while a replay could still pass
const seenEvents = new Set(); // Herald-Event-Id already handled (use your database in production)

class Rejected extends Error {}
const hmacHex = (data) => crypto.createHmac('sha256', KEY).update(data).digest('hex');
const nowSecs = () => Math.floor(Date.now() / 1000);

function equal(expected, got) {
  const a = Buffer.from(expected), b = Buffer.from(String(got));
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

function verifyRtc(headers, raw) {
  const rand = headers['x-rtc-rand'] || '', ts = headers['x-rtc-timestamp'] || '', now = nowSecs();
  if (!rand || !DIGITS.test(ts) || Math.abs(now - Number(ts)) > TOLERANCE) {
    throw new Rejected('missing X-Rtc-Rand or X-Rtc-Timestamp outside tolerance');
  }
  const expected = hmacHex(Buffer.concat([Buffer.from(rand + ts), raw]));
  if (!equal(expected, headers['x-rtc-signature'])) throw new Rejected('bad X-Rtc-Signature');
  for (const [s, t] of seenSignatures) if (t < now - TOLERANCE) seenSignatures.delete(s);
  // Known by its signature, which covers rand, timestamp and body: a replay is the same signed
  // callback again, while two callbacks can share a 32-bit rand by chance.
  if (seenSignatures.has(expected)) throw new Rejected('replayed callback');
  seenSignatures.set(expected, Number(ts));
  return JSON.parse(raw);
}

function verifyLive(raw) {
  const body = JSON.parse(raw);
  const { auth_sign: sign, auth_timestamp: ts } = body;
  if (typeof sign !== 'string' || typeof ts !== 'string' || !DIGITS.test(ts)) {
    throw new Rejected('missing auth_sign or auth_timestamp');
  }
  if (Number(ts) < nowSecs()) throw new Rejected('expired auth_timestamp');
  const expected = SIGN_TYPE === 'MD5'
    ? crypto.createHash('md5').update(KEY + ts).digest('hex')
    : hmacHex(ts + LIVE_SIGNED.map((name) => body[name] ?? '').join(''));
  if (!equal(expected, sign)) throw new Rejected('bad auth_sign');
  return body;
}

http.createServer((req, res) => {
  const answer = (status, line) => {
    console.log(line);
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(status === 200 ? '{"status":1,"result":"success"}' : '{"status":0}');
  };
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const raw = Buffer.concat(chunks); // the exact bytes: never verify a re-serialised body
    const eventId = req.headers['herald-event-id'] || '';
    let body;
    try {
      body = 'x-rtc-signature' in req.headers ? verifyRtc(req.headers, raw) : verifyLive(raw);
    } catch (e) { // Rejected, or a body that is not the JSON object expected
      return answer(401, `REJECTED ${e instanceof Rejected ? e.message : 'malformed body'}`);
    }
    if (seenEvents.has(eventId)) return answer(200, `DUPLICATE ${eventId}`);
    seenEvents.add(eventId);
    // Queue the work and answer now: Herald waits at most 5 s, then retries.
    answer(200, `VERIFIED ${body.event_type} ${eventId}`);
  });
}).listen(PORT, '127.0.0.1', () => console.log(`LISTENING ${PORT}`));
