// The portal in a real browser: Debian's chromium driven by playwright-core, against
// `postern demo` (server, in-process gateway and sim routers; lab mode, temporary data
// directory, free ports). Signs in, reads Sites, opens every tab of the site, adds
// transient access with the defaults and reads its Credentials, logs in through the
// gateway with OpenSSH (`sshpass`) using an SSH grant's, revokes, adds a forward, reads
// the orchestration log, the admin pages, the regions, and signs out, saving a screenshot of each
// screen under target/web-screenshots/. Any console error or page error fails the test.
//
// Run: POSTERN_BIN=target/debug/postern node --test web-tests/

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = resolve(import.meta.dirname, "..");
const bin = resolve(process.env.POSTERN_BIN || join(root, "target/debug/postern"));
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const shots = resolve(process.env.POSTERN_SCREENSHOTS || join(root, "target/web-screenshots"));

const children = [];
let browser, routerAddress, baseUrl, adminPassword, token, siteName, routerId;

/** Starts a process and resolves with the first stdout/stderr line `pick` accepts. */
function startAndRead(args, env, pick, what) {
  // The test's own settings only: no POSTERN_* variable of the caller's leaks in.
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("POSTERN_")));
  const child = spawn(bin, args, { env: { ...clean, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  const lines = [];
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`${what}: nothing after 30 s:\n${lines.join("\n")}`)), 30000);
    const read = (stream) =>
      createInterface({ input: stream }).on("line", (line) => {
        lines.push(line);
        const value = pick(line);
        if (value !== undefined) {
          clearTimeout(timer);
          ok({ child, value });
        }
      });
    read(child.stdout);
    read(child.stderr);
    child.on("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`${what} exited with ${code}:\n${lines.join("\n")}`));
    });
  });
}

/** The API, with the admin token. */
async function api(method, path, body) {
  const res = await fetch(baseUrl + path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

before(async () => {
  mkdirSync(shots, { recursive: true });

  // `postern demo`: the server, its in-process gateway and sim routers (on a 127.x block
  // of their own, every port picked by the kernel), in lab mode over a temporary data
  // directory it removes at exit. It prints one JSON line once everything listens.
  const base = `127.${1 + Math.floor(Math.random() * 200)}.${1 + Math.floor(Math.random() * 250)}.1`;
  const demo = await startAndRead(
    ["demo", "--json", "--listen", "127.0.0.1:0", "--routers", "2", "--base-address", base],
    {},
    (line) => {
      try {
        const v = JSON.parse(line);
        return v.portal_url ? v : undefined;
      } catch {
        return undefined;
      }
    },
    "postern demo",
  );
  const d = demo.value;
  baseUrl = d.portal_url.replace(/\/$/, "");
  adminPassword = d.admin_password;
  assert.equal(d.admin_user, "admin");
  token = d.api_token;
  routerId = d.routers[0].id;
  routerAddress = d.routers[0].tunnel_address;
  const sites = await api("GET", "/api/sites");
  siteName = sites.find((s) => s.router && s.router.id === routerId).name;

  // One live access (from loopback: lab mode) so the lists and the log have something.
  await api("POST", `/api/routers/${routerId}/transient-access`, {
    type: "winbox",
    allow_from: "127.0.0.1/32",
    expire_after_minutes: 120,
  });

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // No --user-data-dir: playwright refuses it with launch(), and gives every launch a
      // fresh profile in a temporary directory of its own.
    ],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const c of children.reverse()) {
    if (c.exitCode === null) {
      c.kill("SIGTERM");
      await new Promise((ok) => {
        const t = setTimeout(() => { c.kill("SIGKILL"); ok(); }, 5000);
        c.on("exit", () => { clearTimeout(t); ok(); });
      });
    }
  }
});

