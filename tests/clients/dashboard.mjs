// Opens the control plane's dashboard in headless Chromium, enters the operator token and
// waits until the node table shows NODE as up. Prints the table's text; exits 1 on timeout.
//   node dashboard.mjs BASE_URL TOKEN NODE
import { chromium } from "playwright-core";

const [base, token, node] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
let ok = false;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.click("#go");
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    const rows = await page.$$eval("#nodes tr", (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    if (rows.some((cells) => cells[0] === node && cells[3].startsWith("up"))) {
      console.log(JSON.stringify(rows));
      ok = errors.length === 0;
      break;
    }
    await page.waitForTimeout(200);
  }
  if (errors.length) console.error(errors.join("\n"));
} finally {
  await browser.close();
}
process.exit(ok ? 0 : 1);
