// The terminal in a real browser: Debian's chromium driven by playwright-core, against
// `postern demo` (a real server whose orchestrator creates the SSH access on a real sim
// router on a 127.x address). Presses Terminal on the site's Overview, types
// `/system identity print` into xterm.js, sees the router's identity, leaves the
// terminal with the keyboard (Ctrl+]) and closes it, sees the access revoked, then
// replays the recording. Screenshots under target/web-screenshots/. Any console error
// (a content security policy violation included) fails the test.
//
// Run: POSTERN_BIN=target/debug/postern node --test web-tests/

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { connect } from "node:net";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = resolve(import.meta.dirname, "..");
const bin = resolve(process.env.POSTERN_BIN || join(root, "target/debug/postern"));
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const shots = resolve(process.env.POSTERN_SCREENSHOTS || join(root, "target/web-screenshots"));

const children = [];
let browser, baseUrl, adminPassword, token, siteName, identity, routerId;

/** Starts a process and resolves with the first stdout/stderr line `pick` accepts. */
function startAndRead(args, pick, what) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("POSTERN_")));
  const child = spawn(bin, args, { env: clean, stdio: ["ignore", "pipe", "pipe"] });
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
  // `postern demo`: the server (with its orchestrator and gateway) and a sim router on a
  // 127.x block of its own, every port picked by the kernel, in lab mode over a
  // temporary data directory it removes at exit; one JSON line once everything listens.
  const base = `127.${1 + Math.floor(Math.random() * 200)}.${1 + Math.floor(Math.random() * 250)}.1`;
  const demo = await startAndRead(
    ["demo", "--json", "--listen", "127.0.0.1:0", "--routers", "1", "--base-address", base],
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
  token = d.api_token;
  routerId = d.routers[0].id;
  identity = d.routers[0].name;
  const sites = await api("GET", "/api/sites");
  siteName = sites.find((s) => s.router && s.router.id === routerId).name;
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
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

async function newPage(width = 1280, height = 900) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  return { page, problems, context };
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/** The text xterm.js shows (its DOM renderer's rows). */
async function screenText(page, scope) {
  return page.locator(`${scope} .xterm-rows`).innerText();
}

async function waitForScreen(page, scope, pattern, what) {
  const deadline = Date.now() + 15000;
  let text = "";
  while (Date.now() < deadline) {
    text = await screenText(page, scope).catch(() => "");
    if (pattern.test(text)) return text;
    await page.waitForTimeout(100);
  }
  assert.fail(`${what}: ${pattern} not on the screen:\n${text}`);
}

test("Terminal: run /system identity print on the router, close, replay the recording", async () => {
  const { page, problems, context } = await newPage();
  await page.goto(baseUrl + "/");
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/sites$/);
  await page.getByRole("link", { name: siteName }).click();
  await page.getByRole("heading", { name: siteName }).waitFor();

  await page.getByRole("button", { name: "Terminal" }).click();
  const panel = page.locator("#terminal-dock .terminal-panel");
  await panel.waitFor();
  await waitForScreen(page, "#terminal-dock", /\] > /, "the router's prompt");
  assert.equal(await panel.locator(".terminal-status").innerText(), "connected");
  // The terminal has the keyboard: type the command as a user would.
  await page.keyboard.type("/system identity print");
  await page.keyboard.press("Enter");
  const text = await waitForScreen(page, "#terminal-dock", new RegExp(`name: ${identity}`), "the identity");
  assert.match(text, /\/system identity print/);
  // Colours are on: xterm.js's <style> elements (allowed by the session's style nonce;
  // a refused one would be a console error) give ANSI red the theme's red.
  const red = await page.locator("#terminal-dock .xterm-rows").evaluate((rows) => {
    const span = document.createElement("span");
    span.className = "xterm-fg-1";
    rows.appendChild(span);
    const color = getComputedStyle(span).color;
    span.remove();
    return color;
  });
  assert.equal(red, "rgb(255, 107, 107)");
  await shot(page, "40-terminal");

  // The access is the admin's own SSH grant, listed like any other.
  const live = await api("GET", `/api/routers/${routerId}/transient-access`);
  const ssh = live.filter((g) => g.type === "ssh");
  assert.equal(ssh.length, 1);
  assert.equal(ssh[0].status, "active");
  // The server itself connects to the router: the gateway opens no entry port for it.
  const refused = await new Promise((ok) => {
    const socket = connect({ host: "127.0.0.1", port: ssh[0].port });
    socket.on("connect", () => { socket.destroy(); ok(false); });
    socket.on("error", (e) => ok(e.code === "ECONNREFUSED"));
  });
  assert.ok(refused, `the terminal's entry port ${ssh[0].port} should not listen`);

  // Keyboard: Ctrl+] leaves the terminal for its Close button; Enter closes it.
  await page.keyboard.press("Control+]");
  assert.equal(await page.evaluate(() => document.activeElement.textContent.trim()), "Close");
  await page.keyboard.press("Enter");
  await panel.waitFor({ state: "detached" });
  assert.equal(await page.evaluate(() => document.activeElement.id), "terminal-open", "focus goes back to the button");

  // Closing revoked the access.
  const deadline = Date.now() + 15000;
  let status;
  while (Date.now() < deadline) {
    const all = await api("GET", `/api/routers/${routerId}/transient-access?all=true`);
    status = all.find((g) => g.id === ssh[0].id).status;
    if (status === "revoked") break;
    await new Promise((ok) => setTimeout(ok, 200));
  }
  assert.equal(status, "revoked");

  // The Overview lists the recorded session; its replay plays what was shown.
  await page.reload();
  await page.getByRole("link", { name: "Replay" }).first().click();
  await page.getByRole("heading", { name: "Terminal recording" }).waitFor();
  await page.locator(".replay[data-done]").waitFor({ timeout: 20000 });
  await waitForScreen(page, ".replay", new RegExp(`name: ${identity}`), "the replay");
  await shot(page, "41-terminal-replay");
  // The .cast file is asciicast v2.
  const cast = await page.evaluate(async () => {
    const a = document.querySelector(".replay-bar a[download]");
    const r = await fetch(a.getAttribute("href"));
    return { type: r.headers.get("content-type"), text: await r.text() };
  });
  assert.equal(cast.type, "application/x-asciicast");
  const header = JSON.parse(cast.text.split("\n")[0]);
  assert.equal(header.version, 2);
  assert.ok(header.width > 10 && header.height > 5, JSON.stringify(header));
  assert.deepEqual(problems, []);
  await context.close();
});

test("Terminal on a phone-sized screen", async () => {
  const { page, problems, context } = await newPage(390, 844);
  await page.goto(baseUrl + "/");
  await page.getByLabel("Username").fill("admin");
  await page.getByLabel("Password").fill(adminPassword);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/sites$/);
  await page.getByRole("link", { name: siteName }).click();
  await page.getByRole("button", { name: "Terminal" }).click();
  await waitForScreen(page, "#terminal-dock", /\] > /, "the router's prompt");
  await shot(page, "42-terminal-phone");
  await page.getByRole("button", { name: "Close" }).click();
  await page.locator("#terminal-dock .terminal-panel").waitFor({ state: "detached" });
  assert.deepEqual(problems, []);
  await context.close();
});
