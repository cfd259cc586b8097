// Herald's web console (SPEC §8) in a real browser: Debian's chromium, driven by
// playwright-core, against a real `herald serve`. Every step is checked through the public
// API as well as on the page; any browser-console error fails the test (only the 400s the
// tests provoke on purpose are expected). Screenshots go to target/console-screenshots/.
//
// Run by scripts/test (after `cargo build --bin herald`): `npm ci && npm test` here, with
// HERALD_BIN pointing at the binary and CHROMIUM at the browser (default /usr/bin/chromium).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(fileURLToPath(import.meta.url), "../../..");
const HERALD = process.env.HERALD_BIN || join(ROOT, "target/debug/herald");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target/console-screenshots");
const PROJECT = "c0501e0000000000000000000000000a";
const KEY = "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z";
const WAIT = 15_000;

let server, base, token, browser, dataDir;

/** A loopback port nothing listens on: callbacks to it are refused at once. */
async function closedPort() {
  const probe = createServer();
  await new Promise((ok) => probe.listen(0, "127.0.0.1", ok));
  const { port } = probe.address();
  await new Promise((ok) => probe.close(ok));
  return port;
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), "herald-console-"));
  server = spawn(HERALD, ["serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--allow-private-targets"], {
    // Sources may record below /var/rec and /srv only (SPEC §7: none without a root).
    env: { ...process.env, HERALD_RETRY_SCHEDULE: "0s", HERALD_RECORD_ROOTS: "/var/rec:/srv", RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  base = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error("herald serve did not start")), 30_000);
    server.stdout.once("data", (chunk) => {
      clearTimeout(timer);
      ok(String(chunk).trim().replace("listening on ", ""));
    });
  });
  const created = execFileSync(HERALD, ["tokens", "create", "--project", PROJECT, "--data-dir", dataDir, "--json"]);
  token = JSON.parse(created).token;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** The table row holding `text`, to reach its "Edit", "Delete", "Configure" or "Retry". */
const row = (page, text) => page.getByRole("row").filter({ hasText: text });

/** A recording source's section, named by its heading, to reach its "Copy" or "Delete". */
const sourceSection = (page, name) => page.getByRole("region", { name, exact: true });

/** The public API, as a script would call it. */
async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { "X-Auth-Token": token, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** A page of `width` px whose console errors are collected; `expected(n)` allows n more
 *  "Failed to load resource" errors (the answers the test provokes on purpose). */
async function openPage(width) {
  const context = await browser.newContext({ viewport: { width, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  let allowed = 0;
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    if (allowed > 0 && message.text().startsWith("Failed to load resource")) allowed -= 1;
    else errors.push(message.text());
  });
  page.on("pageerror", (error) => errors.push(String(error)));
  return { page, errors, context, expected: (n) => { allowed += n; } };
}

async function signIn(page) {
  await page.goto(base + "/");
  assert.equal(new URL(page.url()).pathname, "/console/");
  await page.getByLabel("Access token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Callback configurations" }).waitFor();
}

async function noSidewaysScroll(page) {
  const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width, `the page scrolls sideways: ${scroll} > ${width}`);
}

/** Tabs (forwards, or backwards with `back`) until the focus is on `name`, a control of
 *  `tag`; fails if 40 presses do not reach it. */
async function tabTo(page, name, tag, back = false) {
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press(back ? "Shift+Tab" : "Tab");
    if (await page.evaluate(([n, t]) => document.activeElement?.textContent === n
      && document.activeElement.tagName === t, [name, tag])) return;
  }
  assert.fail(`the ${name} ${tag.toLowerCase()} cannot be reached with ${back ? "Shift+Tab" : "Tab"}`);
}

async function until(what, check) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 200));
  }
}

