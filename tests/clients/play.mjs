// Plays a stream in headless Debian Chromium with hls.js or dash.js (playwright-core), for
// the black-box tests.
//
//   node play.mjs hls|dash MANIFEST_URL SECONDS
//
// Prints one JSON line: {"player", "currentTime", "errors": [...], "stalls", "ok"} and exits
// 0 when playback reached SECONDS of media time with no player error, 1 otherwise.
import { chromium } from "playwright-core";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const [kind, url, secondsText] = process.argv.slice(2);
const seconds = Number(secondsText || "5");
if (!["hls", "dash"].includes(kind) || !url) {
  console.error("usage: node play.mjs hls|dash MANIFEST_URL SECONDS");
  process.exit(2);
}
const script =
  kind === "hls"
    ? require.resolve("hls.js/dist/hls.min.js")
    : require.resolve("dashjs/dist/dash.all.min.js");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--autoplay-policy=no-user-gesture-required", "--no-sandbox", "--ignore-certificate-errors"],
});
let result = { player: kind, currentTime: 0, errors: [], stalls: 0, ok: false };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => result.errors.push(`page: ${e.message}`));
  await page.setContent('<video id="v" muted playsinline></video>');
  await page.addScriptTag({ path: script });
  await page.evaluate(
    ({ kind, url }) => {
      window.__errors = [];
      window.__stalls = 0;
      const video = document.getElementById("v");
      video.addEventListener("waiting", () => window.__stalls++);
      video.addEventListener("error", () => window.__errors.push(`video: ${video.error && video.error.message}`));
      if (kind === "hls") {
        const hls = new Hls();
        hls.on(Hls.Events.ERROR, (_, d) => {
          if (d.fatal) window.__errors.push(`hls.js fatal: ${d.type} ${d.details}`);
        });
        hls.loadSource(url);
        hls.attachMedia(video);
      } else {
        const player = dashjs.MediaPlayer().create();
        player.on(dashjs.MediaPlayer.events.ERROR, (e) =>
          window.__errors.push(`dash.js: ${JSON.stringify(e.error || e).slice(0, 300)}`),
        );
        player.initialize(video, url, true);
      }
      video.play().catch(() => {});
    },
    { kind, url },
  );
  const deadline = Date.now() + (seconds + 45) * 1000;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => ({
      t: document.getElementById("v").currentTime,
      errors: window.__errors,
      stalls: window.__stalls,
    }));
    result.currentTime = s.t;
    result.stalls = s.stalls;
    result.errors.push(...s.errors);
    if (s.errors.length > 0 || s.t >= seconds) break;
    await page.waitForTimeout(250);
  }
  result.ok = result.errors.length === 0 && result.currentTime >= seconds;
} catch (e) {
  result.errors.push(`driver: ${e.message}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
