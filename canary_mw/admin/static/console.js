// The canary_mw console: one page over the admin API (every action is an API call; the page
// has no other way to write). No framework and no build step: the page must keep working for
// years, offline, under a strict Content-Security-Policy (no inline script or style).

const TOKEN_KEY = "canary_mw.token";
const POLL_MS = 2000;
const CHART_POINTS = 90; // three minutes of polls

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

// -- the API ---------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, detail) {
    super(ApiError.describe(status, detail));
    this.status = status;
    this.detail = detail;
  }

  static describe(status, detail) {
    if (Array.isArray(detail)) {
      return detail.map((item) => `${(item.loc || []).slice(1).join(".") || "body"}: ${item.msg}`).join("; ");
    }
    return `${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  const options = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options); // relative: works wherever the app is mounted
  } catch (error) {
    throw new ApiError(0, `the admin server cannot be reached (${error.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data ? data.detail : response.statusText);
  return data;
}

// Run an action; its error (or nothing) is shown in `where`, next to what the user did.
async function act(where, action) {
  where.textContent = "";
  try {
    const result = await action();
    await refresh();
    return result;
  } catch (error) {
    where.textContent = error.message;
    if (error.status === 401 || error.status === 403) signOut("Your token was refused: " + error.message);
    return undefined;
  }
}

function confirmed(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const finish = (answer) => {
      $("confirm-ok").onclick = $("confirm-cancel").onclick = null;
      dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => finish(true);
    $("confirm-cancel").onclick = () => finish(false);
    dialog.showModal();
  });
}

// -- signing in ------------------------------------------------------------------------------
let timer = null;

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("GET", "status");
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    const why = error.status === 403 || error.status === 401 ? "That token was refused" : "Cannot sign in";
    $("sign-in-error").textContent = `${why} (${error.message}).`;
    return;
  }
  $("sign-in").hidden = true;
  $("views").hidden = $("sign-out").hidden = false;
  if (!location.hash) location.hash = "#now";
  show();
  await refresh();
  timer = setInterval(refresh, POLL_MS);
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const name of Object.keys(shown)) delete shown[name];
  clearInterval(timer);
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("views").hidden = $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message;
}

function show() {
  const name = (location.hash || "#now").slice(1);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== name;
  for (const link of document.querySelectorAll("#views a")) {
    link.classList.toggle("current", link.getAttribute("href") === `#${name}`);
  }
  if (name === "history") loadHistory();
}

// -- Now -------------------------------------------------------------------------------------
const samples = []; // {stable, canary, ...}: requests per poll, from the traffic counters
let lastTraffic = null;

function recordTraffic(traffic) {
  if (lastTraffic !== null) {
    const delta = {};
    for (const [name, count] of Object.entries(traffic)) {
      delta[name] = Math.max(0, count - (lastTraffic[name] || 0));
    }
    samples.push(delta);
    if (samples.length > CHART_POINTS) samples.shift();
  }
  lastTraffic = traffic;
}

// Stable and canary have their own colours; any other upstream name shares one.
const seriesClass = (name) => (name === "stable" || name === "canary" ? name : "other");