/** A fresh page that fails the test on any console error or uncaught error. */
async function newPage(width = 1280, height = 860) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  if (process.env.DEBUG_CSP) {
    await page.addInitScript(() => {
      document.addEventListener("securitypolicyviolation", (e) => {
        const t = e.target;
        console.log("CSP", e.violatedDirective, e.sample, t && t.outerHTML ? t.outerHTML.slice(0, 300) : String(t), e.sourceFile, e.lineNumber);
      });
    });
    page.on("console", (m) => { if (m.text().startsWith("CSP")) console.error(m.text()); });
  }
  return { page, problems, context };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(page, password = adminPassword) {
  await page.goto(baseUrl + "/");
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

test("a wrong password is refused with one message", async () => {
  const { page, problems, context } = await newPage();
  await page.goto(baseUrl + "/sites");
  assert.match(page.url(), /\/login$/, "signed-out visitors are sent to the login page");
  await shot(page, "01-login");
  // The 401 of a refused sign-in is logged by chromium as a console error: expected here.
  await signIn(page, "not the password");
  await page.getByRole("alert").waitFor();
  assert.match(await page.getByRole("alert").innerText(), /Wrong username or password/);
  await shot(page, "02-login-refused");
  assert.deepEqual(problems.filter((p) => !p.includes("401")), []);
  await context.close();
});

test("the API docs render under their own content security policy", async () => {
  const { page, problems, context } = await newPage();
  const violations = [];
  await page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  page.on("console", (m) => { if (m.text().startsWith("CSP violation")) violations.push(m.text()); });
  const response = await page.goto(baseUrl + "/api/docs");
  const headers = response.headers();
  assert.match(headers["content-security-policy"], /script-src 'self';/);
  assert.equal(headers["x-frame-options"], "DENY");
  // Swagger UI (scripts from the server alone) fetched the document and rendered it.
  await page.getByRole("heading", { name: /Postern API/ }).first().waitFor();
  await page.getByText("/api/routers/{router_id}/transient-access", { exact: true }).first().waitFor();
  await shot(page, "00-api-docs");
  assert.deepEqual(violations, []);
  assert.deepEqual(problems, []);
  await context.close();
});

test("sign in, Sites, every tab of the site, the admin pages, sign out", async () => {
  const { page, problems, context } = await newPage();
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  await page.getByRole("heading", { name: "Sites" }).waitFor();
  const row = page.getByRole("row", { name: new RegExp(siteName) });
  await row.waitFor();
  // Name, identity (none until the router's facts are collected), region, status, and the
  // one live grant.
  const cells = await row.locator("td").allInnerTexts();
  assert.equal(cells[0], siteName);
  assert.equal(cells[2], "local", "the region is shown");
  assert.match(cells[3], /^(online|offline|unknown)$/);
  assert.equal(cells[4], "1", "one live grant");
  await shot(page, "03-sites");

  await row.getByRole("link", { name: siteName }).click();
  await page.getByRole("heading", { name: siteName }).waitFor();
  const facts = await page.locator(".facts").innerText();
  // The router has been talked to (its grant is on it): its facts are shown.
  assert.match(facts, /RouterOS version\s+7\.\d+/, facts);
  assert.match(facts, /Board\s+CHR/, facts);
  assert.match(facts, /Uptime\s+\w+ \(at \d{4}-/, facts);
  assert.match(facts, new RegExp(`Tunnel address\\s+${routerAddress.replaceAll(".", "\\.")}`), facts);
  await shot(page, "04-site-overview");

  // Tabs load through htmx (the page is not reloaded: a mark set on it survives), change
  // the URL, and are linkable.
  await page.evaluate(() => { window.posternMark = "same page"; });
  await page.getByRole("link", { name: "Transient Access" }).click();
  await page.waitForURL(/\/access$/);
  await page.getByRole("heading", { name: "Active" }).waitFor();
  assert.equal(await page.evaluate(() => window.posternMark), "same page", "htmx swapped the tab in");
  const active = page.locator("table.list").first();
  assert.match(await active.innerText(), /WinBox/);
  assert.match(await active.innerText(), /admin|token:demo/);
  // The countdown is live: it reads "1 h 59 min" or so, not the raw time.
  await page.waitForTimeout(1200);
  assert.match(await page.locator("time.countdown").first().innerText(), /^1 h 5\d min$|^2 h 00 min$/);
  assert.equal(await page.getByRole("link", { name: "Transient Access" }).getAttribute("aria-current"), "page");
  await shot(page, "05-site-access");

  await page.getByRole("link", { name: "Transient Forwarding" }).click();
  await page.waitForURL(/\/forwards$/);
  await page.getByText("Nothing active.").waitFor();
  await shot(page, "06-site-forwards");

  await page.getByRole("link", { name: "Orchestration Log" }).click();
  await page.waitForURL(/\/jobs$/);
  const jobs = page.locator("ul.jobs > li");
  await jobs.first().waitFor();
  // Open the newest job with the keyboard and read its lines.
  const summary = jobs.first().locator("summary");
  await summary.focus();
  const open = await jobs.first().locator("details").getAttribute("open");
  if (open === null) await page.keyboard.press("Enter");
  await jobs.first().locator("ol.lines li").first().waitFor();
  await shot(page, "07-site-jobs");

  // Back goes to the previous tab (htmx pushed each tab's URL).
  await page.goBack();
  await page.waitForURL(/\/forwards$/);
  await page.getByText("Nothing active.").waitFor();
  await page.goForward();
  await page.waitForURL(/\/jobs$/);
  await page.locator("ul.jobs").waitFor();

  // A reload of a tab's URL gives the whole page with that tab open.
  await page.reload();
  await page.locator("ul.jobs").waitFor();
  assert.equal(await page.getByRole("link", { name: "Orchestration Log" }).getAttribute("aria-current"), "page");

  for (const [name, heading, file] of [
    ["Users", "Users", "08-users"],
    ["API tokens", "API tokens", "09-tokens"],
    ["Audit", "Audit log", "10-audit"],
  ]) {
    await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name }).click();
    await page.getByRole("heading", { name: heading }).waitFor();
    await shot(page, file);
  }
  const audit = await page.locator("table.list").innerText();
  assert.match(audit, /session\.login/);

  // Regions: the demo's one region, served by this server's own gateway.
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Regions" }).click();
  await page.getByRole("heading", { name: "Regions" }).waitFor();
  const region = await page.getByRole("row", { name: /local/ }).locator("td").allInnerTexts();
  assert.match(region[0], /^local/, region.join(" | "));
  assert.match(region[2], /this server/, region.join(" | "));
  assert.match(region[3], /in-process/, region.join(" | "));
  await shot(page, "10b-regions");
  assert.match(await page.locator("body").innerText(), /token:demo|admin/);

  // A phone-sized screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.getByRole("link", { name: "Sites" }).first().click();
  await page.getByRole("heading", { name: "Sites" }).waitFor();
  await shot(page, "11-sites-phone");
  await page.getByRole("link", { name: siteName }).click();
  await page.getByRole("link", { name: "Transient Access" }).click();
  await page.waitForURL(/\/access$/);
  await page.getByRole("heading", { name: "Active" }).waitFor();
  await shot(page, "11-site-access-phone");

  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForURL(/\/login$/);
  await shot(page, "12-signed-out");
  // The session is gone: the pages send us back to the login.
  await page.goto(baseUrl + "/sites");
  assert.match(page.url(), /\/login$/);
  assert.deepEqual(problems, []);
  await context.close();
});

