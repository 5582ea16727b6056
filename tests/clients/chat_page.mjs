// The chat relay's demo page in headless Debian Chromium (playwright-core): two tabs, alice
// and bob, each opened at the URL the demo prints (?token=..&user=..&peer=..).
//
//   node chat_page.mjs ALICE_URL BOB_URL [IMAGE]
//
// alice writes to bob before bob's tab is open: her message shows one tick (sent) and stays
// so. Then bob's tab opens: it shows the message as text (no markup), acks and reads it, and
// alice's tick goes to delivered, then read; she sees bob online. bob answers; his tick goes
// to read. bob's tab reloaded shows the conversation from history. With IMAGE (a relay with
// [media]), alice attaches it: her tab uploads it to the origin with the relay's credential
// and sends it, bob's tab shows the image loaded from the CDN, and alice's tick goes to read.
// Any page error or
// Content-Security-Policy violation fails the run.
//
// Prints one JSON line {"ok", "steps": [...], "problems": [...]}; exits 0 only when ok.
import { chromium } from "playwright-core";

const [aliceUrl, bobUrl, image] = process.argv.slice(2);
if (!aliceUrl || !bobUrl) {
  console.error("usage: node chat_page.mjs ALICE_URL BOB_URL");
  process.exit(2);
}
const WAIT_MS = 10000;
const result = { ok: false, steps: [], problems: [] };
const step = (text) => result.steps.push(text);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});

// Polls `fn(arg)` in the page until it is true. (Playwright's waitForFunction evaluates a
// string, which the page's policy rightly refuses: 'unsafe-eval' is not allowed.)
async function until(page, fn, arg, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await page.evaluate(fn, arg))) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// A tab of its own browser context (its own storage), watched for errors.
async function tab(name, url) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => result.problems.push(`${name}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) {
      result.problems.push(`${name}: ${m.text()}`);
    }
  });
  await page.goto(url);
  await until(page, (user) => document.getElementById("status").textContent === `Connected as ${user}.`,
    name, `${name} connected`);
  if (new URL(page.url()).searchParams.has("token")) throw new Error(`${name}: the token stays in the address bar`);
  step(`${name}: connected`);
  return page;
}

// The tick state of the message with this text in `page`'s log (its own message).
const ticks = (page, text) => page.evaluate((text) => {
  const li = [...document.querySelectorAll("#log li.mine")].find((li) => li.firstChild.textContent === text);
  return li ? li.querySelector(".ticks").dataset.state : null;
}, text);

const waitTicks = (page, text, state) => until(page, ({ text, state }) => {
  const li = [...document.querySelectorAll("#log li.mine")].find((li) => li.firstChild.textContent === text);
  return Boolean(li && li.dataset.msg && li.querySelector(".ticks").dataset.state === state);
}, { text, state }, `ticks ${state} on "${text}"`);

// Waits for a message from the peer with exactly this text, shown as text.
const waitTheirs = (page, text) => until(page, (text) => {
  const li = [...document.querySelectorAll("#log li.theirs")].find((li) => li.firstChild.textContent === text);
  return Boolean(li && li.querySelector("b") === null);
}, text, `the message "${text}" shown`);

try {
  const alice = await tab("alice", aliceUrl);
  await until(alice, () => document.getElementById("presence").textContent.startsWith("bob is offline"),
    null, "bob offline on alice's tab");
  step("alice: bob is offline");
  // Record every state alice's ticks pass through.
  await alice.evaluate(() => {
    window.__states = [];
    new MutationObserver((records) => {
      for (const r of records) window.__states.push(r.target.dataset.state);
    }).observe(document.getElementById("log"), { subtree: true, attributes: true, attributeFilter: ["data-state"] });
  });
  const first = 'hello bob <b>bold?</b> & "quotes"';
  await alice.fill("#compose input[name=body]", first);
  await alice.press("#compose input[name=body]", "Enter");
  await waitTicks(alice, first, "sent");
  await new Promise((r) => setTimeout(r, 1000));
  const before = await ticks(alice, first);
  if (before !== "sent") throw new Error(`alice's tick is ${before} while bob has never connected`);
  step("alice: sent (one tick) while bob is away");

  const bob = await tab("bob", bobUrl);
  await waitTheirs(bob, first);
  step("bob: the message is shown, as text");
  await waitTicks(alice, first, "read");
  const states = await alice.evaluate(() => window.__states);
  if (!states.includes("delivered")) throw new Error(`alice's ticks went ${states.join(" > ")}, never delivered`);
  step(`alice: ticks ${states.join(" > ")}`);
  await until(alice, () => document.getElementById("presence").textContent === "bob is online",
    null, "bob online on alice's tab");
  step("alice: bob is online");

  await bob.fill("#compose input[name=body]", "hi alice");
  await bob.click("#compose button");
  await waitTheirs(alice, "hi alice");
  await waitTicks(bob, "hi alice", "read");
  step("alice: bob's answer shown; bob: read");

  await bob.reload();
  await until(bob, () => document.getElementById("status").textContent === "Connected as bob.",
    null, "bob connected again");
  await waitTheirs(bob, first);
  await waitTicks(bob, "hi alice", "sent");
  step("bob: reloaded, the conversation from history");

  if (image) {
    await alice.setInputFiles("#file", image);
    // Loaded: the browser fetched and decoded it from the signed CDN URL (under the policy).
    const loaded = (page, who) => until(page, (who) => {
      const img = document.querySelector(`#log li.${who} img.media`);
      return Boolean(img && img.complete && img.naturalWidth > 0 && new URL(img.src).searchParams.has("token"));
    }, who, `an image shown (${who})`);
    await loaded(bob, "theirs");
    step("bob: alice's image shown, loaded from the CDN");
    await loaded(alice, "mine");
    await until(alice, () => {
      const li = [...document.querySelectorAll("#log li.mine")].find((li) => li.querySelector("img.media"));
      return Boolean(li && li.querySelector(".ticks").dataset.state === "read");
    }, null, "the image read by bob");
    step("alice: her image shown and read");
  }

  if (result.problems.length === 0) result.ok = true;
} catch (e) {
  result.problems.push(String(e && e.message || e).split("\n")[0]);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