test("Live callback configurations, RTC apps and deliveries at 1280 px", async () => {
  const { page, errors, context, expected } = await openPage(1280);
  await signIn(page);

  // Add.
  await page.getByRole("button", { name: "Add Callback Configuration" }).click();
  await page.getByLabel("Ingest domain").fill("push.example.com");
  await page.getByLabel("App", { exact: true }).fill("live");
  await page.getByLabel("Callback URL").fill("https://cb.example.com/notify");
  await page.getByLabel("Recording started").check();
  await page.getByLabel("End of recording").check();
  await page.getByLabel("Authentication Mode").selectOption("MD5");
  await page.getByLabel("Authentication Key").fill(KEY);
  await page.getByRole("button", { name: "OK" }).click();
  await page.getByRole("cell", { name: "https://cb.example.com/notify" }).waitFor();
  let list = await api("GET", `/v1/${PROJECT}/record/callbacks`);
  assert.equal(list.body.total, 1);
  const added = list.body.callback_config[0];
  assert.deepEqual(
    [added.publish_domain, added.app, added.sign_type, added.notify_event_subscription.sort()],
    ["push.example.com", "live", "MD5", ["RECORD_FILE_COMPLETE", "RECORD_OVER", "RECORD_START"]]);
  await page.screenshot({ path: join(SHOTS, "configs-1280.png"), fullPage: true });

  // Refused: the API's message by the form, what was typed kept, nothing stored.
  await page.getByRole("button", { name: "Add Callback Configuration" }).click();
  await page.getByLabel("Ingest domain").fill("other.example.com");
  await page.getByLabel("App", { exact: true }).fill("*");
  await page.getByLabel("Callback URL").fill("https://cb.example.com/notify?token=1");
  expected(1);
  await page.getByRole("button", { name: "OK" }).click();
  const alert = page.getByRole("alert").filter({ hasText: "notify_callback_url" });
  await alert.waitFor();
  const refused = await api("POST", `/v1/${PROJECT}/record/callbacks`,
    { publish_domain: "other.example.com", app: "*", notify_callback_url: "https://cb.example.com/notify?token=1" });
  assert.equal(await alert.textContent(), refused.body.error_msg);
  assert.equal(await page.getByLabel("Callback URL").inputValue(), "https://cb.example.com/notify?token=1");
  assert.equal(await page.getByLabel("Ingest domain").inputValue(), "other.example.com");
  await page.screenshot({ path: join(SHOTS, "config-refused-1280.png"), fullPage: true });
  await page.getByRole("button", { name: "Cancel" }).click();
  assert.equal((await api("GET", `/v1/${PROJECT}/record/callbacks`)).body.total, 1);

  // Edit.
  await row(page, "push.example.com").getByRole("button", { name: "Edit", exact: true }).click();
  assert.equal(await page.getByLabel("Ingest domain").inputValue(), "push.example.com");
  await page.getByLabel("Callback URL").fill("https://cb.example.com/changed");
  await page.getByRole("button", { name: "OK" }).click();
  await page.getByRole("cell", { name: "https://cb.example.com/changed" }).waitFor();
  const shown = await api("GET", `/v1/${PROJECT}/record/callbacks/${added.id}`);
  assert.equal(shown.body.notify_callback_url, "https://cb.example.com/changed");
  assert.equal(shown.body.sign_type, "MD5", "an edit that leaves the key empty keeps it and its mode");

  // Delete, after confirming.
  await row(page, "push.example.com").getByRole("button", { name: "Delete", exact: true }).click();
  await page.getByRole("dialog").getByRole("button", { name: "OK" }).click();
  await page.getByText("No callback configuration yet.").waitFor();
  assert.equal((await api("GET", `/v1/${PROJECT}/record/callbacks`)).body.total, 0);

  // An RTC app and its recording callback.
  await page.getByRole("link", { name: "Apps" }).click();
  await page.getByRole("button", { name: "Create App" }).click();
  await page.getByLabel("App name").fill("console-app");
  await page.getByRole("button", { name: "OK" }).click();
  await row(page, "console-app").getByRole("link", { name: "Configure", exact: true }).click();
  await page.getByRole("heading", { name: "Recording Callback" }).waitFor();
  await page.getByRole("button", { name: "Edit" }).click();
  await page.getByLabel("Callback URL").fill("https://rtc.example.com/record");
  await page.getByLabel("Private Key").fill(KEY + "0123");
  for (const type of ["RECORD_NEW_FILE_START", "RECORD_FILE_COMPLETE", "CLOUD_RECORD_SERVER_OVER"]) {
    assert.ok(await page.getByLabel(type).isChecked(), `${type} is subscribed by default`);
  }
  await page.getByLabel("RECORD_NEW_FILE_START").uncheck();
  await page.getByRole("button", { name: "OK" }).click();
  await page.getByText("https://rtc.example.com/record").waitFor();
  const apps = await api("GET", "/v2/apps");
  assert.equal(apps.body.count, 1);
  const callback = await api("GET", `/v2/apps/${apps.body.apps[0].app_id}/record-callback`);
  assert.equal(callback.body.record_callback.url, "https://rtc.example.com/record");
  assert.equal(callback.body.record_callback.auth_key, KEY + "0123");
  assert.deepEqual(callback.body.record_callback.notify_event_subscription,
    ["RECORD_FILE_COMPLETE", "CLOUD_RECORD_SERVER_OVER"]);
  await page.screenshot({ path: join(SHOTS, "app-1280.png"), fullPage: true });

  // A dead delivery, retried from the console: a second attempt appears.
  const port = await closedPort();
  const config = await api("POST", `/v1/${PROJECT}/record/callbacks`, {
    publish_domain: "dead.example.com", app: "*", notify_callback_url: `http://127.0.0.1:${port}/cb`,
    notify_event_subscription: ["RECORD_OVER"],
  });
  assert.equal(config.status, 201);
  const ingested = await api("POST", `/v1/${PROJECT}/record/events`, {
    event_id: "dead-1", event_type: "RECORD_OVER", publish_domain: "dead.example.com", app: "live", stream: "s1",
  });
  assert.equal(ingested.status, 202);
  await until("the delivery to die", async () =>
    (await api("GET", `/v1/${PROJECT}/record/deliveries?status=dead`)).body.total === 1);
  await page.getByRole("link", { name: "Deliveries" }).click();
  await page.getByLabel("Status").selectOption("dead");
  await page.getByLabel("Event ID").fill("dead-1");
  await page.getByRole("button", { name: "Filter" }).click();
  const attempts = page.getByRole("list", { name: "Attempts of dead-1" }).getByRole("listitem");
  await until("the dead delivery on the page", async () => (await attempts.count()) === 1);
  assert.match(await attempts.first().textContent(), /no answer · connect error/);
  await row(page, "dead-1").getByRole("button", { name: "Retry", exact: true }).click();
  await until("a second attempt", async () => {
    await page.getByRole("button", { name: "Filter" }).click();
    return (await attempts.count()) === 2;
  });
  const log = await api("GET", `/v1/${PROJECT}/record/deliveries?event_id=dead-1`);
  assert.equal(log.body.deliveries[0].attempts.length, 2);
  await page.getByText("Accepted events/s").waitFor();
  await until("live figures", async () => (await page.locator("#figures dd").first().textContent()) !== "…");
  await page.screenshot({ path: join(SHOTS, "deliveries-1280.png"), fullPage: true });

  assert.deepEqual(errors, []);
  await context.close();
});