test("keyboard alone: skip link, nav and tabs, with a visible focus ring", async () => {
  const { page, problems, context } = await newPage();
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  await page.keyboard.press("Tab");
  const first = await page.evaluate(() => document.activeElement && document.activeElement.textContent.trim());
  assert.equal(first, "Skip to content");
  const ring = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.equal(ring, "solid", "the focused control has an outline");
  // Tab to the site's link and open it with Enter, then to the Access tab.
  for (let i = 0; i < 20; i++) {
    await page.keyboard.press("Tab");
    const text = await page.evaluate(() => document.activeElement.textContent.trim());
    if (text === siteName) break;
  }
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: siteName }).waitFor();
  for (let i = 0; i < 20; i++) {
    await page.keyboard.press("Tab");
    const text = await page.evaluate(() => document.activeElement.textContent.trim());
    if (text === "Transient Access") break;
  }
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/access$/);
  await page.getByRole("heading", { name: "Active" }).waitFor();
  await shot(page, "13-keyboard-access");
  assert.deepEqual(problems, []);
  await context.close();
});

test("a form without the session's CSRF token is refused", async () => {
  const { page, problems, context } = await newPage();
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  const status = await page.evaluate(async () => {
    const r = await fetch("/logout", { method: "POST", body: new URLSearchParams({ csrf: "forged" }) });
    return r.status;
  });
  assert.equal(status, 403);
  // Still signed in.
  await page.goto(baseUrl + "/sites");
  assert.match(page.url(), /\/sites$/);
  // Chromium logs the refused request itself as a console error: that one is expected.
  assert.deepEqual(problems.filter((p) => !p.includes("403")), []);
  await context.close();
});

/** Signs in and opens the site's tab `tab` ("Transient Access", …) through the UI. */
async function openTab(page, tab) {
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  await page.getByRole("link", { name: siteName }).click();
  await page.getByRole("heading", { name: siteName }).waitFor();
  await page.getByRole("link", { name: tab }).click();
  await page.getByRole("heading", { name: "Active" }).waitFor();
}

