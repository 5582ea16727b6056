// One participant of the SFU's meeting page in headless Debian Chromium (playwright-core),
// reporting its video stats once a second until its standard input closes.
//
//   node simulcast_page.mjs publish URL     camera on: the page sends three simulcast layers
//   node simulcast_page.mjs subscribe URL   (URL with camera=off): receives the others
//
// Prints one JSON line per second: {"t", "joined", "outbound": [{rid, frameHeight,
// framesEncoded, bytesSent, headerBytesSent, targetBitrate, qualityLimitationReason}], "inbound": [{frameHeight, framesDecoded, bytesReceived, codec}],
// "activeLayers", "problems"}. Exits when stdin closes, or after 10 minutes. Reads commands
// from stdin (see below).
import { chromium } from "playwright-core";

const [mode, url] = process.argv.slice(2);
if (!["publish", "subscribe"].includes(mode) || !url) {
  console.error("usage: node simulcast_page.mjs publish|subscribe URL");
  process.exit(2);
}
const problems = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    // The SFU is on a veth address, not loopback: getUserMedia needs a secure context.
    `--unsafely-treat-insecure-origin-as-secure=${new URL(url).origin}`],
});
let done = false;
const finish = async (code) => {
  if (done) return;
  done = true;
  try { await browser.close(); } catch (_) { /* already gone */ }
  process.exit(code);
};
process.stdin.on("end", () => finish(0));
process.stdin.on("close", () => finish(0));
// Commands, one a line: "max_height N" asks for at most N lines of every other
// participant's video (the protocol's `subscribe`).
let pending = "";
let page = null;
process.stdin.on("data", (chunk) => {
  pending += chunk.toString();
  let nl;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, nl).trim();
    pending = pending.slice(nl + 1);
    const m = /^max_height (\d+)$/.exec(line);
    if (m && page) {
      page.evaluate((h) => {
        const me = window.meeting;
        for (const [id, t] of Object.entries(me.tracks)) {
          if (t.participant !== me.me && t.kind === "video") me.ws.send(JSON.stringify({ type: "subscribe", track: id, max_height: h }));
        }
      }, Number(m[1])).catch((e) => problems.push(`max_height: ${e}`));
    }
  }
});
setTimeout(() => finish(0), 600000);

page = await (await browser.newContext()).newPage();
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  if (/Content.Security.Policy|Refused to/i.test(m.text())) problems.push(m.text());
});
await page.goto(url);
const started = Date.now();
for (;;) {
  const s = await page.evaluate(async () => {
    const m = window.meeting;
    const out = { joined: Boolean(m && m.me), outbound: [], inbound: [], activeLayers: m ? m.activeLayers || null : null,
      pageErrors: m ? m.events.filter((e) => e.type === "page_error" || e.type === "error") : [] };
    if (!m || !m.pc) return out;
    if (m.videoSender) out.encodings = m.videoSender.getParameters().encodings.map((e) => ({ rid: e.rid, active: e.active }));
    const stats = await m.pc.getStats();
    for (const r of stats.values()) {
      if (r.kind !== "video") continue;
      if (r.type === "outbound-rtp") out.outbound.push({ rid: r.rid || null, frameHeight: r.frameHeight || 0, framesEncoded: r.framesEncoded || 0, bytesSent: r.bytesSent || 0, headerBytesSent: r.headerBytesSent || 0, targetBitrate: r.targetBitrate || 0, qualityLimitationReason: r.qualityLimitationReason || null });
      if (r.type === "inbound-rtp") out.inbound.push({ frameHeight: r.frameHeight || 0, framesDecoded: r.framesDecoded || 0, bytesReceived: r.bytesReceived || 0, codec: (stats.get(r.codecId) || {}).mimeType || null });
    }
    return out;
  }).catch((e) => ({ error: String(e) }));
  console.log(JSON.stringify({ t: Date.now() - started, ...s, problems }));
  await new Promise((r) => setTimeout(r, 1000));
}