test("keyboard only, at 360 px", async () => {
  const { page, errors, context } = await openPage(360);
  await page.goto(base + "/console/");
  // The token field has the focus; Enter submits.
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Callback configurations" }).waitFor();
  await noSidewaysScroll(page);
  await page.screenshot({ path: join(SHOTS, "configs-360.png"), fullPage: true });
  // Tab to the navigation and follow each link with Enter; the focus is always visible.
  for (const [link, heading, shot] of [["Apps", "Apps", "apps-360.png"], ["Deliveries", "Deliveries", "deliveries-360.png"],
    ["Recording sources", "Recording sources", null], ["Callback configurations", "Callback configurations", null]]) {
    await page.evaluate(() => document.activeElement?.blur());
    await tabTo(page, link, "A");
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, "none", "the focused link shows no focus ring");
    await page.keyboard.press("Enter");
    await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    await noSidewaysScroll(page);
    if (shot) await page.screenshot({ path: join(SHOTS, shot), fullPage: true });
  }
  // Add a configuration with the keyboard alone: the form opens with the focus in it.
  await page.getByRole("button", { name: "Add Callback Configuration" }).focus();
  await page.keyboard.press("Enter");
  await page.keyboard.type("kbd.example.com");
  await page.keyboard.press("Tab");
  await page.keyboard.type("live");
  await page.keyboard.press("Tab");
  await page.keyboard.type("https://cb.example.com/kbd");
  await page.keyboard.press("Enter");
  await page.getByRole("cell", { name: "https://cb.example.com/kbd" }).waitFor();
  await noSidewaysScroll(page);
  await page.screenshot({ path: join(SHOTS, "config-form-360.png"), fullPage: true });
  const list = await api("GET", `/v1/${PROJECT}/record/callbacks?publish_domain=kbd.example.com`);
  assert.equal(list.body.total, 1);
  assert.deepEqual(errors, []);
  await context.close();
});