/** The live row of the grant whose row mentions `text`. */
function liveRow(page, text) {
  return page.locator("#grants-list table.list:not(.ended) tbody tr", { hasText: text });
}

test("Add transient access with the defaults, then its Credentials", async () => {
  const { page, problems, context } = await newPage();
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: baseUrl });
  await openTab(page, "Transient Access");
  await page.getByText("Add transient access").click();
  // Every option, with the reference's defaults.
  assert.equal(await page.getByLabel("Full access", { exact: true }).isChecked(), true);
  assert.equal(await page.getByLabel("Allow RFC 1918").isChecked(), false);
  assert.equal(await page.getByLabel("Allow from").inputValue(), "127.0.0.1", "the visitor's own address");
  assert.equal(await page.getByLabel("Validity").inputValue(), "120");
  assert.match(await page.getByLabel("Validity").locator("option:checked").innerText(), /^2 hours$/);
  assert.equal(await page.getByLabel("WinBox").isChecked(), true);
  assert.equal(await page.getByLabel("SSH").isChecked(), false);
  // The level below full access shows only when full access is off.
  assert.equal(await page.getByLabel("Level without full access").isVisible(), false);
  await page.getByLabel("Full access", { exact: true }).uncheck();
  assert.equal(await page.getByLabel("Level without full access").isVisible(), true);
  await page.getByLabel("Full access", { exact: true }).check();
  await shot(page, "20-access-add-form");

  await page.getByRole("button", { name: "Create access" }).click();
  const notice = page.getByRole("status");
  await notice.waitFor();
  const username = (await notice.innerText()).match(/postern-[a-z0-9]{8}/)[0];
  const row = liveRow(page, username);
  await row.waitFor();
  assert.match(await row.innerText(), /WinBox · full/);
  assert.match(await row.innerText(), /not yet used/);
  assert.match(await row.innerText(), /from 127\.0\.0\.1\/32/);
  // The router is set up within seconds; the list follows by itself.
  await row.locator(".badge.active").waitFor({ timeout: 15000 });
  assert.match(await row.locator("time.countdown").innerText(), /^1 h 5\d min$|^2 h 00 min$/);
  const wrap = page.locator("#grants-list .table-wrap").first();
  assert.ok(await wrap.evaluate((e) => e.scrollWidth <= e.clientWidth), "the list fits a laptop screen, actions included");
  await shot(page, "21-access-created");

  await row.getByRole("button", { name: `Credentials of ${username}` }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  const text = await dialog.innerText();
  assert.match(text, new RegExp(`Credentials of ${username}`));
  const values = await dialog.locator("dd code").allInnerTexts();
  assert.equal(values.length, 3, text);
  const [endpoint, user, password] = values;
  assert.match(endpoint, /^[^:]+:\d+$/);
  assert.equal(user, username);
  assert.match(password, /^[A-Za-z0-9]{24}$/);
  const port = endpoint.split(":").pop();
  const grants = await api("GET", `/api/routers/${routerId}/transient-access`);
  const grant = grants.find((g) => g.username === username);
  assert.equal(String(grant.port), port, "the endpoint's port is the grant's");
  // The link holds a one-time ticket for the launcher, never the password; how to get
  // the launcher is said, and copying stays.
  const href = await dialog.getByRole("link", { name: "Open in WinBox" }).getAttribute("href");
  assert.ok(href.startsWith(`winbox://${endpoint}?user=${username}&ticket=wbt_`), href);
  assert.match(href, /&server=http%3A%2F%2F[0-9.]+%3A\d+$/);
  assert.ok(!href.includes(password), "no password in the link");
  assert.match(await dialog.locator("details.launcher summary").innerText(), /launcher/);
  await dialog.getByRole("button", { name: "Copy Password" }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), password);
  await dialog.getByRole("button", { name: "Copy Username" }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), username);
  await shot(page, "22-access-credentials");
  // The phone sees the same dialog.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "23-access-credentials-phone");
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });
  // The password leaves the page with the dialog.
  await page.waitForFunction(() => document.getElementById("dialog-body").textContent === "");
  // Reading them was audited, as through the API.
  const audit = await api("GET", "/api/audit");
  const reads = (audit.items || audit).filter((e) => e.action === "access.credentials.read" && e.target === `access:${grant.id}`);
  assert.equal(reads.length, 1, JSON.stringify(reads));
  assert.deepEqual(problems, []);
  await context.close();
});

