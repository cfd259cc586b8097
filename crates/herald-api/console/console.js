// Herald console (SPEC §8). A control's accessible name is its visible label, as SPEC §8
// names them ("Edit", "Delete", "Configure", "Retry", "Copy"): the table row or the section
// around it says which item it acts on. Plain JavaScript, no framework: every view is built with `h`
// (text always set as text, never parsed as HTML) from the public API's answers, with the
// signed-in token. The token lives in sessionStorage: it is gone when the browser tab is.

const TOKEN_KEY = "herald.token";
const SAMPLES_KEY = "herald.samples";
const WINDOW_MS = 15 * 60 * 1000;
const SAMPLE_EVERY_MS = 5000;

/// Live event types with the console labels of seed 001.
const LIVE_TYPES = [
  ["RECORD_START", "Recording started"],
  ["RECORD_NEW_FILE_START", "Create a new recording file"],
  ["RECORD_FILE_COMPLETE", "Recording file generation completed"],
  ["RECORD_OVER", "End of recording"],
  ["RECORD_FAILED", "Recording failed"],
];
const RTC_TYPES = ["RECORD_NEW_FILE_START", "RECORD_FILE_COMPLETE", "CLOUD_RECORD_SERVER_OVER"];
const STATUSES = ["pending", "succeeded", "failed", "dead", "cancelled"];
const ENGINES = ["nginx-rtmp", "srs", "mediamtx"];

const main = document.getElementById("main");
let project = null;
let sampler = null;

// --- DOM -------------------------------------------------------------------------------

/** An element with attributes (`on*` become listeners) and children (strings are text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let ids = 0;
/** A labelled input: the label names it, so screen readers and tests find it by name. */
function field(label, attrs = {}, hint = null) {
  const id = `f${++ids}`;
  const hintId = hint ? `${id}-hint` : null;
  const input = attrs.options
    ? h("select", { id, name: attrs.name, "aria-describedby": hintId }, attrs.options.map(([v, t]) =>
        h("option", { value: v, selected: v === attrs.value }, t)))
    : h("input", { type: "text", id, "aria-describedby": hintId, ...attrs });
  return {
    input,
    el: h("div", { class: "field" }, h("label", { for: id }, label), input,
      hint ? h("p", { class: "hint", id: hintId }, hint) : null),
  };
}

function checkbox(label, attrs = {}) {
  const id = `f${++ids}`;
  const input = h("input", { type: "checkbox", id, ...attrs });
  return { input, el: h("div", { class: "check" }, input, h("label", { for: id }, label)) };
}

function say(text) {
  const status = document.getElementById("status");
  status.textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { status.textContent = ""; }, 4000);
}

/** Asks with the page's own dialog (keyboard and screen-reader friendly); true on OK. */
function confirmWith(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  dialog.querySelector('button[value="cancel"]').focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

/** A form in `slot`: the fields, then OK and Cancel. OK runs `save`; when the API refuses,
 *  its message is shown above the fields and what was typed stays. */
function openForm(slot, title, fields, save, { heading = true } = {}) {
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "panel", "aria-label": title },
    heading ? h("h2", {}, title) : null, error, fields,
    h("div", { class: "buttons" },
      h("button", { type: "submit" }, "OK"),
      h("button", { type: "button", class: "secondary", onclick: () => slot.replaceChildren() }, "Cancel")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await save();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  slot.replaceChildren(form);
  form.querySelector("input, select")?.focus();
}

/** Deletes `path` once the user confirms `question`, then shows the page again. */
async function confirmDelete(question, path, done, reload) {
  if (!(await confirmWith(question))) return;
  try {
    await api("DELETE", path);
    say(done);
  } catch (e) {
    say(e.message);
  }
  await reload();
}

function show(...children) {
  main.replaceChildren(...children);
  main.focus();
}

/** A table whose cells carry their column's name (`data-label`), so that on a narrow
 *  screen each row can stand as a card of labelled lines. */
function table(caption, headers, rows, empty) {
  const body = rows.length
    ? rows.map((cells) => h("tr", {}, cells.map((cell, i) => {
      const [content, cls] = Array.isArray(cell) ? cell : [cell, null];
      return h("td", { class: cls, "data-label": headers[i] }, content);
    })))
    : h("tr", {}, h("td", { colspan: headers.length }, empty));
  return h("div", { class: "scroll" }, h("table", { class: "cards" },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, body)));
}

const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "—");