function drawChart() {
  const svg = $("chart");
  svg.replaceChildren();
  const names = [...new Set(["stable", "canary", ...samples.flatMap(Object.keys)])];
  const peak = Math.max(1, ...samples.flatMap((sample) => Object.values(sample)));
  const ns = "http://www.w3.org/2000/svg";
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of Object.entries({ x1: 0, y1: 119, x2: 300, y2: 119, class: "axis" })) axis.setAttribute(k, v);
  svg.append(axis);
  const totals = {};
  for (const name of names) {
    const points = samples.map((sample, index) => {
      totals[name] = (totals[name] || 0) + (sample[name] || 0);
      const x = (300 * (CHART_POINTS - samples.length + index)) / (CHART_POINTS - 1); // newest at the right
      const y = 118 - (110 * (sample[name] || 0)) / peak;
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    if (points.length) {
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("class", `series series-${seriesClass(name)}`);
      line.setAttribute("data-version", name);
      svg.append(line);
    }
  }
  $("chart-legend").replaceChildren(
    ...names.map((name) => el("span", { class: `legend legend-${seriesClass(name)}`, "data-version": name },
      `${name}: ${totals[name] || 0} requests`)),
    samples.length ? "" : " (collecting)",
  );
}

function renderNow(data) {
  const labels = { off: "off: everyone on stable (kill switch)", all: "all: everyone on the canary", rules: "rules" };
  $("mode").textContent = labels[data.mode] || `${data.mode} (invalid)`;
  $("mode").dataset.mode = data.mode;
  $("version").textContent = data.version ?? "invalid";
  const upstreams = $("now-upstreams");
  upstreams.replaceChildren();
  for (const [url, entry] of Object.entries(data.health)) {
    const routes = entry.routes.length ? entry.routes.join(", ") : "a router's own upstream";
    upstreams.append(el("li", {}, el("span", { class: `state state-${entry.state.replace(" ", "-")}` }, entry.state), ` ${url} (${routes})`,
      entry.reason ? `: ${entry.reason}` : ""));
  }
  if (!upstreams.children.length) upstreams.append(el("li", {}, "none in the store; each router uses its own (no health reported)"));
  $("now-sets").replaceChildren(...Object.entries(data.sets).map(([name, size]) => el("li", {}, `${name}: ${size ?? "unreadable"}`)));
  $("problems").replaceChildren(...data.problems.map((problem) =>
    el("div", { class: "problem" }, el("strong", {}, problem.what), `: ${problem.problem}. In force: ${problem.in_force}. Fix: `, el("code", {}, problem.fix))));
  drawChart();
}

function percentOf(rate) {
  return rate === null || rate === undefined ? "-" : `${(rate * 100).toFixed(2)}%`;
}

async function renderRollout() {
  let data;
  try {
    data = await api("GET", "rollout");
  } catch (error) {
    $("rollout-state").textContent = error.message;
    return;
  }
  const rollout = data.rollout;
  if (!rollout) {
    $("rollout-state").textContent = "No rollout has been started.";
  } else {
    const steps = (rollout.plan && rollout.plan.steps) || [];
    const percent = rollout.step >= 0 && rollout.step < steps.length ? `${steps[rollout.step]}%` : "-";
    $("rollout-state").textContent = `${rollout.status}: step ${rollout.step + 1} of ${steps.length} (${percent} to ${rollout.plan ? rollout.plan.upstream : "?"})${rollout.reason ? `; ${rollout.reason}` : ""}`;
  }
  $("rollout-windows").replaceChildren(...Object.entries(data.windows || {}).map(([target, window]) =>
    el("tr", {}, el("td", {}, target), el("td", {}, window.requests), el("td", {}, percentOf(window.error_rate)),
      el("td", {}, window.p99 === null || window.p99 === undefined ? "-" : `${(window.p99 * 1000).toFixed(0)} ms`))));
}

async function renderShadow() {
  let data;
  try {
    data = await api("GET", "mirror/report");
  } catch {
    return;
  }
  const differences = (row) => Object.entries(row).filter(([name]) => name.startsWith("mismatch:")).reduce((sum, [, count]) => sum + count, 0);
  const rows = (data.routes || []).map((row) => el("tr", {}, el("td", {}, row.route), el("td", {}, row.sent ?? 0), el("td", {}, row.matches ?? 0),
    el("td", {}, differences(row)), el("td", {}, row.errors ?? 0), el("td", {}, row.dropped ?? 0)));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6" }, "No shadow copies reported.")));
  $("shadow-rows").replaceChildren(...rows);
}

// -- Rules -----------------------------------------------------------------------------------
let rules = [];
let editing = null; // the id of the rule being edited

function ruleDocument(list) {
  return list.map((rule) => {
    const spec = { id: rule.id, when: rule.when, target: rule.target };
    if (!rule.enabled) spec.enabled = false;
    if (rule.description) spec.description = rule.description;
    return spec;
  });
}

function replaceRules(list) {
  return act($("rules-error"), () => api("PUT", "rules", { rules: ruleDocument(list) }));
}

function renderRules(data) {
  rules = data.rules;
  $("rules-source").textContent = data.rules_source === "defaults" ? "No rules are stored: these are the defaults." : "";
  const list = $("rule-list");
  list.replaceChildren();
  rules.forEach((rule, index) => {
    const move = (offset) => {
      const copy = [...rules];
      [copy[index], copy[index + offset]] = [copy[index + offset], copy[index]];
      return replaceRules(copy);
    };
    list.append(el("li", { class: rule.enabled ? "rule" : "rule disabled", "data-rule": rule.id },
      el("div", { class: "rule-head" }, el("strong", {}, rule.id), ` → ${rule.target}`, rule.enabled ? "" : " (disabled)"),
      el("code", { class: "when" }, JSON.stringify(rule.when)),
      el("div", { class: "buttons" },
        el("button", { type: "button", onclick: () => move(-1), ...(index === 0 ? { disabled: "" } : {}) }, "Up"),
        el("button", { type: "button", onclick: () => move(1), ...(index === rules.length - 1 ? { disabled: "" } : {}) }, "Down"),
        el("button", { type: "button", onclick: () => replaceRules(rules.map((r) => (r.id === rule.id ? { ...r, enabled: !r.enabled } : r))) },
          rule.enabled ? "Disable" : "Enable"),
        el("button", { type: "button", onclick: () => editRule(rule) }, "Edit"),
        el("button", { type: "button", class: "danger", onclick: async () => {
          if (await confirmed(`Remove rule ${rule.id}?`)) act($("rules-error"), () => api("DELETE", `rules/${encodeURIComponent(rule.id)}`));
        } }, "Remove"))));
  });
  const percentRule = rules.find((rule) => rule.id === "percent");
  if (percentRule && document.activeElement !== $("percent-value")) {
    $("percent-value").value = percentRule.when.percent ?? 0;
    $("percent-value").dataset.current = percentRule.when.percent ?? 0;
  }
  showPercent();
}

function editRule(rule) {
  editing = rule.id;
  $("rule-form-title").textContent = `Edit rule ${rule.id}`;
  $("rule-json").value = JSON.stringify(ruleDocument([rule])[0], null, 2);
  $("rule-submit").textContent = "Save";
  $("rule-cancel").hidden = false;
  $("rule-json").focus();
}

function stopEditing() {
  editing = null;
  $("rule-form-title").textContent = "Add a rule";
  $("rule-submit").textContent = "Add";
  $("rule-cancel").hidden = true;
}

async function submitRule(event) {
  event.preventDefault();
  const where = $("rule-json-error");
  let rule;
  try {
    rule = JSON.parse($("rule-json").value);
  } catch (error) {
    where.textContent = `Not JSON: ${error.message}`;
    return;
  }
  if (editing !== null) {
    const list = rules.map((r) => (r.id === editing ? rule : r));
    if ((await act(where, () => api("PUT", "rules", { rules: ruleDocument(list.map((r) => ({ enabled: true, ...r }))) }))) !== undefined) stopEditing();
    return;
  }
  const body = { rule };
  if ($("rule-position").value !== "") body.position = Number($("rule-position").value);
  await act(where, () => api("POST", "rules", body));
}

function showPercent() {
  const next = Number($("percent-value").value);
  const current = Number($("percent-value").dataset.current || 0);
  $("percent-shown").textContent = `${next}%`;
  const moved = Math.abs(next - current);
  $("percent-moves").textContent = next === current
    ? `Now ${current}% of users${current > 0 ? ` (sticky: buckets 0-${current * 100 - 1} of 10,000)` : ""}.`
    : `${current}% → ${next}%: moves ${moved}% of users ${next > current ? "to the canary" : "back to stable"} (buckets ${Math.min(current, next) * 100}-${Math.max(current, next) * 100 - 1}); everyone else stays where they are.`;
}

// -- Sets ------------------------------------------------------------------------------------
function renderSets(data) {
  $("set-list").replaceChildren(...Object.entries(data.sets).map(([name, size]) =>
    el("li", {}, el("button", { type: "button", class: "link", onclick: () => { $("set-name").value = name; $("set-ip").checked = name === "ips"; } }, name), `: ${size ?? "unreadable"} members`)));
}

function setMembers() {
  return $("set-members").value.split(/[\s,]+/).map((item) => item.trim()).filter(Boolean);
}

async function changeSet(action) {
  const name = $("set-name").value.trim();
  const members = setMembers();
  const change = await act($("set-error"), () => api("POST", `sets/${encodeURIComponent(name)}/${action}`, { members, ip: $("set-ip").checked }));
  $("set-done").textContent = change ? `${action}: ${change.count} changed (version ${change.version})` : "";
  if (change) $("set-members").value = "";
}

async function searchSet() {
  const name = $("set-name").value.trim();
  const member = $("set-search").value.trim();
  const where = $("set-search-result");
  where.textContent = "";
  try {
    const data = await api("GET", `sets/${encodeURIComponent(name)}?member=${encodeURIComponent(member)}`);
    const via = data.matches && data.matches.length && !data.matches.includes(member) ? ` (through ${data.matches.join(", ")})` : "";
    where.textContent = data.contains ? `Yes: ${member} is in ${name}${via}.` : `No: ${member} is not in ${name}.`;
  } catch (error) {
    where.textContent = error.message;
  }
}

// -- Upstreams -------------------------------------------------------------------------------
function renderUpstreams(data) {
  const health = {};
  for (const [url, entry] of Object.entries(data.health)) health[url] = entry.state;
  const rows = [];
  for (const [name, spec] of Object.entries(data.upstreams)) {
    const routes = [];
    if (spec.url) routes.push([null, spec.url]);
    for (const [host, url] of Object.entries(spec.hosts || {})) routes.push([host, url]);
    for (const [host, url] of routes) {
      const key = url.replace(/\/+$/, "");
      const query = host === null ? "" : `?host=${encodeURIComponent(host)}`;
      rows.push(el("tr", {}, el("td", {}, name), el("td", {}, host ?? "every host"), el("td", {}, url),
        el("td", {}, health[key] || health[url] || "not checked"),
        el("td", {}, el("button", { type: "button", class: "danger", onclick: async () => {
          if (await confirmed(`Forget the store's URL for ${name}${host ? ` on ${host}` : ""}?`)) {
            act($("upstream-error"), () => api("DELETE", `upstreams/${encodeURIComponent(name)}${query}`));
          }
        } }, "Remove"))));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "5" }, "None in the store: every router uses its own configuration.")));
  $("upstream-rows").replaceChildren(...rows);
}