test("a refused Add form says what is wrong next to the field", async () => {
  const { page, problems, context } = await newPage();
  await openTab(page, "Transient Access");
  await page.getByText("Add transient access").click();
  await page.getByLabel("Allow from").fill("203.0.113.0/8");
  await page.getByLabel("SSH").check();
  await page.getByRole("button", { name: "Create access" }).click();
  const input = page.getByLabel("Allow from");
  await page.locator("#allow_from-error").waitFor();
  assert.equal(await input.getAttribute("aria-invalid"), "true");
  assert.match(await page.locator("#allow_from-error").innerText(), /\/24/);
  // What was typed is kept, and the field in error has the focus.
  assert.equal(await input.inputValue(), "203.0.113.0/8");
  assert.equal(await page.getByLabel("SSH").isChecked(), true);
  assert.equal(await page.evaluate(() => document.activeElement.id), "allow_from");
  await shot(page, "24-access-refused");
  // Chromium logs the 422 itself as a console error: that one is expected.
  assert.deepEqual(problems.filter((p) => !p.includes("422")), []);
  await context.close();
});

/** Runs `command` on the router through the gateway with OpenSSH; { code, out }. */
function ssh(host, port, user, password, command) {
  return new Promise((ok) => {
    execFile(
      "sshpass",
      ["-e", "ssh", "-p", String(port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", "PreferredAuthentications=password,keyboard-interactive", "-o", "PubkeyAuthentication=no",
        "-o", "ConnectTimeout=5", "-o", "NumberOfPasswordPrompts=1",
        `${user}@${host}`, command],
      { env: { ...process.env, SSHPASS: password }, timeout: 20000 },
      (err, stdout, stderr) => ok({ code: err ? (err.code ?? 1) : 0, out: stdout + stderr }),
    );
  });
}

test("an SSH access from the form logs in through the gateway, until revoked", async () => {
  const { page, problems, context } = await newPage();
  await openTab(page, "Transient Access");
  await page.getByText("Add transient access").click();
  await page.getByLabel("SSH").check();
  await page.getByRole("button", { name: "Create access" }).click();
  const username = (await page.getByRole("status").innerText()).match(/postern-[a-z0-9]{8}/)[0];
  const row = liveRow(page, username);
  await row.locator(".badge.active").waitFor({ timeout: 15000 });
  assert.match(await row.innerText(), /SSH · full/);
  await row.getByRole("button", { name: `Credentials of ${username}` }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  const [endpoint, user, password, command] = await dialog.locator("dd code").allInnerTexts();
  assert.equal(user, username);
  const [host, port] = [endpoint.slice(0, endpoint.lastIndexOf(":")), endpoint.slice(endpoint.lastIndexOf(":") + 1)];
  assert.equal(command, `ssh -p ${port} ${username}@${host}`);
  assert.equal(await dialog.getByRole("link", { name: "Open in WinBox" }).count(), 0, "no WinBox link for SSH");
  await shot(page, "40-ssh-credentials");
  await page.keyboard.press("Escape");

  // The credentials shown log in, through the gateway's port, to the router itself.
  let result;
  for (let i = 0; i < 10; i++) {
    result = await ssh(host, port, user, password, "/system identity print");
    if (result.code === 0) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(result.code, 0, result.out);
  assert.match(result.out, /name:/, result.out);
  // The first use is recorded (by the gateway) and shown.
  let first = null;
  for (let i = 0; i < 40 && !first; i++) {
    const grants = await api("GET", `/api/routers/${routerId}/transient-access`);
    first = grants.find((g) => g.username === username).authorized_at;
    if (!first) await new Promise((r) => setTimeout(r, 250));
  }
  assert.ok(first, "authorized_at is set by the first login");
  await page.reload();
  const used = liveRow(page, username);
  await used.waitFor();
  assert.doesNotMatch(await used.innerText(), /not yet used/, "the first use is shown once it happened");

  page.once("dialog", (d) => d.accept());
  await used.getByRole("button", { name: `Revoke ${username}` }).click();
  await used.waitFor({ state: "detached" });
  const after = await ssh(host, port, user, password, "/system identity print");
  assert.notEqual(after.code, 0, `a revoked login no longer works: ${after.out}`);
  assert.deepEqual(problems, []);
  await context.close();
});

test("Revoke asks first, then the grant moves to Ended", async () => {
  const grant = await api("POST", `/api/routers/${routerId}/transient-access`, {
    type: "ssh", allow_from: "127.0.0.1/32", expire_after_minutes: 60,
  });
  const { page, problems, context } = await newPage();
  await openTab(page, "Transient Access");
  const row = liveRow(page, grant.username);
  await row.waitFor();
  // Declining the question changes nothing.
  page.once("dialog", (d) => d.dismiss());
  await row.getByRole("button", { name: `Revoke ${grant.username}` }).click();
  await page.waitForTimeout(300);
  assert.equal(await row.count(), 1);
  page.once("dialog", (d) => {
    assert.match(d.message(), new RegExp(`Revoke ${grant.username}`));
    d.accept();
  });
  await row.getByRole("button", { name: `Revoke ${grant.username}` }).click();
  await row.waitFor({ state: "detached" });
  const ended = page.locator("table.ended tbody tr", { hasText: grant.username });
  await ended.waitFor();
  await ended.locator(".badge.revoked").waitFor({ timeout: 15000 });
  assert.match(await ended.innerText(), /before its end/);
  await shot(page, "25-access-revoked");
  const after = await api("GET", `/api/routers/${routerId}/transient-access/${grant.id}`);
  assert.ok(["closing", "revoked"].includes(after.status), after.status);
  assert.equal(after.revoked_early, true);
  assert.deepEqual(problems, []);
  await context.close();
});

test("Add a transient forward, see its Details, revoke it", async () => {
  const { page, problems, context } = await newPage();
  await openTab(page, "Transient Forwarding");
  await page.getByText("Add transient forward").click();
  assert.equal(await page.getByLabel("Masquerade").isChecked(), false);
  assert.equal(await page.getByLabel("Allow from").inputValue(), "127.0.0.1");
  assert.equal(await page.getByLabel("Validity").inputValue(), "120");
  await page.getByLabel("Destination address").fill("192.168.88.43");
  await page.getByLabel("Destination port").fill("8080");
  await page.getByLabel("Masquerade").check();
  await shot(page, "26-forward-add-form");
  await page.getByRole("button", { name: "Create forward" }).click();
  await page.getByRole("status").waitFor();
  const row = liveRow(page, "192.168.88.43:8080");
  await row.waitFor();
  assert.match(await row.innerText(), /masquerade/);
  await row.locator(".badge.active").waitFor({ timeout: 15000 });
  await shot(page, "27-forward-created");
  await row.getByRole("link", { name: /Details of/ }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /forwarded to 192\.168\.88\.43:8080/);
  await shot(page, "28-forward-details");
  await dialog.getByRole("link", { name: "Close" }).click();
  await dialog.waitFor({ state: "hidden" });
  page.once("dialog", (d) => d.accept());
  await row.getByRole("button", { name: /Revoke/ }).click();
  await row.waitFor({ state: "detached" });
  await page.locator("table.ended tbody tr", { hasText: "192.168.88.43:8080" }).waitFor();
  assert.deepEqual(problems, []);
  await context.close();
});

test("the Orchestration Log shows each job and its lines", async () => {
  const { page, problems, context } = await newPage();
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  await page.getByRole("link", { name: siteName }).click();
  await page.getByRole("link", { name: "Orchestration Log" }).click();
  await page.waitForURL(/\/jobs$/);
  const jobs = page.locator("ul.jobs > li");
  await jobs.first().waitFor();
  const kinds = await jobs.locator("summary code.kind").allInnerTexts();
  assert.match((await jobs.locator("summary strong").allInnerTexts()).join("|"), /Set up transient access/);
  assert.ok(kinds.includes("access.create"), kinds.join(", "));
  assert.ok(kinds.includes("forward.create"), kinds.join(", "));
  // Newest first: the last thing done (the forward's revoke) heads the list.
  assert.equal(kinds[0], "forward.end", kinds.join(", "));
  const first = jobs.first().locator("details");
  if ((await first.getAttribute("open")) === null) await first.locator("summary").click();
  await first.locator("ol.lines li").first().waitFor();
  assert.match(await first.locator("ol.lines").innerText(), /completed|connected/);
  await shot(page, "29-jobs");
  assert.deepEqual(problems, []);
  await context.close();
});

test("on a phone (390×844) every screen fits the width", async () => {
  const { page, problems, context } = await newPage(390, 844);
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  const fits = async (what) => {
    const [scroll, client] = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert.ok(scroll <= client, `${what}: ${scroll} px wide in ${client}`);
  };
  await fits("sites");
  await page.getByRole("link", { name: siteName }).click();
  await page.locator(".facts").waitFor();
  await fits("overview");
  await shot(page, "30-overview-phone");
  await page.getByRole("link", { name: "Transient Access" }).click();
  await page.getByText("Add transient access").click();
  await page.getByRole("button", { name: "Create access" }).waitFor();
  await fits("access");
  await shot(page, "31-access-form-phone");
  await page.getByRole("link", { name: "Transient Forwarding" }).click();
  await page.getByText("Add transient forward").click();
  await page.getByRole("button", { name: "Create forward" }).waitFor();
  await fits("forwards");
  await shot(page, "32-forwards-phone");
  await page.getByRole("link", { name: "Orchestration Log" }).click();
  await page.locator("ul.jobs").waitFor();
  await fits("jobs");
  await shot(page, "33-jobs-phone");
  assert.deepEqual(problems, []);
  await context.close();
});

test("keyboard alone: add access, open its Credentials, close them", async () => {
  const { page, problems, context } = await newPage();
  await openTab(page, "Transient Access");
  /** Tabs until the focused element's text or label matches `re`. */
  const tabTo = async (re) => {
    for (let i = 0; i < 60; i++) {
      await page.keyboard.press("Tab");
      const name = await page.evaluate(() => {
        const a = document.activeElement;
        return (a.getAttribute("aria-label") || (a.labels && a.labels[0] && a.labels[0].textContent) || a.textContent || "").trim();
      });
      if (re.test(name)) return name;
    }
    throw new Error(`never reached ${re}`);
  };
  await tabTo(/^Add transient access$/);
  await page.keyboard.press("Enter");
  // A radio group is one stop: the arrows choose within it.
  await tabTo(/^WinBox$/);
  await page.keyboard.press("ArrowRight");
  assert.equal(await page.getByLabel("SSH").isChecked(), true);
  await tabTo(/^Allow from$/);
  assert.equal(await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle), "solid");
  await tabTo(/^Create access$/);
  await page.keyboard.press("Enter");
  const username = (await page.getByRole("status").innerText()).match(/postern-[a-z0-9]{8}/)[0];
  assert.match(await liveRow(page, username).innerText(), /SSH · full/);
  await tabTo(new RegExp(`^Credentials of ${username}$`));
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  assert.match(await page.evaluate(() => document.activeElement.textContent), /Copy/, "focus moves into the dialog");
  await shot(page, "41-keyboard-credentials");
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });
  assert.equal(
    await page.evaluate(() => document.activeElement.getAttribute("aria-label")),
    `Credentials of ${username}`,
    "focus returns to the button",
  );
  assert.deepEqual(problems, []);
  await context.close();
});