// --- API -------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body) {
    super((body && body.error_msg) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { "X-Auth-Token": sessionStorage.getItem(TOKEN_KEY) || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (response.status === 401 && project) {
    signOut("Your token is no longer accepted (revoked or expired): sign in again.");
    throw new ApiFailure(401, data);
  }
  if (!response.ok) throw new ApiFailure(response.status, data);
  return data;
}

const live = (rest) => `/v1/${encodeURIComponent(project)}/record/${rest}`;

// --- Sign-in ---------------------------------------------------------------------------

function signInView(message = "") {
  const token = field("Access token", { type: "password", autocomplete: "off", required: true },
    "A token from `herald tokens create --project P`. It is kept for this browser tab only.");
  const error = h("p", { class: "error", role: "alert" }, message);
  const form = h("form", { class: "panel signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to Herald"),
    error, token.el,
    h("div", { class: "buttons" }, h("button", { type: "submit" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    sessionStorage.setItem(TOKEN_KEY, token.input.value.trim());
    try {
      await start();
      if (!location.hash || location.hash === "#/") location.hash = "#/configs";
      else route();
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      error.textContent = e.status === 401 ? "That token is not accepted." : e.message;
      token.input.focus();
    }
  });
  show(form);
  token.input.focus();
}

async function start() {
  const answer = await api("GET", "/v3/auth/projects");
  project = answer.projects[0].id;
  document.getElementById("who").textContent = `Project ${project}`;
  for (const id of ["nav", "who", "sign-out"]) document.getElementById(id).hidden = false;
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  project = null;
  for (const id of ["nav", "who", "sign-out"]) document.getElementById(id).hidden = true;
  stopSampling();
  signInView(message);
}

// --- Callback configurations (Live) ----------------------------------------------------

async function configsView() {
  const list = await api("GET", live("callbacks?offset=0&limit=100"));
  const formSlot = h("div");
  const add = h("button", { type: "button", onclick: () => openConfigForm(formSlot, null) },
    "Add Callback Configuration");
  const rows = list.callback_config.map((c) => [
    [c.publish_domain, "wrap"],
    [c.app, "wrap"],
    [c.notify_callback_url || "—", "url"],
    c.notify_event_subscription.map(typeLabel).join(", "),
    c.sign_type,
    when(c.update_time),
    h("div", { class: "buttons" },
      h("button", { type: "button", class: "secondary",
        onclick: () => openConfigForm(formSlot, c) }, "Edit"),
      h("button", { type: "button", class: "secondary",
        onclick: () => openReplayForm(formSlot, `Replay to ${c.publish_domain} / ${c.app}`,
          live(`callbacks/${encodeURIComponent(c.id)}/replay`), configsView) }, "Replay"),
      h("button", { type: "button", class: "danger",
        onclick: () => deleteConfig(c) }, "Delete")),
  ]);
  const shown = list.callback_config.length;
  show(
    h("h1", {}, "Callback configurations"),
    h("div", { class: "toolbar" }, add),
    formSlot,
    table((list.total === 1 ? "1 configuration" : `${list.total} configurations`)
      + (list.total > shown ? ` (first ${shown} shown)` : ""),
    ["Ingest domain", "App", "Callback URL", "Callback Type", "Authentication Mode", "Updated", "Operation"],
    rows, "No callback configuration yet."));
}

function typeLabel(type) {
  const found = LIVE_TYPES.find(([t]) => t === type);
  return found ? found[1] : type;
}

/** The add (config null) or edit form. A refused save shows the API's message and keeps
 *  what was typed. */
function openConfigForm(slot, config) {
  const editing = config !== null;
  const domain = field("Ingest domain", { value: config?.publish_domain ?? "", required: true });
  const app = field("App", { value: config?.app ?? "", required: true }, "An app name, or * for any app.");
  const url = field("Callback URL", { type: "url", value: config?.notify_callback_url ?? "" },
    "http:// or https://, without parameters.");
  const subscribed = config?.notify_event_subscription ?? ["RECORD_FILE_COMPLETE"];
  const types = LIVE_TYPES.map(([type, label]) => ({ type, ...checkbox(label, { checked: subscribed.includes(type) }) }));
  const mode = field("Authentication Mode", {
    options: [["HMACSHA256", "HMACSHA256"], ["MD5", "MD5"]], value: config?.sign_type ?? "HMACSHA256",
  });
  const key = field("Authentication Key", { type: "password", autocomplete: "off" },
    editing ? "32 letters and digits. Leave empty to keep the current key." : "32 letters and digits; optional.");
  const title = editing ? "Edit Callback Configuration" : "Add Callback Configuration";
  const fields = [domain.el, app.el, url.el,
    h("fieldset", {}, h("legend", {}, "Callback Type"), types.map((t) => t.el)),
    mode.el, key.el];
  openForm(slot, title, fields, async () => {
    const body = {
      publish_domain: domain.input.value.trim(),
      app: app.input.value.trim(),
      notify_callback_url: url.input.value.trim(),
      notify_event_subscription: types.filter((t) => t.input.checked).map((t) => t.type),
      sign_type: mode.input.value,
    };
    if (key.input.value !== "") body.key = key.input.value;
    if (editing) await api("PUT", live(`callbacks/${encodeURIComponent(config.id)}`), body);
    else await api("POST", live("callbacks"), body);
    say(editing ? "Callback configuration saved." : "Callback configuration added.");
    await configsView();
  });
}

/** `at` as the API writes times to the second: yyyy-mm-ddThh:mm:ssZ. */
const utcSeconds = (at) => at.toISOString().replace(/\.\d+Z$/, "Z");

/** Replays a range of history to a config or an app's record callback (`path`): every
 *  retained event of the range that it matches now is sent again, signed afresh, with its
 *  original event id. */
function openReplayForm(slot, title, path, reload) {
  const now = new Date();
  const since = field("Since", { value: utcSeconds(new Date(now - 3600 * 1000)), required: true },
    "UTC, yyyy-mm-ddThh:mm:ssZ: events accepted at or after this.");
  // The next whole second: an event accepted a moment ago is in the range.
  const until = field("Until", { value: utcSeconds(new Date(Math.floor(now / 1000) * 1000 + 1000)), required: true },
    "UTC, yyyy-mm-ddThh:mm:ssZ: events accepted before this.");
  openForm(slot, title, [since.el, until.el], async () => {
    const answer = await api("POST", path,
      { since: since.input.value.trim(), until: until.input.value.trim() });
    say(`${answer.queued} ${answer.queued === 1 ? "callback" : "callbacks"} queued for replay.`);
    await reload();
  });
}

function deleteConfig(config) {
  return confirmDelete(`Delete the callback configuration of ${config.publish_domain} / ${config.app}? `
    + "Its callbacks not yet sent are cancelled.",
  live(`callbacks/${encodeURIComponent(config.id)}`), "Callback configuration deleted.", configsView);
}

// --- Apps (RTC) -----------------------------------------------------------------------

async function appsView() {
  const list = await api("GET", "/v2/apps?offset=0&limit=100");
  const formSlot = h("div");
  const rows = list.apps.map((a) => [
    [a.app_name, "wrap"],
    h("code", {}, a.app_id),
    when(a.create_time),
    h("div", { class: "buttons" },
      h("a", { href: `#/apps/${a.app_id}` }, "Configure"),
      h("button", { type: "button", class: "danger",
        onclick: () => deleteApp(a) }, "Delete")),
  ]);
  show(
    h("h1", {}, "Apps"),
    h("div", { class: "toolbar" },
      h("button", { type: "button", onclick: () => openAppForm(formSlot) }, "Create App")),
    formSlot,
    table(list.count === 1 ? "1 app" : `${list.count} apps`,
      ["App name", "App ID", "Created", "Operation"], rows, "No app yet."));
}

function openAppForm(slot) {
  const name = field("App name", { required: true });
  openForm(slot, "Create App", [name.el], async () => {
    const created = await api("POST", "/v2/apps", { app_name: name.input.value.trim() });
    say(`App created: ${created.app_id}`);
    await appsView();
  });
}

function deleteApp(app) {
  return confirmDelete(`Delete the app ${app.app_name}? Its callbacks not yet sent are cancelled.`,
    `/v2/apps/${encodeURIComponent(app.app_id)}`, "App deleted.", appsView);
}

async function appView(appId) {
  const path = `/v2/apps/${encodeURIComponent(appId)}`;
  const [app, callback] = await Promise.all([api("GET", path), api("GET", `${path}/record-callback`)]);
  const cb = callback.record_callback || {};
  const formSlot = h("div");
  const masked = cb.auth_key ? `${cb.auth_key.slice(0, 4)}…${cb.auth_key.slice(-2)}` : "none";
  show(
    // Not "← Apps": a second link whose name holds "Apps" would shadow the navigation's.
    h("p", {}, h("a", { href: "#/apps" }, "Back to the app list")),
    h("h1", {}, app.app_name),
    h("dl", { class: "facts" }, h("dt", {}, "App ID"), h("dd", {}, h("code", {}, app.app_id))),
    h("section", { class: "panel", "aria-labelledby": "rc-title" },
      h("h2", { id: "rc-title" }, "Recording Callback"),
      h("dl", { class: "facts" },
        h("dt", {}, "Callback URL"), h("dd", {}, cb.url || "Not set"),
        h("dt", {}, "Private Key"), h("dd", {}, masked),
        h("dt", {}, "Event types"), h("dd", {}, (cb.notify_event_subscription || RTC_TYPES).join(", ")),
        h("dt", {}, "Updated"), h("dd", {}, when(cb.update_time))),
      h("div", { class: "buttons" },
        h("button", { type: "button", onclick: () => openCallbackForm(formSlot, appId, cb) }, "Edit"),
        cb.url ? h("button", { type: "button", class: "secondary",
          onclick: () => openReplayForm(formSlot, `Replay to ${app.app_name}`,
            `${path}/record-callback/replay`, () => appView(appId)) }, "Replay") : null),
      formSlot)
  );
}

function openCallbackForm(slot, appId, cb) {
  const url = field("Callback URL", { type: "url", value: cb.url || "" },
    "http:// or https://. Empty removes the callback.");
  const key = field("Private Key", { type: "password", autocomplete: "off", value: cb.auth_key || "" },
    "32 to 64 letters and digits; signs each callback (X-Rtc-Signature). Empty: unsigned.");
  const subscribed = cb.notify_event_subscription || RTC_TYPES;
  const types = RTC_TYPES.map((type) => ({ type, ...checkbox(type, { checked: subscribed.includes(type) }) }));
  const fields = [url.el, key.el,
    h("fieldset", {}, h("legend", {}, "Event types"), types.map((t) => t.el))];
  openForm(slot, "Edit Recording Callback", fields, async () => {
    const body = {
      url: url.input.value.trim(),
      notify_event_subscription: types.filter((t) => t.input.checked).map((t) => t.type),
    };
    if (key.input.value !== "") body.auth_key = key.input.value;
    await api("PUT", `/v2/apps/${encodeURIComponent(appId)}/record-callback`, body);
    say("Recording callback saved.");
    await appView(appId);
  }, { heading: false });
}

// --- Recording sources (SPEC §7) -------------------------------------------------------

async function sourcesView() {
  const [list, apps] = await Promise.all([
    api("GET", live("sources?offset=0&limit=100")),
    api("GET", "/v2/apps?offset=0&limit=100"),
  ]);
  const appNames = new Map(apps.apps.map((a) => [a.app_id, a.app_name]));
  const formSlot = h("div");
  const shown = list.sources.length;
  show(
    h("h1", {}, "Recording sources"),
    h("p", { class: "lead" }, "A media server whose recordings Herald reports. Paste a source's "
      + "configuration into its media server: the hook URL in it is secret, anyone holding it can report recordings."),
    h("div", { class: "toolbar" },
      h("button", { type: "button", onclick: () => openSourceForm(formSlot, apps) }, "Add Recording Source"),
      // Sessions and files move on while the page is open: look again without a reload.
      h("button", { type: "button", class: "secondary", onclick: () => sourcesView() }, "Refresh")),
    formSlot,
    h("p", { class: "count" }, (list.total === 1 ? "1 recording source" : `${list.total} recording sources`)
      + (list.total > shown ? ` (first ${shown} shown)` : "")),
    shown ? h("div", {}, list.sources.map((s) => sourceSection(s, appNames))) : h("p", {}, "No recording source yet."));
}

/** What a source reports for, in words: its ingest domain, or its app's name. */
function sourceTarget(source, appNames) {
  if (source.app_id == null) return source.publish_domain;
  return `app ${appNames.get(source.app_id) ?? source.app_id}`;
}

/** One source: its settings and status, its hook URL, and the configuration to paste. */
function sourceSection(source, appNames) {
  const titleId = `f${++ids}`;
  const status = source.status || {};
  const error = status.last_error;
  const snippet = engineSnippet(source);
  const code = h("code", {}, snippet.text);
  const fact = (label, value) => [h("dt", {}, label), h("dd", {}, value)];
  return h("section", { class: "panel source", "aria-labelledby": titleId },
    h("h2", { id: titleId }, `${source.engine} for ${sourceTarget(source, appNames)}`),
    h("dl", { class: "facts" },
      fact("Engine", source.engine),
      source.app_id == null
        ? fact("Ingest domain", source.publish_domain)
        : fact("App ID", [h("code", {}, source.app_id),
          appNames.has(source.app_id) ? ` (${appNames.get(source.app_id)})` : null]),
      fact("Record directory", h("code", {}, source.record_dir)),
      fact("Download base URL", source.download_base || "none"),
      fact("Max pause", source.max_pause),
      fact("Record format", source.record_format || "as recorded"),
      fact("Storage", source.storage
        ? `${source.storage.bucket} at ${source.storage.endpoint}${source.storage.delete_local ? " (local files deleted after upload)" : ""}`
        : "none"),
      fact("Hook URL", h("code", {}, source.hook_url)),
      fact("Open sessions", String(status.open_sessions ?? 0)),
      fact("Files waiting", String(status.files_waiting ?? 0)),
      fact("Uploads waiting", String(status.uploads_waiting ?? 0)),
      fact("Last error", error
        ? h("span", { class: "error-text" }, `${when(error.at)} · ${error.file} · ${error.message}`)
        : "none"),
      fact("Created", when(source.created_at))),
    h("h3", {}, `Configuration for ${source.engine}`),
    h("p", { class: "hint" }, snippet.where),
    h("pre", { class: "snippet" }, code),
    h("div", { class: "buttons" },
      h("button", { type: "button", class: "secondary", onclick: () => copySnippet(snippet.text, code) }, "Copy"),
      h("button", { type: "button", class: "danger", onclick: () => deleteSource(source, appNames) }, "Delete")));
}

/** A value for a media server's configuration file: as it is when it holds only
 *  characters no syntax reads specially, else double-quoted. The server refuses record
 *  directories with quotes, backslashes, `$`, `;` or control characters, so quoting is
 *  all a space or a `#` needs; backslashes and quotes are escaped all the same, so that
 *  no value can end its quotes and become configuration (nginx and SRS read `\"` inside
 *  double quotes, YAML's double-quoted scalars too). */
function configValue(value) {
  if (/^[A-Za-z0-9\/._\-\[\]%]+$/.test(value)) return value;
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`).replace(/[\u0000-\u001f\u007f]/g, "")}"`;
}

/** The lines a source's engine needs, with its hook URL and record directory filled in
 *  (quoted for the file's syntax where needed), and where they go: the same settings as
 *  docs/recording-sources.md's configurations (crates/herald/tests/media/), which
 *  herald-api's console tests hold them to. */
function engineSnippet(source) {
  const hook = source.hook_url;
  const dir = source.record_dir;
  const under = (rest) => configValue(`${dir.replace(/\/+$/, "")}/${rest}`);
  if (source.engine === "srs") {
    return {
      where: "In the vhost of SRS's configuration file.",
      text: `http_hooks {
    enabled         on;
    on_publish      ${hook};
    on_unpublish    ${hook};
    on_dvr          ${hook};
}
dvr {
    enabled         on;
    dvr_apply       all;
    dvr_plan        segment;
    dvr_path        ${under("[app]/[stream]/[2006][01][02]-[15][04][05]-[999].flv")};
    dvr_duration    30;
    dvr_wait_keyframe on;
}
`,
    };
  }
  if (source.engine === "mediamtx") {
    const run = (event, extra = "") =>
      `'curl -sS "${hook}?event=${event}" --data-urlencode "path=$MTX_PATH"${extra}'`;
    const segment = ' --data-urlencode "segment_path=$MTX_SEGMENT_PATH"';
    return {
      where: "In mediamtx.yml, in place of its own pathDefaults recording and runOn… settings; keep a paths entry that matches your streams (all_others matches any).",
      text: `pathDefaults:
  record: yes
  recordPath: ${under("%path/%Y-%m-%d_%H-%M-%S-%f")}
  recordFormat: fmp4
  recordSegmentDuration: 30s
  recordDeleteAfter: 0s
  runOnReady: ${run("ready")}
  runOnNotReady: ${run("not_ready")}
  runOnRecordSegmentCreate: ${run("segment_create", segment)}
  runOnRecordSegmentComplete: ${run("segment_complete", `${segment} --data-urlencode "duration=$MTX_SEGMENT_DURATION"`)}

paths:
  all_others:
`,
    };
  }
  return {
    where: "In nginx.conf, inside rtmp { server { … } } (Debian: libnginx-mod-rtmp).",
    text: `application live {
    live on;
    record all;
    record_path ${configValue(dir)};
    record_unique on;
    record_interval 30m;
    on_publish ${hook};
    on_publish_done ${hook};
    on_record_done ${hook};
}
`,
  };
}

/** Copies to the clipboard; where the page may not (plain http on another host is not a
 *  secure context), selects the text for the user's own Ctrl+C. */
async function copySnippet(text, code) {
  try {
    await navigator.clipboard.writeText(text);
    say("Configuration copied.");
  } catch {
    getSelection().selectAllChildren(code);
    say("Configuration selected: press Ctrl+C to copy it.");
  }
}

/** The create form. "Reports for" shows either "Ingest domain" (Live) or "App ID" (RTC);
 *  the other is hidden and disabled, so it is neither sent nor checked. */
function openSourceForm(slot, apps) {
  const engine = field("Engine", { options: ENGINES.map((e) => [e, e]), value: ENGINES[0] });
  const flavour = field("Reports for", { options: [["live", "Live"], ["rtc", "RTC"]], value: "live" },
    "Live: an ingest domain's callback configurations. RTC: an app's recording callback.");
  const domain = field("Ingest domain", { required: true });
  // Every app of the project in a select; past 100 apps, or with none yet, the ID is typed.
  const app = apps.apps.length > 0 && apps.count <= apps.apps.length
    ? field("App ID", { options: apps.apps.map((a) => [a.app_id, `${a.app_name} (${a.app_id})`]) })
    : field("App ID", { required: true },
      apps.apps.length ? "The app's ID, as on the Apps page." : "No app yet: create one on the Apps page first.");
  const dir = field("Record directory", { required: true },
    "The absolute path where the media server writes its recordings, as Herald sees it.");
  const download = field("Download base URL", { type: "url" },
    "Optional. A file's download URL is this followed by its path below the record directory.");
  const pause = field("Max pause", { value: "30s" },
    "How long a stream may stay unpublished before its recording is over, e.g. 30s or 5m.");
  const format = field("Record format", { options: [["", "As recorded"], ["MP4", "MP4"], ["HLS", "HLS"], ["FLV", "FLV"]], value: "" },
    "MP4, HLS or FLV needs a bucket below (RTC: MP4 or HLS). HLS: a playlist with its segments beside it. As recorded: the engine's own file.");
  // SPEC §7.1: the bucket each finished file is uploaded to before it is reported.
  const endpoint = field("Endpoint", { type: "url" },
    "Optional. The S3 API's URL, e.g. https://obs.cn-north-4.myhuaweicloud.com; empty: files stay on the media server.");
  const region = field("Region");
  const bucket = field("Bucket");
  const keyId = field("Access Key ID", { autocomplete: "off" });
  const secret = field("Secret Access Key", { type: "password", autocomplete: "new-password" },
    "Kept sealed by Herald and never shown again.");
  const pathStyle = checkbox("Path style");
  const prefix = field("Object path", {},
    "Optional template of the object key, e.g. Record/{publish_domain}/{app}/{stream}_{file_start_time}.");
  const deleteLocal = checkbox("Delete local file after upload");
  const storage = h("fieldset", {}, h("legend", {}, "Storage"),
    endpoint.el, region.el, bucket.el, keyId.el, secret.el, pathStyle.el, prefix.el, deleteLocal.el);
  const pick = () => {
    const rtc = flavour.input.value === "rtc";
    domain.el.hidden = rtc;
    domain.input.disabled = rtc;
    app.el.hidden = !rtc;
    app.input.disabled = !rtc;
  };
  flavour.input.addEventListener("change", pick);
  pick();
  const fields = [engine.el, flavour.el, domain.el, app.el, dir.el, download.el, pause.el, format.el, storage];
  openForm(slot, "Add Recording Source", fields, async () => {
    const body = { engine: engine.input.value, record_dir: dir.input.value.trim() };
    if (flavour.input.value === "rtc") body.app_id = app.input.value.trim();
    else body.publish_domain = domain.input.value.trim();
    if (download.input.value.trim() !== "") body.download_base = download.input.value.trim();
    if (pause.input.value.trim() !== "") body.max_pause = pause.input.value.trim();
    if (format.input.value !== "") body.record_format = format.input.value;
    if (endpoint.input.value.trim() !== "") {
      body.storage = {
        endpoint: endpoint.input.value.trim(),
        region: region.input.value.trim(),
        bucket: bucket.input.value.trim(),
        access_key_id: keyId.input.value.trim(),
        secret_access_key: secret.input.value,
        path_style: pathStyle.input.checked,
        delete_local: deleteLocal.input.checked,
      };
      if (prefix.input.value.trim() !== "") body.storage.object_prefix = prefix.input.value.trim();
    }
    await api("POST", live("sources"), body);
    say("Recording source added.");
    await sourcesView();
  });
}

function deleteSource(source, appNames) {
  return confirmDelete(`Delete the ${source.engine} source for ${sourceTarget(source, appNames)}? `
    + "Its hook URL stops working at once.",
  live(`sources/${encodeURIComponent(source.id)}`), "Recording source deleted.", sourcesView);
}

// --- Deliveries ------------------------------------------------------------------------

async function deliveriesView(params) {
  const status = field("Status", {
    name: "status", value: params.get("status") || "",
    options: [["", "Any"], ...STATUSES.map((s) => [s, s])],
  });
  const eventId = field("Event ID", { name: "event_id", value: params.get("event_id") || "" });
  const filters = h("form", { class: "toolbar", "aria-label": "Filter deliveries" },
    status.el, eventId.el, h("div", { class: "field" }, h("button", { type: "submit" }, "Filter")));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    if (status.input.value) query.set("status", status.input.value);
    if (eventId.input.value.trim()) query.set("event_id", eventId.input.value.trim());
    const target = `#/deliveries${query.toString() ? "?" + query : ""}`;
    // The same filters again: no hashchange, so look again here (Filter also refreshes).
    if (location.hash === target) route();
    else location.hash = target;
  });
  const query = new URLSearchParams({ offset: "0", limit: "50" });
  for (const name of ["status", "event_id"]) if (params.get(name)) query.set(name, params.get(name));
  const [list, health] = await Promise.all([
    api("GET", live(`deliveries?${query}`)), api("GET", live("endpoints"))]);
  const bulk = params.get("status");
  if ((bulk === "dead" || bulk === "failed") && !params.get("event_id") && list.total > 0) {
    filters.append(h("div", { class: "field" }, h("button", { type: "button", class: "secondary",
      onclick: () => retryAll(bulk, list.total, params) }, "Retry all matching")));
  }
  const rows = list.deliveries.map((d) => [
    [d.event_id, "wrap"],
    d.event_type,
    h("div", { class: "stack" }, h("span", { class: `badge ${d.status}` }, d.status),
      (d.status === "dead" || d.status === "failed")
        ? h("button", { type: "button", onclick: () => retry(d, params) }, "Retry")
        : null),
    when(d.created_at),
    when(d.next_attempt_at),
    [d.url, "url"],
    [d.attempts.length
      ? h("ol", { class: "attempts", "aria-label": `Attempts of ${d.event_id}` }, d.attempts.map((a) => h("li", {},
        `${when(a.at)} · ${a.status_code ?? "no answer"} · ${a.error ?? "ok"} · ${a.latency_ms} ms`)))
      : "none yet", "wrap"],
  ]);
  show(
    h("h1", {}, "Deliveries"),
    figuresSection(),
    filters,
    table(list.total >= 10000 ? "10,000 or more deliveries, newest first"
      : `${list.total} ${list.total === 1 ? "delivery" : "deliveries"}, newest first`,
    ["Event ID", "Event type", "Status", "Created", "Next attempt", "URL",
      "Attempts (time · status code · error · latency)"], rows, "No delivery matches."),
    endpointsSection(health.endpoints));
  startSampling();
}

/** Each callback host of the project: how its callbacks fared over 15 minutes, how many
 *  are on the wire, how many go at once now (halved after a 429), its last error. */
function endpointsSection(endpoints) {
  const rows = endpoints.map((e) => [
    [e.host, "wrap"],
    e.success_rate === null ? "—" : `${(100 * e.success_rate).toFixed(1)} %`,
    String(e.in_flight),
    String(e.concurrency),
    [e.last_error ?? "—", "wrap"],
    when(e.last_error_at),
  ]);
  return h("section", { "aria-labelledby": "endpoints-title" },
    h("h2", { id: "endpoints-title" }, "Endpoints"),
    table(`${endpoints.length} callback ${endpoints.length === 1 ? "host" : "hosts"}`,
      ["Host", "Success rate (15 min)", "In flight", "Concurrency", "Last error", "Last error at"],
      rows, "No callback host yet."));
}

/** Re-queues every delivery of `status`, after a confirmation naming how many; the API
 *  takes them in bounded batches, so repeat while it says there are more. */
async function retryAll(status, total, params) {
  const count = total >= 10000 ? "10,000 or more" : String(total);
  if (!(await confirmWith(`Retry all ${count} ${status} ${total === 1 ? "delivery" : "deliveries"}? `
    + "Each goes out again, in order per stream."))) return;
  try {
    let queued = 0;
    for (let more = true; more;) {
      const answer = await api("POST", live("deliveries/retry"), { status });
      queued += answer.queued;
      more = answer.more;
    }
    say(`${queued} ${queued === 1 ? "delivery" : "deliveries"} queued again.`);
  } catch (e) {
    say(e.message);
  }
  await deliveriesView(params);
}

async function retry(delivery, params) {
  try {
    await api("POST", live(`deliveries/${encodeURIComponent(delivery.id)}/retry`));
    say(`Delivery of ${delivery.event_id} queued again.`);
  } catch (e) {
    say(e.message);
  }
  await deliveriesView(params);
}

// --- Live figures from /metrics --------------------------------------------------------

/** Sums the samples of a metric in Prometheus text, optionally only those whose labels
 *  include `label`. */
function metricSum(text, name, label = null) {
  let sum = 0;
  let found = false;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name) || line.startsWith("#")) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== " " && rest[0] !== "{") continue;
    if (label && !rest.includes(label)) continue;
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) { sum += value; found = true; }
  }
  return found ? sum : 0;
}

