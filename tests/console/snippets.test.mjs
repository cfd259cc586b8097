// The console's ready-to-paste media-server snippets (SPEC §7), without a browser: the
// functions that write them are read from console.js as the page runs them. A record dir
// is pasted into nginx, SRS and MediaMTX configuration files; one with a space or `#` must
// still work there, and none may end its value and become configuration.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
const source = readFileSync(join(ROOT, "crates/herald-api/console/console.js"), "utf8");

/** `configValue` and `engineSnippet`, cut out of console.js. */
function snippetFunctions() {
  const start = source.indexOf("function configValue");
  const snippet = source.indexOf("function engineSnippet");
  const end = source.indexOf("  };\n}\n", source.indexOf("on_record_done", snippet)) + "  };\n}\n".length;
  assert.ok(start >= 0 && snippet > start && end > snippet, "console.js no longer has the snippet functions");
  return new Function(`${source.slice(start, end)}; return { configValue, engineSnippet };`)();
}

const { configValue, engineSnippet } = snippetFunctions();
const lines = (engine, dir) =>
  engineSnippet({ engine, hook_url: "http://herald:8080/hooks/x/s", record_dir: dir }).text
    .split("\n").filter((l) => /record_path|dvr_path|recordPath/.test(l));

test("a plain record dir is pasted as it is", () => {
  assert.deepEqual(lines("nginx-rtmp", "/var/rec/live"), ["    record_path /var/rec/live;"]);
  assert.deepEqual(lines("srs", "/srv/srs"),
    ["    dvr_path        /srv/srs/[app]/[stream]/[2006][01][02]-[15][04][05]-[999].flv;"]);
  assert.deepEqual(lines("mediamtx", "/var/rec/rtc"), ["  recordPath: /var/rec/rtc/%path/%Y-%m-%d_%H-%M-%S-%f"]);
});

test("a record dir with a space or # is quoted for each file's syntax", () => {
  const dir = "/srv/my rec #1";
  assert.deepEqual(lines("nginx-rtmp", dir), ['    record_path "/srv/my rec #1";']);
  assert.deepEqual(lines("srs", dir),
    ['    dvr_path        "/srv/my rec #1/[app]/[stream]/[2006][01][02]-[15][04][05]-[999].flv";']);
  assert.deepEqual(lines("mediamtx", dir), ['  recordPath: "/srv/my rec #1/%path/%Y-%m-%d_%H-%M-%S-%f"']);
});

test("no value can end its quotes or its line", () => {
  // The server refuses such dirs (a 400); the console escapes them all the same.
  const hostile = '/srv/a";\n}\nexec_push sh -c id;\\';
  const value = configValue(hostile);
  assert.ok(!value.includes("\n"), value);
  assert.match(value, /^"([^"\\]|\\.)*"$/, value);
});