test("Add site shows the line to paste with a copy button, and the site waits for its router", async () => {
  const { page, problems, context } = await newPage();
  await signIn(page);
  await page.waitForURL(/\/sites$/);
  await page.locator("summary", { hasText: "Add site" }).click();
  await page.getByLabel("Name").fill("web-nat-1");
  await page.locator(".add-site-form button[type=submit]").click();
  await page.getByRole("heading", { name: "Site web-nat-1 added" }).waitFor();
  const line = await page.locator("#enroll-line").innerText();
  // The demo runs in lab mode: plain HTTP, said in a comment line first.
  assert.match(line, /^# Lab mode/, line);
  assert.match(line, /\/tool fetch url="http:\/\/127\.0\.0\.1:\d+\/enroll\/pet_[A-Za-z0-9_-]{43}"/, line);
  assert.equal(await page.getByRole("button", { name: "Copy the line" }).getAttribute("data-copy"), line);
  await shot(page, "20-add-site-line");
  await page.getByRole("link", { name: "Go to the site" }).click();
  await page.getByRole("heading", { name: "Waiting for the router" }).waitFor();
  assert.match(await page.locator(".onboarding").innerText(), /stops working 1 day from now/);
  await page.getByRole("button", { name: "Re-issue line" }).click();
  await page.getByRole("heading", { name: "A new line for web-nat-1" }).waitFor();
  assert.notEqual(await page.locator("#enroll-line").innerText(), line);
  assert.deepEqual(problems, []);
  await context.close();
});