/** Events accepted with no delivery, by event type: `herald_events_unmatched_total`. */
function unmatchedByType(text) {
  const counts = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith("herald_events_unmatched_total{")) continue;
    const type = /event_type="([^"]*)"/.exec(line);
    const value = Number(line.slice(line.lastIndexOf(" ") + 1));
    if (type && Number.isFinite(value)) counts[type[1]] = (counts[type[1]] || 0) + value;
  }
  return counts;
}

function readSamples() {
  try { return JSON.parse(sessionStorage.getItem(SAMPLES_KEY) || "[]"); } catch { return []; }
}

async function takeSample() {
  const response = await fetch("/metrics");
  if (!response.ok) return;
  const text = await response.text();
  const sample = {
    t: Date.now(),
    accepted: metricSum(text, "herald_events_accepted_total"),
    succeeded: metricSum(text, "herald_deliveries_completed_total", 'outcome="succeeded"'),
    completed: metricSum(text, "herald_deliveries_completed_total"),
    depth: ["pending", "failed"]
      .reduce((n, s) => n + metricSum(text, "herald_deliveries", `state="${s}"`), 0),
    oldest: metricSum(text, "herald_oldest_due_delivery_age_seconds"),
    unmatched: unmatchedByType(text),
  };
  const samples = readSamples().filter((s) => s.t > sample.t - WINDOW_MS);
  // A restarted server starts its counters again: the history before it no longer adds up.
  const last = samples[samples.length - 1];
  const kept = last && sample.accepted < last.accepted ? [] : samples;
  kept.push(sample);
  sessionStorage.setItem(SAMPLES_KEY, JSON.stringify(kept));
  renderFigures(kept);
}

