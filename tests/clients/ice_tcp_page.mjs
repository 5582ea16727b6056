// Headless Debian Chromium (playwright-core) against the SFU, for the ICE-TCP test
// (tests/sfu_ice_tcp.rs), which runs it in a network namespace where UDP to the SFU is
// dropped. Three tabs, each with Chromium's fake camera and microphone, in one room:
//   whip:    publishes its camera and microphone with WHIP (POST /whip/<room>);
//   whep:    watches with WHEP (POST /whep/<room>): it gets the WHIP tab's tracks;
//   meeting: the SFU's meeting page (/rooms/<room>): it gets the WHIP tab's tracks too.
//
//   node ice_tcp_page.mjs --expect connect|fail --url http://SFU --room ROOM --token TOKEN
//
// connect: the whep and meeting tabs decode video (framesDecoded grows) and hear audio
// (totalAudioEnergy > 0); the whip tab sends. The report gives each tab's selected candidate
// pair from getStats() (local and remote: protocol, type, tcpType, address, port).
// fail: every tab's RTCPeerConnection reaches connectionState (or iceConnectionState)
// "failed" without decoding a frame.
//
// Prints one JSON line {"ok", "expect", "tabs": {name: {...}}, "problems": [...]}; exits 0
// only when ok.
import { chromium } from "playwright-core";

const opts = {};
const argv = process.argv.slice(2);
for (let i = 0; i + 1 < argv.length; i += 2) opts[argv[i].replace(/^--/, "")] = argv[i + 1];
const { expect = "connect", url, room, token } = opts;
if (!url || !room || !token || !["connect", "fail"].includes(expect)) {
  console.error("usage: node ice_tcp_page.mjs --expect connect|fail --url URL --room ROOM --token TOKEN");
  process.exit(2);
}
const WAIT_MS = Number(process.env.ICE_TCP_WAIT_MS || 60000);
const result = { ok: false, expect, tabs: {}, problems: [] };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required"],
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// What getStats() says of the tab's connection (window.pc, or the meeting page's): inbound
// media, bytes sent, the selected pair's candidates, and the states.
const report = (page) => page.evaluate(async () => {
  const out = { video: [], audio: [], bytesSent: 0, pair: null, states: {} };
  const pc = window.pc || (window.meeting && window.meeting.pc);
  if (!pc) return out;
  out.states = { ice: pc.iceConnectionState, connection: pc.connectionState };
  const stats = await pc.getStats();
  const byId = new Map([...stats.values()].map((r) => [r.id, r]));
  const cand = (id) => {
    const c = byId.get(id);
    return c && { protocol: c.protocol, type: c.candidateType, tcpType: c.tcpType || null,
      address: c.address || c.ip, port: c.port };
  };
  for (const r of stats.values()) {
    if (r.type === "inbound-rtp" && r.kind === "video") out.video.push({ mid: r.mid, framesDecoded: r.framesDecoded || 0 });
    if (r.type === "inbound-rtp" && r.kind === "audio") out.audio.push({ mid: r.mid, totalAudioEnergy: r.totalAudioEnergy || 0 });
    if (r.type === "outbound-rtp") out.bytesSent += r.bytesSent || 0;
    if (r.type === "transport" && r.selectedCandidatePairId) {
      const p = byId.get(r.selectedCandidatePairId);
      if (p) out.pair = { state: p.state, nominated: p.nominated, local: cand(p.localCandidateId), remote: cand(p.remoteCandidateId) };
    }
  }
  return out;
});

// A WHIP publisher or a WHEP watcher in a page of the SFU's own origin (same-origin fetch).
async function whipWhep(kind) {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => result.problems.push(`${kind}: page error: ${e.message}`));
  // Any page of the SFU's origin (a same-origin fetch needs no CORS): its readiness.
  await page.goto(`${url}/healthz`);
  const status = await page.evaluate(async ({ kind, room, token }) => {
    const pc = new RTCPeerConnection({ iceServers: [] });
    window.pc = pc;
    if (kind === "whip") {
      const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
      for (const t of media.getTracks()) pc.addTransceiver(t, { direction: "sendonly" });
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addEventListener("track", (e) => {
        // Played, so that audio energy is measured.
        const el = document.createElement(e.track.kind);
        el.srcObject = new MediaStream([e.track]);
        el.autoplay = true;
        document.body.append(el);
      });
    }
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch(`/${kind}/${room}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", Authorization: `Bearer ${token}` },
      body: pc.localDescription.sdp,
    });
    if (r.status !== 201) return r.status;
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    return r.status;
  }, { kind, room, token });
  if (status !== 201) throw new Error(`${kind}: POST answered ${status}`);
  return page;
}

async function meeting() {
  const page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => result.problems.push(`meeting: page error: ${e.message}`));
  await page.goto(`${url}/rooms/${room}?name=m&token=${token}`);
  const deadline = Date.now() + WAIT_MS;
  while (!(await page.evaluate(() => Boolean(window.meeting && window.meeting.pc)))) {
    if (Date.now() > deadline) throw new Error("meeting: never joined");
    await sleep(200);
  }
  return page;
}

async function connects(name, page, receives) {
  const deadline = Date.now() + WAIT_MS;
  const done = (r) => r.pair && r.pair.state === "succeeded" && (receives
    ? r.video.some((x) => x.framesDecoded > 0) && r.audio.some((x) => x.totalAudioEnergy > 0)
    : r.bytesSent > 0);
  let r;
  for (;;) {
    r = await report(page);
    if (done(r)) break;
    if (Date.now() > deadline) throw new Error(`${name}: not connected and flowing: ${JSON.stringify(r)}`);
    await sleep(250);
  }
  if (receives) {
    await sleep(2000);
    const later = await report(page);
    const most = (x) => Math.max(0, ...x.video.map((v) => v.framesDecoded));
    if (most(later) < most(r) + 10) throw new Error(`${name}: framesDecoded did not grow: ${JSON.stringify({ r, later })}`);
    r = later;
  }
  result.tabs[name] = r;
}

async function fails(name, page) {
  const deadline = Date.now() + WAIT_MS;
  let r;
  for (;;) {
    r = await report(page);
    if (r.video.some((x) => x.framesDecoded > 0)) throw new Error(`${name}: decoded video: ${JSON.stringify(r)}`);
    if (r.states.ice === "failed" || r.states.connection === "failed") break;
    if (Date.now() > deadline) throw new Error(`${name}: the connection neither failed nor worked: ${JSON.stringify(r)}`);
    await sleep(250);
  }
  result.tabs[name] = r;
}

try {
  const tabs = [["whip", await whipWhep("whip"), false]];
  tabs.push(["whep", await whipWhep("whep"), true]);
  tabs.push(["meeting", await meeting(), true]);
  for (const [name, page, receives] of tabs) {
    await (expect === "connect" ? connects(name, page, receives) : fails(name, page));
  }
  result.ok = result.problems.length === 0;
} catch (e) {
  result.problems.push(String(e && e.stack || e));
}
await browser.close();
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
