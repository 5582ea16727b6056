// Opens the control plane's dashboard in headless Chromium, enters the operator token, waits
// until the node table shows NODE as up and both last-hour plots (bandwidth and hit ratio)
// draw a line of at least two points for the node's site, with axes (y ticks in Mb/s and %,
// x ticks as clock times over the hour), then saves a screenshot to
// SCREENSHOT. Prints the node table as JSON; exits 1 on timeout or a page error.
//   node dashboard.mjs BASE_URL TOKEN NODE SCREENSHOT
import { chromium } from "playwright-core";

const [base, token, node, screenshot] = process.argv.slice(2);
if (!base || !token || !node || !screenshot) {
  console.error("usage: node dashboard.mjs BASE_URL TOKEN NODE SCREENSHOT");
  process.exit(2);
}
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
let ok = false;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.click("#go");
  const deadline = Date.now() + 40000;
  let last = null;
  while (Date.now() < deadline) {
    const rows = await page.$$eval("#nodes tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    const row = rows.find((cells) => cells[0] === node && cells[3].startsWith("up"));
    // The chart is the polyline's <svg> (`closest`: CI once read a null `ownerSVGElement`).
    const lines = await page.$$eval("svg polyline", (ps) =>
      ps.map((p) => ({ chart: p.closest("svg")?.id, site: p.dataset.site, points: p.getAttribute("points").trim().split(/\s+/).filter(Boolean).length })));
    const labels = Object.fromEntries(await page.$$eval("svg", (svgs) =>
      svgs.map((s) => [s.id, [...s.querySelectorAll("text")].map((t) => t.textContent)])));
    last = { rows, lines, labels };
    const site = row && row[1];
    const drawn = (chart) => lines.some((l) => l.chart === chart && l.site === site && l.points >= 2);
    const axes = (chart, unit) => (labels[chart] || []).filter((t) => t.endsWith(unit)).length === 5 &&
      (labels[chart] || []).filter((t) => /^\d{1,2}:\d{2}/.test(t)).length === 5;
    if (row && drawn("bw") && drawn("hit") && axes("bw", "Mb/s") && axes("hit", "%")) {
      await page.screenshot({ path: screenshot, fullPage: true });
      console.log(JSON.stringify(last));
      ok = errors.length === 0;
      break;
    }
    await page.waitForTimeout(300);
  }
  if (!ok) console.error("dashboard never showed the node and its plots with their axes: " + JSON.stringify(last));
  if (errors.length) console.error(errors.join("\n"));
} finally {
  await browser.close();
}
process.exit(ok ? 0 : 1);
