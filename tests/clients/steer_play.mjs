// Plays a Content Steering manifest in headless Debian Chromium with hls.js or dash.js
// (playwright-core), for the steering failover test.
//
//   node steer_play.mjs hls|dash MANIFEST_URL SIGNAL_SECONDS TOTAL_SECONDS
//
// Small forward buffers (4 s) make the player fetch segments all along. When the video's
// currentTime first reaches SIGNAL_SECONDS it prints {"event":"played","t":T} on stdout (the
// test then kills an edge) and keeps sampling currentTime every 100 ms until TOTAL_SECONDS.
// Last line: {"player","currentTime","longestStallMs","errors","recoveredErrors","mediaHosts",
// "mediaHostsAfterSignal","steeringRequests","ok"} (recoveredErrors: dash.js segment download
// errors it recovers from by switching service location); exit 0 when TOTAL_SECONDS was reached with no fatal player error.
// A stall is the wall-clock time during which currentTime did not move.
import { chromium } from "playwright-core";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const [kind, url, signalText, totalText] = process.argv.slice(2);
const signalAt = Number(signalText || "4");
const total = Number(totalText || "12");
if (!["hls", "dash"].includes(kind) || !url) {
  console.error("usage: node steer_play.mjs hls|dash MANIFEST_URL SIGNAL_SECONDS TOTAL_SECONDS");
  process.exit(2);
}
const script =
  kind === "hls"
    ? require.resolve("hls.js/dist/hls.min.js")
    : require.resolve("dashjs/dist/dash.all.min.js");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
  ],
});
const result = {
  player: kind,
  currentTime: 0,
  longestStallMs: 0,
  errors: [],
  recoveredErrors: [],
  mediaHosts: {},
  mediaHostsAfterSignal: {},
  steeringRequests: 0,
  ok: false,
};
let signalled = false;
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => result.errors.push(`page: ${e.message}`));
  page.on("requestfinished", async (req) => {
    const u = new URL(req.url());
    if (u.pathname.includes("/v1/steering/")) result.steeringRequests++;
    if (!u.pathname.endsWith(".m4s")) return;
    const resp = await req.response();
    if (!resp || resp.status() !== 200) return;
    result.mediaHosts[u.host] = (result.mediaHosts[u.host] || 0) + 1;
    if (signalled) result.mediaHostsAfterSignal[u.host] = (result.mediaHostsAfterSignal[u.host] || 0) + 1;
  });
  await page.setContent('<video id="v" muted playsinline></video>');
  await page.addScriptTag({ path: script });
  await page.evaluate(
    ({ kind, url }) => {
      window.__errors = [];
      window.__recovered = [];
      const video = document.getElementById("v");
      video.addEventListener("error", () => window.__errors.push(`video: ${video.error && video.error.message}`));
      if (kind === "hls") {
        const hls = new Hls({ maxBufferLength: 4, maxMaxBufferLength: 4, backBufferLength: 0 });
        hls.on(Hls.Events.ERROR, (_, d) => {
          if (d.fatal) window.__errors.push(`hls.js fatal: ${d.type} ${d.details}`);
        });
        hls.loadSource(url);
        hls.attachMedia(video);
      } else {
        const player = dashjs.MediaPlayer().create();
        player.updateSettings({
          debug: { logLevel: 1 },
          streaming: { buffer: { bufferTimeAtTopQuality: 4, bufferTimeAtTopQualityLongForm: 4, stableBufferTime: 4 } },
        });
        player.on(dashjs.MediaPlayer.events.ERROR, (e) => {
          const text = `dash.js: ${JSON.stringify(e.error || e).slice(0, 300)}`;
          // 27: a segment download failed. dash.js reports it and goes on with the next
          // BaseURL (service location); whether playback really goes on is what this
          // script measures, so it is recorded, not fatal.
          if (e.error && e.error.code === 27) window.__recovered.push(text);
          else window.__errors.push(text);
        });
        player.initialize(video, url, true);
      }
      video.play().catch(() => {});
    },
    { kind, url },
  );
  const deadline = Date.now() + (total + 60) * 1000;
  let lastT = -1;
  let lastMove = Date.now();
  let started = false;
  while (Date.now() < deadline) {
    const s = await page.evaluate(() => ({
      t: document.getElementById("v").currentTime,
      errors: window.__errors.splice(0),
      recovered: window.__recovered.splice(0),
    }));
    const now = Date.now();
    result.errors.push(...s.errors);
    result.recoveredErrors.push(...s.recovered);
    if (s.t !== lastT) {
      // Stalls count only once playback has started (start-up is not a stall).
      if (started) result.longestStallMs = Math.max(result.longestStallMs, now - lastMove);
      if (lastT >= 0 && s.t > 0) started = true;
      lastT = s.t;
      lastMove = now;
    } else if (started) {
      result.longestStallMs = Math.max(result.longestStallMs, now - lastMove);
    }
    result.currentTime = s.t;
    if (!signalled && s.t >= signalAt) {
      signalled = true;
      console.log(JSON.stringify({ event: "played", t: s.t }));
    }
    if (result.errors.length > 0 || s.t >= total) break;
    await page.waitForTimeout(100);
  }
  result.ok = result.errors.length === 0 && result.currentTime >= total;
} catch (e) {
  result.errors.push(`driver: ${e.message}`);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
