// Receives Herald recording callbacks and verifies them (JDK 17, no libraries).
//
// Live callbacks carry auth_sign/auth_timestamp in the JSON body, RTC callbacks X-Rtc-* headers;
// repeats of a Herald-Event-Id are acknowledged and dropped. Run:
//   PORT=9000 HERALD_KEY=<config key or auth_key> [HERALD_SIGN_TYPE=MD5] java Receiver.java
import static java.nio.charset.StandardCharsets.UTF_8;

import com.sun.net.httpserver.*;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.security.MessageDigest;
import java.util.*;
import java.util.regex.*;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public class Receiver {
    static final String KEY = System.getenv("HERALD_KEY");
    static final String SIGN_TYPE = Objects.requireNonNullElse(System.getenv("HERALD_SIGN_TYPE"), "HMACSHA256");
    static final long TOLERANCE = 300; // seconds either side of X-Rtc-Timestamp
    static final List<String> LIVE_SIGNED =
        List.of("event_type", "publish_domain", "app", "stream", "download_url", "play_url");
    static final Map<String, Long> seenSignatures = new HashMap<>(); // X-Rtc-Signature -> its timestamp
    static final Set<String> seenEvents = new HashSet<>(); // Herald-Event-Ids handled (use your database)
    // Top-level "name":"text" pairs, enough for Herald's flat bodies; use Jackson or Gson if you have them.
    static final String TEXT = "\"([^\"\\\\]*+(?:\\\\.[^\"\\\\]*+)*+)\"";
    static final Pattern PAIR = Pattern.compile(TEXT + "\\s*:\\s*" + TEXT);

    static class Rejected extends Exception { Rejected(String reason) { super(reason); } }

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(Objects.requireNonNullElse(System.getenv("PORT"), "9000"));
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
        server.createContext("/", Receiver::handle);
        server.start(); // the default executor is one thread: the collections need no locks
        say("LISTENING " + port);
    }

    static void handle(HttpExchange exchange) throws IOException {
        byte[] raw = exchange.getRequestBody().readAllBytes(); // the exact bytes, never re-serialised
        Headers headers = exchange.getRequestHeaders(); // names are case-insensitive
        String eventId = Objects.requireNonNullElse(headers.getFirst("Herald-Event-Id"), "");
        Map<String, String> body;
        try {
            body = headers.containsKey("X-Rtc-Signature") ? verifyRtc(headers, raw) : verifyLive(raw);
        } catch (Exception e) { // Rejected, or a body that is not what Herald sends
            answer(exchange, 401, "REJECTED " + (e instanceof Rejected ? e.getMessage() : "malformed body"));
            return;
        }
        if (!seenEvents.add(eventId)) answer(exchange, 200, "DUPLICATE " + eventId);
        // Queue the work and answer now: Herald waits at most 5 s, then retries.
        else answer(exchange, 200, "VERIFIED " + body.get("event_type") + " " + eventId);
    }

    static Map<String, String> verifyRtc(Headers headers, byte[] raw) throws Exception {
        String rand = headers.getFirst("X-Rtc-Rand"), ts = headers.getFirst("X-Rtc-Timestamp");
        long now = System.currentTimeMillis() / 1000;
        if (rand == null || ts == null || !ts.matches("[0-9]{1,12}") || Math.abs(now - Long.parseLong(ts)) > TOLERANCE)
            throw new Rejected("missing X-Rtc-Rand or X-Rtc-Timestamp outside tolerance");
        String expected = hmacHex((rand + ts).getBytes(UTF_8), raw);
        if (!equal(expected, headers.getFirst("X-Rtc-Signature"))) throw new Rejected("bad X-Rtc-Signature");
        seenSignatures.values().removeIf(t -> t < now - TOLERANCE);
        // Known by its signature, which covers rand, timestamp and body: a replay is the same signed
        // callback again, while two callbacks can share a 32-bit rand by chance.
        if (seenSignatures.putIfAbsent(expected, Long.parseLong(ts)) != null) throw new Rejected("replayed callback");
        return parse(raw);
    }

    static Map<String, String> verifyLive(byte[] raw) throws Exception {
        Map<String, String> body = parse(raw);
        String sign = body.get("auth_sign"), ts = body.get("auth_timestamp");
        if (sign == null || ts == null || !ts.matches("[0-9]{1,12}"))
            throw new Rejected("missing auth_sign or auth_timestamp");
        if (Long.parseLong(ts) < System.currentTimeMillis() / 1000) throw new Rejected("expired auth_timestamp");
        StringBuilder message = new StringBuilder(ts);
        LIVE_SIGNED.forEach(name -> message.append(body.getOrDefault(name, "")));
        String expected = SIGN_TYPE.equals("MD5")
            ? HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest((KEY + ts).getBytes(UTF_8)))
            : hmacHex(message.toString().getBytes(UTF_8));
        if (!equal(expected, sign)) throw new Rejected("bad auth_sign");
        return body;
    }

    static String hmacHex(byte[]... parts) throws Exception {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(KEY.getBytes(UTF_8), "HmacSHA256"));
        for (byte[] part : parts) mac.update(part);
        return HexFormat.of().formatHex(mac.doFinal()); // lower-case
    }

    static boolean equal(String expected, String got) { // constant time
        return got != null && MessageDigest.isEqual(expected.getBytes(UTF_8), got.getBytes(UTF_8));
    }

    static Map<String, String> parse(byte[] raw) {
        Map<String, String> fields = new HashMap<>();
        Matcher m = PAIR.matcher(new String(raw, UTF_8));
        while (m.find()) fields.putIfAbsent(unescape(m.group(1)), unescape(m.group(2)));
        return fields;
    }

    static String unescape(String s) { // JSON escapes: \" \\ \/ \b \f \n \r \t and u + 4 hex digits
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c != '\\') { out.append(c); continue; }
            int k = "bfnrt".indexOf(c = s.charAt(++i));
            if (c == 'u') { out.append((char) Integer.parseInt(s.substring(i + 1, i + 5), 16)); i += 4; }
            else out.append(k >= 0 ? "\b\f\n\r\t".charAt(k) : c);
        }
        return out.toString();
    }

    static void answer(HttpExchange exchange, int status, String line) throws IOException {
        say(line);
        byte[] payload = (status == 200 ? "{\"status\":1,\"result\":\"success\"}" : "{\"status\":0}").getBytes(UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        exchange.sendResponseHeaders(status, payload.length);
        try (var out = exchange.getResponseBody()) { out.write(payload); }
    }

    static void say(String line) {
        System.out.println(line);
        System.out.flush();
    }
}
