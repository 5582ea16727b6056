// The SFU's meeting page in headless Debian Chromium (playwright-core): three tabs, each
// with Chromium's fake camera and microphone, join one room at the URLs given.
//
//   node meeting_page.mjs [--fit] URL1 URL2 URL3
//
// Each tab must see and hear the other two: in its RTCPeerConnection's stats, two inbound
// video streams whose framesDecoded grows and two inbound audio streams with
// totalAudioEnergy > 0; with `--fit`, its videos come at its tiles' size (the page asks for at
// most 360 lines for its 240-pixel tiles); and it is told the active speaker. Then the third tab leaves (its
// Leave button): the other two get `participant left` for it and `track removed` for both
// its tracks. Any page error or Content-Security-Policy violation fails the run.
//
// Prints one JSON line {"ok", "steps": [...], "problems": [...], "stats": {...}}; exits 0
// only when ok.
import { chromium } from "playwright-core";

const args = process.argv.slice(2);
// `--fit`: also check that the videos come at the tiles' size (the page's `subscribe`),
// which a cascade link (one layer relayed) cannot honour.
const fit = args[0] === "--fit";
const urls = fit ? args.slice(1) : args;
if (urls.length !== 3) {
  console.error("usage: node meeting_page.mjs [--fit] URL1 URL2 URL3");
  process.exit(2);
}
const WAIT_MS = 40000;
const result = { ok: false, steps: [], problems: [], stats: {} };
const step = (text) => result.steps.push(text);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"],
});

// Polls `fn(arg)` in the page until it is true (not waitForFunction: the page's policy
// refuses the string evaluation it uses).
async function until(page, fn, arg, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await page.evaluate(fn, arg))) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// The inbound streams of a page's peer connection.
const inbound = (page) => page.evaluate(async () => {
  const out = { video: [], audio: [] };
  if (!window.meeting || !window.meeting.pc) return out;
  const stats = await window.meeting.pc.getStats();
  for (const r of stats.values()) {
    if (r.type !== "inbound-rtp") continue;
    // Besides framesDecoded, what tells a stalled stream's story when the run fails.
    if (r.kind === "video") out.video.push({ mid: r.mid, framesDecoded: r.framesDecoded || 0,
      framesReceived: r.framesReceived, keyFramesDecoded: r.keyFramesDecoded,
      framesDropped: r.framesDropped, packetsReceived: r.packetsReceived,
      packetsLost: r.packetsLost, nackCount: r.nackCount, pliCount: r.pliCount,
      firCount: r.firCount, frameHeight: r.frameHeight, ssrc: r.ssrc });
    if (r.kind === "audio") out.audio.push({ mid: r.mid, totalAudioEnergy: r.totalAudioEnergy || 0, audioLevel: r.audioLevel || 0 });
  }
  return out;
});

async function tab(name, url) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => result.problems.push(`${name}: page error: ${e.message}`));
  page.on("console", (m) => {
    if (/Content.Security.Policy|Refused to/i.test(m.text())) result.problems.push(`${name}: ${m.text()}`);
  });
  await page.goto(url);
  await until(page, () => Boolean(window.meeting && window.meeting.me), null, `${name} joined`);
  if (new URL(page.url()).searchParams.has("token")) throw new Error(`${name}: the token stays in the address bar`);
  step(`${name}: joined as ${await page.evaluate(() => window.meeting.me)}`);
  return page;
}