const sources = () => api("GET", `/v1/${PROJECT}/record/sources?offset=0&limit=100`);

/** Runs the `curl` command of `key` in a MediaMTX snippet the way MediaMTX would, with
 *  `env` for its $MTX_… variables, but through fetch: `curl -sS "URL" --data-urlencode
 *  "name=$VAR"…` is a form POST to URL. Fails unless the hook answers 200. */
async function runMediamtxCommand(snippet, key, env) {
  const line = snippet.split("\n").find((l) => l.trimStart().startsWith(`${key}: `));
  assert.ok(line, `no ${key} in the snippet`);
  const quoted = [...line.matchAll(/"([^"]*)"/g)].map((m) => m[1]);
  assert.match(line, /^\s*\w+: 'curl -sS "[^"]+"( --data-urlencode "[^"]+")+'$/);
  const [url, ...fields] = quoted;
  const form = new URLSearchParams(fields.map((f) => {
    const [name, value] = f.split("=");
    return [name, value.replace(/^\$(\w+)$/, (_, v) => env[v])];
  }));
  const response = await fetch(url, { method: "POST", body: form });
  assert.equal(response.status, 200, `${key}: ${await response.text()}`);
}

test("recording sources at 1280 px", async () => {
  const { page, errors, context, expected } = await openPage(1280);
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: base });
  const app = await api("POST", "/v2/apps", { app_name: "sources-app" });
  assert.equal(app.status, 201);
  const appId = app.body.app_id;
  await signIn(page);
  await page.getByRole("link", { name: "Recording sources" }).click();
  await page.getByRole("heading", { name: "Recording sources", exact: true }).waitFor();
  await page.getByText("No recording source yet.").waitFor();

  // Refused: a relative record directory. The API's message by the form, what was typed kept.
  await page.getByRole("button", { name: "Add Recording Source" }).click();
  assert.equal(await page.getByLabel("Engine").inputValue(), "nginx-rtmp");
  assert.equal(await page.getByLabel("Reports for").inputValue(), "live");
  assert.ok(await page.getByLabel("App ID").isHidden(), "App ID is shown only for RTC");
  await page.getByLabel("Ingest domain").fill("push.example.com");
  await page.getByLabel("Record directory").fill("rec");
  await page.getByLabel("Download base URL").fill("https://media.example.com/vod");
  assert.equal(await page.getByLabel("Max pause").inputValue(), "30s");
  expected(1);
  await page.getByRole("button", { name: "OK" }).click();
  const alert = page.getByRole("alert").filter({ hasText: "record_dir" });
  await alert.waitFor();
  const refused = await api("POST", `/v1/${PROJECT}/record/sources`, {
    engine: "nginx-rtmp", publish_domain: "push.example.com", record_dir: "rec",
    download_base: "https://media.example.com/vod", max_pause: "30s",
  });
  assert.equal(refused.status, 400);
  assert.equal(await alert.textContent(), refused.body.error_msg);
  assert.equal(await page.getByLabel("Ingest domain").inputValue(), "push.example.com");
  assert.equal(await page.getByLabel("Record directory").inputValue(), "rec");
  assert.equal(await page.getByLabel("Download base URL").inputValue(), "https://media.example.com/vod");
  await page.screenshot({ path: join(SHOTS, "source-refused-1280.png"), fullPage: true });
  assert.equal((await sources()).body.total, 0);

  // Corrected and saved: a Live source for an ingest domain.
  await page.getByLabel("Record directory").fill("/var/rec/live");
  await page.getByRole("button", { name: "OK" }).click();
  const liveSection = sourceSection(page, "nginx-rtmp for push.example.com");
  await liveSection.waitFor();
  let list = await sources();
  assert.equal(list.body.total, 1);
  const liveSource = list.body.sources[0];
  assert.deepEqual(
    [liveSource.engine, liveSource.publish_domain, liveSource.record_dir, liveSource.download_base, liveSource.max_pause],
    ["nginx-rtmp", "push.example.com", "/var/rec/live", "https://media.example.com/vod", "30s"]);
  assert.match(liveSource.hook_url, /\/hooks\/nginx-rtmp\/[^/]+$/);
  await liveSection.getByText(liveSource.hook_url, { exact: true }).waitFor();
  const liveSnippet = await liveSection.locator("pre").textContent();
  assert.ok(liveSnippet.includes(`on_record_done ${liveSource.hook_url};`), liveSnippet);
  assert.ok(liveSnippet.includes("record_path /var/rec/live;"), liveSnippet);
  // "Copy" puts the snippet, exactly as shown, on the clipboard.
  await liveSection.getByRole("button", { name: "Copy", exact: true }).click();
  await page.getByRole("status").filter({ hasText: "Configuration copied." }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), liveSnippet);

  // An RTC source for the app, picked by name: "Ingest domain" gives way to "App ID".
  await page.getByRole("button", { name: "Add Recording Source" }).click();
  await page.getByLabel("Engine").selectOption("mediamtx");
  await page.getByLabel("Reports for").selectOption({ label: "RTC" });
  assert.ok(await page.getByLabel("Ingest domain").isHidden(), "Ingest domain is shown only for Live");
  await page.getByLabel("App ID").selectOption({ label: `sources-app (${appId})` });
  await page.getByLabel("Record directory").fill("/var/rec/rtc");
  await page.getByLabel("Max pause").fill("2m");
  // SPEC §7.1: a record format and the Storage group; the secret is never shown again.
  await page.getByLabel("Record format").selectOption("MP4");
  const storage = page.getByRole("group", { name: "Storage" });
  await storage.getByLabel("Endpoint").fill("https://obs.cn-north-4.myhuaweicloud.com");
  await storage.getByLabel("Region").fill("cn-north-4");
  await storage.getByLabel("Bucket").fill("rtc-recordings");
  await storage.getByLabel("Access Key ID").fill("AKCONSOLE");
  await storage.getByLabel("Secret Access Key").fill("console-secret-access-key");
  await storage.getByLabel("Object path").fill("{app_id}/{stream}/{file_start_time_unix}");
  await storage.getByLabel("Delete local file after upload").check();
  assert.equal(await storage.getByLabel("Path style").isChecked(), false);
  await page.getByRole("button", { name: "OK" }).click();
  const rtcSection = sourceSection(page, "mediamtx for app sources-app");
  await rtcSection.waitFor();
  list = await sources();
  assert.equal(list.body.total, 2);
  const rtcSource = list.body.sources.find((s) => s.engine === "mediamtx");
  assert.deepEqual(
    [rtcSource.app_id, rtcSource.publish_domain, rtcSource.record_dir, rtcSource.download_base, rtcSource.max_pause],
    [appId, undefined, "/var/rec/rtc", null, "120s"]);
  assert.match(rtcSource.hook_url, /\/hooks\/mediamtx\/[^/]+$/);
  assert.equal(rtcSource.record_format, "MP4");
  assert.deepEqual(rtcSource.storage, {
    endpoint: "https://obs.cn-north-4.myhuaweicloud.com", region: "cn-north-4",
    bucket: "rtc-recordings", access_key_id: "AKCONSOLE", secret_access_key: null,
    secret_access_key_set: true, path_style: false,
    object_prefix: "{app_id}/{stream}/{file_start_time_unix}", delete_local: true,
  });
  const liveShown = list.body.sources.find((s) => s.engine !== "mediamtx");
  assert.equal(liveShown.storage, null, "a source without a bucket has none");
  await rtcSection.getByText(rtcSource.hook_url, { exact: true }).waitFor();
  const rtcSnippet = await rtcSection.locator("pre").textContent();
  assert.ok(rtcSnippet.includes(`"${rtcSource.hook_url}?event=segment_complete"`), rtcSnippet);
  assert.ok(rtcSnippet.includes("recordPath: /var/rec/rtc/%path/"), rtcSnippet);

  // The snippet's own MediaMTX commands, as the media server would run them: a stream
  // publishes and a file "completes" that is not there. The source's status shows both.
  const env = { MTX_PATH: "live/cam1", MTX_SEGMENT_PATH: "/var/rec/rtc/live/cam1/missing.mp4", MTX_SEGMENT_DURATION: "1.5" };
  for (const event of ["runOnReady", "runOnRecordSegmentComplete"]) {
    await runMediamtxCommand(rtcSnippet, event, env);
  }
  const status = await until("the missing file in the source's status", async () => {
    const shown = await api("GET", `/v1/${PROJECT}/record/sources/${rtcSource.id}`);
    return shown.body.status.last_error ? shown.body.status : null;
  });
  assert.equal(status.last_error.file, env.MTX_SEGMENT_PATH);
  await page.getByRole("button", { name: "Refresh", exact: true }).click();
  await rtcSection.getByText(status.last_error.message).waitFor();
  const facts = Object.fromEntries(await rtcSection.locator("dl > dt").evaluateAll((dts) =>
    dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
  assert.equal(facts["Open sessions"], String(status.open_sessions));
  assert.equal(facts["Open sessions"], "1");
  assert.equal(facts["Uploads waiting"], String(status.uploads_waiting));
  assert.equal(facts["Record format"], "MP4");
  assert.ok(facts.Storage.startsWith("rtc-recordings at https://obs.cn-north-4.myhuaweicloud.com"), facts.Storage);
  assert.ok(facts["Last error"].includes(env.MTX_SEGMENT_PATH), facts["Last error"]);
  await page.screenshot({ path: join(SHOTS, "sources-1280.png"), fullPage: true });

  // Delete asks first: Cancel keeps the source, OK deletes it.
  await liveSection.getByRole("button", { name: "Delete", exact: true }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Cancel" }).click();
  assert.equal((await sources()).body.total, 2);
  await liveSection.getByRole("button", { name: "Delete", exact: true }).click();
  await page.getByRole("dialog").getByRole("button", { name: "OK" }).click();
  await liveSection.waitFor({ state: "detached" });
  list = await sources();
  assert.deepEqual(list.body.sources.map((s) => s.id), [rtcSource.id]);
  assert.equal((await api("GET", `/v1/${PROJECT}/record/sources/${liveSource.id}`)).status, 404);
  await rtcSection.getByRole("button", { name: "Delete", exact: true }).click();
  await page.getByRole("dialog").getByRole("button", { name: "OK" }).click();
  await page.getByText("No recording source yet.").waitFor();
  assert.equal((await sources()).body.total, 0);

  assert.deepEqual(errors, []);
  await context.close();
});

test("recording sources, keyboard only, at 360 px", async () => {
  const { page, errors, context, expected } = await openPage(360);
  const app = await api("POST", "/v2/apps", { app_name: "kbd-app" });
  assert.equal(app.status, 201);
  const before = (await sources()).body.total;
  await page.goto(base + "/console/");
  await page.keyboard.type(token);
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Callback configurations" }).waitFor();
  await page.evaluate(() => document.activeElement?.blur());
  await tabTo(page, "Recording sources", "A");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: "Recording sources", exact: true }).waitFor();

  // The form opens with the focus on "Engine": arrows pick srs, then RTC, whose "App ID"
  // comes next; typing the app's first letter picks it.
  await tabTo(page, "Add Recording Source", "BUTTON");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement.labels[0].textContent), "Engine");
  await page.keyboard.press("ArrowDown");
  assert.equal(await page.getByLabel("Engine").inputValue(), "srs");
  await page.keyboard.press("Tab");
  await page.keyboard.press("ArrowDown");
  assert.equal(await page.getByLabel("Reports for").inputValue(), "rtc");
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.labels[0].textContent), "App ID");
  await page.keyboard.type("k");
  const appId = app.body.app_id;
  assert.equal(await page.getByLabel("App ID").inputValue(), appId);
  await page.keyboard.press("Tab");
  await page.keyboard.type("rec");
  // Enter in a text field saves; the refusal is shown and the focus stays where it was.
  expected(1);
  await page.keyboard.press("Enter");
  await page.getByRole("alert").filter({ hasText: "record_dir" }).waitFor();
  await noSidewaysScroll(page);
  await page.screenshot({ path: join(SHOTS, "source-form-360.png"), fullPage: true });
  assert.equal(await page.evaluate(() => document.activeElement.labels[0].textContent), "Record directory");
  await page.keyboard.press("Control+A");
  await page.keyboard.type("/srv/srs");
  await page.keyboard.press("Enter");
  const section = sourceSection(page, "srs for app kbd-app");
  await section.waitFor();
  const list = await sources();
  assert.equal(list.body.total, before + 1);
  const source = list.body.sources.find((s) => s.app_id === app.body.app_id);
  assert.deepEqual([source.engine, source.app_id, source.record_dir, source.max_pause], ["srs", appId, "/srv/srs", "30s"]);
  assert.match(source.hook_url, /\/hooks\/srs\/[^/]+$/);
  const snippet = await section.locator("pre").textContent();
  assert.ok(snippet.includes(`on_dvr          ${source.hook_url};`), snippet);
  assert.ok(snippet.includes("dvr_path        /srv/srs/[app]/[stream]/"), snippet);
  await noSidewaysScroll(page);
  await page.screenshot({ path: join(SHOTS, "sources-360.png"), fullPage: true });

  // Delete with the keyboard: the dialog opens on Cancel; Shift+Tab reaches OK.
  await page.evaluate(() => document.activeElement?.blur());
  await tabTo(page, "Delete", "BUTTON");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "the focused button shows no focus ring");
  await page.keyboard.press("Enter");
  await page.getByRole("dialog").waitFor();
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Enter");
  await section.waitFor({ state: "detached" });
  assert.equal((await sources()).body.total, before);
  assert.deepEqual(errors, []);
  await context.close();
});