// -- History ---------------------------------------------------------------------------------
async function loadHistory() {
  const where = $("history-error");
  let entries;
  try {
    entries = await api("GET", "history?limit=50");
  } catch (error) {
    where.textContent = error.message;
    return;
  }
  where.textContent = "";
  $("history-list").replaceChildren(...entries.map((entry) => el("li", { class: "entry", "data-version": entry.version },
    el("div", {}, el("strong", {}, `v${entry.version}`), ` ${entry.time} `, el("em", {}, entry.actor), ` ${entry.action}${entry.target ? ` ${entry.target}` : ""}`),
    el("details", {}, el("summary", {}, "before / after"),
      el("pre", {}, `before: ${JSON.stringify(entry.before, null, 1)}\nafter: ${JSON.stringify(entry.after, null, 1)}${entry.detail ? `\ndetail: ${JSON.stringify(entry.detail)}` : ""}`)),
    el("button", { type: "button", class: "warn", onclick: async () => {
      if (await confirmed(`Roll back mode, rules and upstreams to how they were after version ${entry.version}?`)) {
        await act(where, () => api("POST", "rollback", { version: entry.version }));
        loadHistory();
      }
    } }, `Roll back to v${entry.version}`))));
}

// -- Explain ---------------------------------------------------------------------------------
function pairs(text, separator) {
  const found = {};
  for (const line of text.split("\n")) {
    const at = line.indexOf(separator);
    if (line.trim() && at > 0) found[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return found;
}

function conditionItem(trace) {
  const head = trace.children ? Object.keys(trace.condition)[0] : JSON.stringify(trace.condition);
  return el("li", { class: `value-${trace.value}` }, el("code", {}, head), ` ${trace.value} `, el("span", { class: "why" }, `(${trace.why})`),
    trace.children ? el("ul", {}, trace.children.map(conditionItem)) : null);
}

async function submitExplain(event) {
  event.preventDefault();
  const body = {
    host: $("explain-host").value.trim() || "localhost",
    path: $("explain-path").value.trim() || "/",
    method: $("explain-method").value.trim() || "GET",
    headers: pairs($("explain-headers").value, ":"),
    cookies: pairs($("explain-cookies").value, "="),
  };
  if ($("explain-ip").value.trim()) body.ip = $("explain-ip").value.trim();
  const where = $("explain-error");
  where.textContent = "";
  let data;
  try {
    data = await api("POST", "explain", body);
  } catch (error) {
    where.textContent = error.message;
    return;
  }
  const why = data.rule ? `${data.reason} ${data.rule}` : data.reason;
  $("explain-result").replaceChildren(
    el("p", { class: "big", id: "explain-decision", "data-target": data.target, "data-rule": data.rule ?? "" }, `${data.target} (${why})`),
    el("p", {}, data.upstream ? `Forwarded to ${data.upstream}` : "Served by the app itself (stable)"),
    el("p", {}, `Mode ${data.mode}, store version ${data.version}`, data.overrides.length ? `; ${data.overrides.join("; ")}` : ""),
    el("ol", { class: "trace" }, data.rules.map((rule) => el("li", { class: `outcome-${rule.outcome.replace(" ", "-")}`, "data-rule": rule.id },
      el("strong", {}, rule.id), ` → ${rule.target}: `, el("span", { class: "outcome" }, rule.outcome),
      rule.condition ? el("ul", {}, conditionItem(rule.condition)) : null))));
}

// -- polling ---------------------------------------------------------------------------------
const shown = {};

function unlessUnchanged(name, value, render) {
  const key = JSON.stringify(value);
  if (shown[name] === key) return;
  shown[name] = key;
  render();
}

let refreshes = 0;

async function refresh() {
  // A poll sent before a write can answer after the refresh that write asked for: only the
  // latest answer is shown, or the page would show (and then write back) the state before it.
  const mine = ++refreshes;
  let data;
  try {
    data = await api("GET", "status");
  } catch (error) {
    if (error.status === 401 || error.status === 403) signOut("Your token was refused: " + error.message);
    return;
  }
  if (mine !== refreshes) return;
  recordTraffic(data.traffic);
  renderNow(data);
  // Lists are rebuilt only when what they show changed: a button must not be replaced
  // under the pointer by an identical one every poll.
  unlessUnchanged("rules", [data.rules, data.rules_source], () => renderRules(data));
  unlessUnchanged("sets", data.sets, () => renderSets(data));
  unlessUnchanged("upstreams", [data.upstreams, data.health], () => renderUpstreams(data));
  document.body.dataset.version = data.version;
  await Promise.all([renderRollout(), renderShadow()]);
}

function setMode(mode, question) {
  return async () => {
    if (question && !(await confirmed(question))) return;
    await act($("mode-error"), () => api("PUT", "mode", { mode }));
  };
}

function start() {
  if (!location.pathname.endsWith("/")) {
    location.replace(`${location.pathname}/${location.hash}`); // relative API paths need it
    return;
  }
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("token").value.trim());
    $("token").value = "";
  });
  $("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", show);
  $("mode-rules").addEventListener("click", setMode("rules", null));
  $("mode-off").addEventListener("click", setMode("off", "Kill switch: send everyone to stable, whatever the rules say?"));
  $("mode-all").addEventListener("click", setMode("all", "Promote: send everyone to the canary, whatever the rules say?"));
  $("rule-form").addEventListener("submit", submitRule);
  $("rule-cancel").addEventListener("click", stopEditing);
  $("percent-value").addEventListener("input", showPercent);
  $("percent-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act($("percent-error"), () => api("PUT", "percent", { percent: Number($("percent-value").value) }));
  });
  $("set-form").addEventListener("submit", (event) => {
    event.preventDefault();
    changeSet("add");
  });
  $("set-remove").addEventListener("click", () => changeSet("remove"));
  $("set-search-button").addEventListener("click", searchSet);
  $("upstream-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { url: $("upstream-url").value.trim() };
    if ($("upstream-host").value.trim()) body.host = $("upstream-host").value.trim();
    act($("upstream-error"), () => api("PUT", `upstreams/${encodeURIComponent($("upstream-name").value.trim())}`, body));
  });
  $("explain-form").addEventListener("submit", submitExplain);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
}

start();
