// The broker's web console in a real headless Chromium (playwright-core),
// run by tests/console.rs, which starts the broker and the order service,
// puts a known data set and passes:
//   CONSOLE_URL   the broker's admin port      CONTROL_URL  the test's control server
//   ORDER_ID      an order through its flow    CHROMIUM     the browser binary
//   PLAYWRIGHT_CORE  the installed package     SCREENSHOTS  where pages are saved
// Every check compares what the page shows with what the API answers. Any
// console error or page error fails the run. Exit code 0 means all passed.
import { createRequire } from "node:module";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set`); return v; };
const BASE = env("CONSOLE_URL"), CONTROL = env("CONTROL_URL"), ORDER_ID = env("ORDER_ID"), SHOTS = env("SCREENSHOTS");
const require = createRequire(join(env("PLAYWRIGHT_CORE"), "package.json"));
const { chromium } = require(env("PLAYWRIGHT_CORE"));

const started = Date.now();
const log = (...a) => console.log(`[console-ui ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a);
let passed = 0, failed = 0;
const problems = [];

async function api(path) {
  const r = await fetch(BASE + path);
  if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}
async function control(path) {
  const r = await fetch(CONTROL + path, { method: "POST" });
  if (!r.ok) throw new Error(`control ${path}: ${r.status}`);
  const t = await r.text();
  try { return JSON.parse(t); } catch (_) { return t; }
}
// Polls `fn` until it returns a truthy value; fails after `ms`.
async function until(what, fn, ms = 20000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try { const v = await fn(); if (v) return v; last = v; } catch (e) { last = e.message; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
async function check(name, fn) {
  try { await fn(); passed++; log(`ok   ${name}`); }
  catch (e) { failed++; problems.push(`${name}: ${e.message}`); log(`FAIL ${name}: ${e.message}`); }
}
function eq(a, b, what) { if (String(a) !== String(b)) throw new Error(`${what}: page shows ${a}, API says ${b}`); }
const value = (page, sel) => page.locator(sel).first().getAttribute("data-value");

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
// playwright starts every context with a fresh profile (a new --user-data-dir).
const consoleErrors = [];
async function newPage(viewport, label) {
  const context = await browser.newContext({ viewport, deviceScaleFactor: 1, isMobile: viewport.width < 500, hasTouch: viewport.width < 500 });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(`${label} ${page.url()}: ${m.text()}`); });
  page.on("pageerror", (e) => consoleErrors.push(`${label} ${page.url()}: ${e.message}`));
  // ERR_ABORTED is the browser cancelling a request itself (a live poll in
  // flight when a page navigates or closes): not a failure the user sees.
  page.on("requestfailed", (r) => {
    const why = r.failure()?.errorText;
    if (!r.url().includes("format=jsonl") && why !== "net::ERR_ABORTED") consoleErrors.push(`${label} request failed ${r.url()}: ${why}`);
  });
  return page;
}
async function shot(page, name) { await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true }); }
// Text a page must never show: values that failed to render.
const BROKEN = /\[object |undefined|NaN/;
async function rendersCleanly(page) {
  const text = await page.evaluate(() => document.body.innerText);
  const m = text.match(BROKEN);
  if (m) throw new Error(`${page.url()} shows ${JSON.stringify(m[0])}: …${text.slice(Math.max(0, m.index - 80), m.index + 40)}…`);
}
async function go(page, hash, ready) {
  await page.goto(`${BASE}/ui${hash}`);
  await page.locator(ready).first().waitFor({ timeout: 15000 });
  await rendersCleanly(page);
}

const page = await newPage({ width: 1280, height: 900 }, "laptop");

await check("overview: numbers match /api/v1/overview", async () => {
  await go(page, "#/", "[data-testid=ov-version]");
  await until("overview numbers to match the API", async () => {
    const o = await api("/api/v1/overview");
    eq(await value(page, "[data-testid=ov-version]"), o.version, "version");
    eq(await value(page, "[data-testid=ov-durability]"), o.durability.mode, "durability");
    eq(await value(page, "[data-testid=ov-streams]"), o.streams, "streams");
    eq(await value(page, "[data-testid=ov-shards]"), o.shards, "shards");
    eq(await value(page, "[data-testid=ov-groups]"), o.groups, "groups");
    eq(await value(page, "[data-testid=ov-watermark]"), o.disk.watermark_bytes, "watermark");
    eq(await value(page, "[data-testid=ov-failed]"), o.failed_shards.length, "failed shards");
    return true;
  }, 10000);
});

await check("overview: the live chart moves while a producer runs", async () => {
  await control("/producer/start");
  const first = await until("records in on the chart", async () => {
    const v = Number(await value(page, "[data-testid=chart-records-last-0]"));
    return v > 0 ? Number(await page.locator("[data-testid=chart-records]").getAttribute("data-t1")) : 0;
  });
  const later = await until("the chart to move on", async () => {
    const t1 = Number(await page.locator("[data-testid=chart-records]").getAttribute("data-t1"));
    return t1 > first ? t1 : 0;
  });
  const n = Number(await page.locator("[data-testid=chart-records]").getAttribute("data-points"));
  if (!(later > first && n >= 2)) throw new Error(`chart did not move: ${first} -> ${later}, ${n} points`);
  const inRate = Number(await value(page, "[data-testid=ov-records-in]"));
  if (!(inRate > 0)) throw new Error(`records in shows ${inRate} while producing`);
  await shot(page, "01-overview");
  await control("/producer/stop");
});

await check("streams: the list matches /api/v1/streams", async () => {
  await go(page, "#/streams", "[data-testid=streams-table]");
  await until("stream records to match", async () => {
    const { streams } = await api("/api/v1/streams");
    for (const st of streams) {
      const row = page.locator(`tr[data-stream="${st.name}"]`);
      eq(await row.locator("[data-testid=shards]").getAttribute("data-value"), st.open_shards, `${st.name} shards`);
      eq(await row.locator("[data-testid=records]").getAttribute("data-value"), st.records, `${st.name} records`);
    }
    return streams.length >= 7;
  });
  await shot(page, "02-streams");
});

await check("stream page: the shard tree shows sequences and quota bars", async () => {
  await go(page, "#/streams/clicks", "[data-testid=shard-tree] .shard");
  await until("shard sequences to match", async () => {
    const st = await api("/api/v1/streams/clicks");
    eq(await page.locator("[data-testid=shard-tree] .shard").count(), st.shards.length, "shards");
    for (const sh of st.shards) {
      const box = page.locator(`.shard[data-shard="${sh.shard_id}"]`);
      eq(await box.locator("[data-testid=first-seq]").getAttribute("data-value"), sh.first_sequence_number, "first seq");
      eq(await box.locator("[data-testid=next-seq]").getAttribute("data-value"), sh.next_sequence_number, "next seq");
    }
    return true;
  });
  eq(await page.locator("[role=meter]").count(), 4, "one write and one read bar per shard");
  eq(await page.locator('a[href="#/groups/clicks/analytics"]').textContent(), "analytics", "the stream's group links to it");
  await shot(page, "03-stream");
});

await check("stream page: a split's children render under their closed parent", async () => {
  // Resharding is not in the broker yet; this is the shape its shards will have.
  const st = await api("/api/v1/streams/clicks");
  const [a] = st.shards;
  const fake = { ...st, shards: [
    { ...a, shard_id: "shardId-000000000000", state: "closed", parent_shard_id: null },
    { ...a, shard_id: "shardId-000000000001", state: "open", parent_shard_id: "shardId-000000000000" },
    { ...a, shard_id: "shardId-000000000002", state: "open", parent_shard_id: "shardId-000000000000" },
  ] };
  await page.route("**/api/v1/streams/clicks", (route) => route.fulfill({ json: fake }));
  await go(page, "#/streams/clicks", "[data-testid=shard-tree] .shard");
  await until("the tree", async () => (await page.locator("[data-testid=shard-tree] > li > ul > li .shard").count()) === 2);
  eq(await page.locator(".shard.closed").count(), 1, "closed shards");
  await shot(page, "04-stream-resharded");
  await page.unroute("**/api/v1/streams/clicks");
});

await check("message browser: shows a record put a moment before, as JSON, text or hex", async () => {
  const data = JSON.stringify({ hello: "console", nested: { list: [1, 2, 3] } });
  const put = await control(`/put?key=fresh-key&data=${encodeURIComponent(data)}`);
  await go(page, `#/browse?stream=clicks&shard=${put.shard_id}`, "[data-testid=records]");
  const rec = page.locator(`article.record[data-seq="${put.sequence_number}"]`);
  await rec.waitFor({ timeout: 10000 });
  eq(await rec.locator("[data-testid=record-key]").textContent(), "fresh-key", "partition key");
  const text = await rec.locator(".json").textContent();
  if (!text.includes('"hello"') || !text.includes('"console"')) throw new Error(`JSON view: ${text}`);
  if ((await rec.locator(".json details").count()) < 2) throw new Error("nested JSON is not collapsible");
  await shot(page, "05-messages");
  await page.selectOption("select[name=decode]", "hex");
  await page.click("form button[type=submit]");
  await page.locator(`article.record[data-seq="${put.sequence_number}"] pre[data-kind=hex]`).waitFor({ timeout: 10000 });
  await page.selectOption("select[name=decode]", "text");
  await page.fill("input[name=key]", "fresh-key");
  await page.click("form button[type=submit]");
  await until("the key search", async () => {
    const keys = await page.locator("[data-testid=record-key]").allTextContents();
    return keys.length >= 1 && keys.every((k) => k === "fresh-key");
  });
  const href = await page.locator("[data-testid=download]").getAttribute("href");
  const lines = (await (await fetch(BASE + href)).text()).trim().split("\n").map((l) => JSON.parse(l));
  if (!lines.some((l) => l.sequence_number === put.sequence_number && l.partition_key === "fresh-key")) throw new Error("download lacks the record");
  await shot(page, "06-messages-search");
});

await check("consumer group: lag rises while the consumer is stopped and falls when it resumes", async () => {
  await go(page, "#/groups", "[data-testid=groups-table]");
  await until("groups to match", async () => {
    const { groups } = await api("/api/v1/groups");
    for (const g of groups) {
      const row = page.locator(`tr[data-group="${g.stream}/${g.group}"]`);
      eq(await row.locator("[data-testid=members]").getAttribute("data-value"), g.members, `${g.group} members`);
    }
    return groups.length >= 4;
  });
  await shot(page, "07-groups");
  await go(page, "#/groups/clicks/analytics", "[data-testid=group-lag-records]");
  await until("lag 0 before", async () => Number(await value(page, "[data-testid=group-lag-records]")) === 0);
  await control("/consumer/stop");
  await control(`/put?key=late&data=waiting&n=25`);
  const high = await until("lag to rise to 25", async () => {
    const v = Number(await value(page, "[data-testid=group-lag-records]"));
    return v >= 25 ? v : 0;
  });
  const g = await api("/api/v1/streams/clicks/groups/analytics");
  eq(high, g.lag_records, "lag records");
  await until("the lag chart to show the rise", async () => Number(await value(page, "[data-testid=chart-lag-records-last-0]")) >= 25);
  await shot(page, "08-group-lagging");
  await control("/consumer/resume");
  await until("lag to fall to 0", async () => Number(await value(page, "[data-testid=group-lag-records]")) === 0);
  await until("the lag chart to show the fall", async () => Number(await value(page, "[data-testid=chart-lag-records-last-0]")) === 0);
  await shot(page, "09-group-caught-up");
});

await check("orders: the list and one order's whole flow", async () => {
  await go(page, "#/orders", "[data-testid=orders-table]");
  await page.locator(`tr[data-order="${ORDER_ID}"]`).waitFor({ timeout: 10000 });
  await shot(page, "10-orders");
  await go(page, `#/orders/${ORDER_ID}`, "[data-testid=flow] li");
  const steps = await page.locator("[data-testid=flow] li").evaluateAll((els) => els.map((e) => [e.dataset.step, e.dataset.done]));
  eq(JSON.stringify(steps), JSON.stringify(["placed", "emailed", "fulfilled", "queued", "delivered", "review"].map((s) => [s, "true"])), "flow");
  await shot(page, "11-order-flow");
});

await check("dead letters: errors shown, replay behind a confirmation", async () => {
  await go(page, "#/dead-letters", "[data-testid=dlq-streams]");
  await go(page, "#/dead-letters/deliveryServiceQueue-dlq", "[data-testid=dead-letters] tr[data-seq]");
  const row = page.locator("[data-testid=dead-letters] tr[data-seq]").first();
  const text = await row.textContent();
  if (!text.includes("the delivery company answered 500")) throw new Error(`row: ${text}`);
  await row.locator("button").click();
  await page.locator("dialog#confirm[open]").waitFor();
  await shot(page, "12-dead-letters-confirm");
  await page.click("#confirm-ok");
  await until("the replay message", async () => (await page.locator("main [role=status]").textContent()).includes("Replayed to deliveryServiceQueue"));
  await shot(page, "13-dead-letters");
});

await check("keyboard: skip link, navigation and confirmation work without a mouse", async () => {
  await page.goto("about:blank");
  await go(page, "#/", "[data-testid=ov-version]");
  await page.keyboard.press("Tab");
  eq(await page.evaluate(() => document.activeElement.textContent), "Skip to content", "first tab stop");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Tab");
  eq(await page.evaluate(() => document.activeElement.textContent), "Streams", "fourth tab stop");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  if (outline === "none") throw new Error("the focused link has no outline");
  await page.keyboard.press("Enter");
  await page.locator("[data-testid=streams-table]").waitFor();
  eq(await page.evaluate(() => location.hash), "#/streams", "Enter follows the link");
  eq(await page.evaluate(() => document.activeElement.tagName), "H1", "focus moves to the new page's heading");
});

await check("phone: pages fit a 390 px screen", async () => {
  const phone = await newPage({ width: 390, height: 844 }, "phone");
  for (const [hash, ready, name] of [["#/", "[data-testid=ov-version]", "14-phone-overview"], ["#/streams/clicks", "[data-testid=shard-tree] .shard", "15-phone-stream"],
    [`#/orders/${ORDER_ID}`, "[data-testid=flow] li", "16-phone-order"]]) {
    await phone.goto(`${BASE}/ui${hash}`);
    await phone.locator(ready).first().waitFor({ timeout: 15000 });
    await rendersCleanly(phone);
    // A mobile browser widens its layout viewport to overflowing content, so compare with the screen.
    const sw = await phone.evaluate(() => document.documentElement.scrollWidth);
    if (sw > 391) throw new Error(`${hash}: page is ${sw}px wide on a 390px screen`);
    await shot(phone, name);
  }
  await phone.context().close();
});

await check("no console errors on any page", async () => {
  if (consoleErrors.length) throw new Error(consoleErrors.join("\n"));
});

await browser.close();
const summary = `${passed} passed, ${failed} failed`;
writeFileSync(join(SHOTS, "RESULT.txt"), `${summary}\n${problems.join("\n")}\n`);
log(summary);
process.exit(failed ? 1 : 0);