/** Whether two elements' boxes overlap on the page. */
async function overlap(a, b) {
  const [x, y] = [await a.boundingBox(), await b.boundingBox()];
  return x.x < y.x + y.width && y.x < x.x + x.width && x.y < y.y + y.height && y.y < x.y + x.height;
}

test("day two at 1280 px: retry all matching, replay, endpoint health, toasts clear of the navigation", async () => {
  const { page, errors, context } = await openPage(1280);
  await signIn(page);
  const port = await closedPort();
  const down = await api("POST", `/v1/${PROJECT}/record/callbacks`, {
    publish_domain: "outage.example.com", app: "*", notify_callback_url: `http://127.0.0.1:${port}/cb`,
    notify_event_subscription: ["RECORD_OVER"],
  });
  assert.equal(down.status, 201);
  for (const i of [1, 2, 3]) {
    const ingested = await api("POST", `/v1/${PROJECT}/record/events`, {
      event_id: `outage-${i}`, event_type: "RECORD_OVER", publish_domain: "outage.example.com", app: "live",
      stream: `s${i}`,
    });
    assert.equal(ingested.status, 202);
  }
  const deadOf = async () => (await api("GET", `/v1/${PROJECT}/record/deliveries?status=dead&limit=100`)).body
    .deliveries.filter((d) => d.event_id.startsWith("outage-"));
  await until("the outage's deliveries to die", async () => (await deadOf()).length === 3);
  const deadBefore = (await api("GET", `/v1/${PROJECT}/record/deliveries?status=dead`)).body.total;

  // Retry all matching, after a confirmation that names the count.
  await page.getByRole("link", { name: "Deliveries" }).click();
  await page.getByLabel("Status").selectOption("dead");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByRole("button", { name: "Retry all matching" }).click();
  const dialog = page.getByRole("dialog");
  assert.match(await dialog.textContent(), new RegExp(`Retry all ${deadBefore} dead deliveries\\?`));
  await dialog.getByRole("button", { name: "OK" }).click();
  await page.getByText(`${deadBefore} deliveries queued again.`).waitFor();
  await until("every outage delivery tried again", async () => {
    const dead = await deadOf();
    return dead.length === 3 && dead.every((d) => d.attempts.length === 2);
  });
  await page.screenshot({ path: join(SHOTS, "retry-all-1280.png"), fullPage: true });

  // Endpoint health: the host, its concurrency and its last error.
  await page.getByRole("button", { name: "Filter" }).click();
  const host = row(page, "127.0.0.1");
  await host.first().waitFor();
  assert.match(await host.first().textContent(), /connect error/);
  const health = (await api("GET", `/v1/${PROJECT}/record/endpoints`)).body.endpoints
    .find((e) => e.host === "127.0.0.1");
  assert.equal(health.concurrency, 32);
  assert.equal(health.success_rate, 0);

  // Replay to a new config: the range's three events, counted.
  const repaired = `http://127.0.0.1:${await closedPort()}/repaired`;
  const added = await api("POST", `/v1/${PROJECT}/record/callbacks`, {
    publish_domain: "outage.example.com", app: "live", notify_callback_url: repaired,
    notify_event_subscription: ["RECORD_OVER"],
  });
  assert.equal(added.status, 201);
  await page.getByRole("link", { name: "Callback configurations" }).click();
  await row(page, repaired).getByRole("button", { name: "Replay", exact: true }).click();
  assert.match(await page.getByLabel("Since").inputValue(), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  await page.getByRole("button", { name: "OK" }).click();
  await page.getByText("3 callbacks queued for replay.").waitFor();
  const replayed = (await api("GET", `/v1/${PROJECT}/record/deliveries?limit=100`)).body.deliveries
    .filter((d) => d.url === repaired).map((d) => d.event_id).sort();
  assert.deepEqual(replayed, ["outage-1", "outage-2", "outage-3"]);

  // Replay to an app's record callback, from the app's page.
  const app = await api("POST", "/v2/apps", { app_name: "replay-app" });
  assert.equal(app.status, 201, JSON.stringify(app.body));
  const appId = app.body.app_id;
  const set = await api("PUT", `/v2/apps/${appId}/record-callback`,
    { url: `http://127.0.0.1:${port}/rtc` });
  assert.equal(set.status, 200, JSON.stringify(set.body));
  const rtcEvent = await api("POST", `/v2/apps/${appId}/record/events`,
    { event_id: "rtc-replay-1", event_type: "RECORD_FILE_COMPLETE", stream_name: "cam1" });
  assert.equal(rtcEvent.status, 202, JSON.stringify(rtcEvent.body));
  await page.goto(`${base}/console/#/apps/${appId}`);
  await page.getByRole("heading", { name: "Recording Callback" }).waitFor();
  await page.getByRole("button", { name: "Replay", exact: true }).click();
  await page.getByRole("button", { name: "OK" }).click();
  await page.getByText("1 callback queued for replay.").waitFor();
  await page.getByRole("link", { name: "Callback configurations" }).click();

  // A message after a delete stays clear of the navigation.
  await row(page, repaired).getByRole("button", { name: "Delete", exact: true }).click();
  await page.getByRole("dialog").getByRole("button", { name: "OK" }).click();
  const toast = page.getByText("Callback configuration deleted.");
  await toast.waitFor();
  for (const link of ["Deliveries", "Recording sources", "Callback configurations", "Apps"]) {
    assert.ok(!(await overlap(toast, page.getByRole("link", { name: link }))), `the message covers ${link}`);
  }
  await page.screenshot({ path: join(SHOTS, "toast-1280.png") });
  assert.deepEqual(errors, []);
  await context.close();
});