async function seesAndHearsTwo(name, page) {
  const deadline = Date.now() + WAIT_MS;
  let s;
  for (;;) {
    s = await inbound(page);
    const v = s.video.filter((x) => x.framesDecoded > 0).length;
    const a = s.audio.filter((x) => x.totalAudioEnergy > 0).length;
    if (v >= 2 && a >= 2) break;
    if (Date.now() > deadline) throw new Error(`${name}: not two decoded videos and two audible audios: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  // framesDecoded keeps growing on both videos.
  await new Promise((r) => setTimeout(r, 2000));
  const later = await inbound(page);
  const grown = later.video.filter((x) => {
    const before = s.video.find((y) => y.mid === x.mid);
    return before && before.framesDecoded > 0 && x.framesDecoded >= before.framesDecoded + 10;
  }).length;
  result.stats[name] = later;
  if (grown < 2) throw new Error(`${name}: framesDecoded did not grow on two videos: ${JSON.stringify({ s, later })}`);
  step(`${name}: two videos decoding, two audios audible`);
}

try {
  const pages = [];
  for (const [i, url] of urls.entries()) pages.push([`tab${i + 1}`, await tab(`tab${i + 1}`, url)]);
  for (const [name, page] of pages) await seesAndHearsTwo(name, page);
  // Each tab asks for the others at its tiles' size (240 CSS pixels high: 360 lines), so the
  // SFU sends the half layer, not the full 720 lines the loopback link would carry.
  for (const [name, page] of fit ? pages : []) {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const s = await inbound(page);
      const heights = s.video.map((x) => x.frameHeight || 0);
      if (heights.length === 2 && heights.every((h) => h > 0 && h <= 360)) {
        step(`${name}: videos at the tiles' size (${heights.join(", ")} lines)`);
        break;
      }
      if (Date.now() > deadline) throw new Error(`${name}: videos not at the tiles' size: ${JSON.stringify(s.video)}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  // Every tab has been told who speaks (the fake microphones all beep: someone does), by an
  // id it knows (ids differ per SFU when the tabs are on two cascaded SFUs).
  for (const [name, page] of pages) {
    await until(page, () => window.meeting.events.some((e) => e.type === "speaker"
      && (e.participant === window.meeting.me || e.participant in window.meeting.participants)),
      null, `${name}: a speaker event`);
    step(`${name}: told the active speaker`);
  }
  // The third tab leaves; the others know it by its name (`name=` in its URL).
  const third = pages[2][1];
  const u = new URL(urls[2]);
  const leavingName = u.searchParams.get("name") || new URLSearchParams(u.hash.slice(1)).get("name");
  const idIn = (page) => page.evaluate((n) => Object.keys(window.meeting.participants)
    .find((p) => window.meeting.participants[p] === n), leavingName);
  const views = [];
  for (const [name, page] of pages.slice(0, 2)) {
    const p = await idIn(page);
    const tracks = await page.evaluate((p) => Object.values(window.meeting.tracks)
      .filter((t) => t.participant === p).map((t) => t.track), p);
    if (!p || tracks.length !== 2) throw new Error(`${name} knows ${tracks.length} tracks of ${leavingName} (${p}), not 2`);
    views.push([name, page, p, tracks]);
  }
  await third.click("#leave");
  for (const [name, page, p, tracks] of views) {
    await until(page, ({ p, tracks }) => {
      const ev = window.meeting.events;
      const left = ev.some((e) => e.type === "participant" && e.event === "left" && e.participant === p);
      const removed = tracks.every((t) => ev.some((e) => e.type === "track" && e.event === "removed" && e.track === t));
      return left && removed && !document.getElementById("tile-" + p);
    }, { p, tracks }, `${name}: ${leavingName} left`);
    step(`${name}: saw ${leavingName} (${p}) leave and its tracks removed`);
  }
  // Seconds later (time for the SFU to have moved up to 720 lines, were they asked for), the
  // first tab still receives the second at its tile's size.
  if (fit) {
    const last = await inbound(pages[0][1]);
    const sizes = last.video.map((x) => x.frameHeight || 0).filter((h) => h > 0);
    if (sizes.length === 0 || sizes.some((h) => h > 360)) throw new Error(`tab1: videos no longer at the tiles' size: ${JSON.stringify(last.video)}`);
    step(`tab1: still at the tiles' size (${sizes.join(", ")} lines)`);
  }
  result.ok = result.problems.length === 0;
} catch (e) {
  result.problems.push(String(e && e.stack || e));
}
await browser.close();
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
