// Opens the control plane's dashboard in headless Chromium, enters the operator token, waits
// until the node table shows NODE as up and both last-hour plots (bandwidth and hit ratio)
// draw a line of at least two points for the node's site, then saves a screenshot to
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
    const lines = await page.$$eval("svg polyline", (ps) =>
      ps.map((p) => ({ chart: p.ownerSVGElement.id, site: p.dataset.site, points: p.getAttribute("points").trim().split(/\s+/).filter(Boolean).length })));
    last = { rows, lines };
    const site = row && row[1];
    const drawn = (chart) => lines.some((l) => l.chart === chart && l.site === site && l.points >= 2);
    if (row && drawn("bw") && drawn("hit")) {
      await page.screenshot({ path: screenshot, fullPage: true });
      console.log(JSON.stringify(last));
      ok = errors.length === 0;
      break;
    }
    await page.waitForTimeout(300);
  }
  if (!ok) console.error("dashboard never showed the node and its plots: " + JSON.stringify(last));
  if (errors.length) console.error(errors.join("\n"));
} finally {
  await browser.close();
}
process.exit(ok ? 0 : 1);