/** Per-second rates between consecutive samples. */
function rates(samples) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const [a, b] = [samples[i - 1], samples[i]];
    const secs = Math.max((b.t - a.t) / 1000, 0.001);
    out.push({
      t: b.t,
      accepted: Math.max(0, b.accepted - a.accepted) / secs,
      delivered: Math.max(0, b.succeeded - a.succeeded) / secs,
      succeeded: b.succeeded - a.succeeded,
      completed: b.completed - a.completed,
    });
  }
  return out;
}

function figuresSection() {
  return h("section", { class: "panel", "aria-labelledby": "figures-title" },
    h("h2", { id: "figures-title" }, "Live figures"),
    h("dl", { class: "figures", id: "figures" }),
    h("div", { class: "chart", id: "chart" }),
    h("p", { class: "hint" }, "Refreshed every 5 seconds from /metrics (the whole server); the chart keeps the last 15 minutes seen by this tab."));
}

function renderFigures(samples) {
  const figures = document.getElementById("figures");
  const chart = document.getElementById("chart");
  if (!figures || !chart) return;
  const r = rates(samples);
  const latest = r[r.length - 1];
  const recent = r.slice(-12);
  const done = recent.reduce((n, x) => n + x.completed, 0);
  const ok = recent.reduce((n, x) => n + x.succeeded, 0);
  const last = samples[samples.length - 1];
  const figure = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
  figures.replaceChildren(
    figure("Accepted events/s", latest ? latest.accepted.toFixed(1) : "…"),
    figure("Success rate (last minute)", done > 0 ? `${((100 * ok) / done).toFixed(1)} %` : "—"),
    figure("Queue depth", last ? String(last.depth) : "…"),
    figure("Oldest due delivery", last ? `${last.oldest.toFixed(0)} s` : "…"),
    // Events accepted with 0 deliveries: no config subscribes to their type (configs take
    // only RECORD_FILE_COMPLETE by default), so they are said here rather than missed.
    figure("Matched no config (since start)", last && last.unmatched
      ? (Object.entries(last.unmatched).map(([t, n]) => `${t} ${n}`).join(", ") || "none")
      : "…"));
  chart.replaceChildren(chartSvg(r));
}

function chartSvg(r) {
  const ns = "http://www.w3.org/2000/svg";
  const [w, hgt, pad] = [600, 140, 6];
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const peak = Math.max(1, ...r.map((x) => Math.max(x.accepted, x.delivered)));
  const now = Date.now();
  const x = (t) => pad + ((w - 2 * pad) * (t - (now - WINDOW_MS))) / WINDOW_MS;
  const y = (v) => hgt - pad - ((hgt - 2 * pad) * v) / peak;
  svg.setAttribute("aria-label", `Accepted and delivered events per second over the last 15 minutes; peak ${peak.toFixed(1)}/s`);
  for (const [key, cls] of [["accepted", "accepted"], ["delivered", "delivered"]]) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", r.map((p) => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return h("div", {}, svg, h("p", { class: "legend" },
    h("span", { class: "accepted" }, "accepted/s"), h("span", { class: "delivered" }, "delivered/s"),
    h("span", {}, `peak ${peak.toFixed(1)}/s`)));
}

function startSampling() {
  stopSampling();
  renderFigures(readSamples());
  takeSample().catch(() => {});
  sampler = setInterval(() => takeSample().catch(() => {}), SAMPLE_EVERY_MS);
}

function stopSampling() {
  if (sampler) clearInterval(sampler);
  sampler = null;
}

// --- Routing ---------------------------------------------------------------------------

async function route() {
  if (!project) return;
  stopSampling();
  const [path, query] = (location.hash.slice(1) || "/configs").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("#nav a")) {
    const current = path === a.getAttribute("href").slice(1) || path.startsWith(a.getAttribute("href").slice(1) + "/");
    if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  try {
    if (path === "/apps") await appsView();
    else if (path.startsWith("/apps/")) await appView(decodeURIComponent(path.slice("/apps/".length)));
    else if (path === "/deliveries") await deliveriesView(params);
    else if (path === "/sources") await sourcesView();
    else await configsView();
  } catch (e) {
    if (e.status !== 401) show(h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, e.message));
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);

(async () => {
  if (!sessionStorage.getItem(TOKEN_KEY)) return signInView();
  try {
    await start();
    await route();
  } catch (e) {
    signOut(e.status === 401 ? "Your token is no longer accepted: sign in again." : e.message);
  }
})();
