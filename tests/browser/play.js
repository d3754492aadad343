// Opens a vodmesh-console serve program page in headless Chromium, plays the video (muted)
// and waits until video.currentTime passes 5 s; saves a screenshot.
// Usage: node play.js URL SCREENSHOT.png USER_DATA_DIR   (Chromium: $CHROMIUM or /usr/bin/chromium)
// Prints one JSON line last: {"currentTime": ..., "error": ..., "responses": [...]}, where
// responses lists every HTTP response the page got (url, status, and the URL that redirected
// to it, if any: redirectedFrom); exits 1 unless it played.
'use strict';
const { chromium } = require('playwright-core');

const [url, screenshot, userDataDir] = process.argv.slice(2);
if (!url || !screenshot || !userDataDir) {
  console.error('usage: node play.js URL SCREENSHOT USER_DATA_DIR');
  process.exit(2);
}

(async () => {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  let result = { currentTime: 0, error: null };
  const responses = [];
  const page = context.pages()[0] || (await context.newPage());
  page.on('response', (r) => {
    const from = r.request().redirectedFrom();
    responses.push({ url: r.url(), status: r.status(), redirectedFrom: from ? from.url() : null });
  });
  page.on('console', (m) => console.error('page:', m.text()));
  page.on('pageerror', (e) => console.error('page error:', e.message));
  try {
    await page.goto(url, { waitUntil: 'load', timeout: 30000 });
    // Not awaiting play()'s promise: it stays pending while no media arrives (a page that
    // cannot load its media must fail at the wait below, not hang here).
    await page.evaluate(() => {
      const v = document.getElementById('video');
      v.muted = true;
      v.play().catch((e) => { document.getElementById('status').textContent = 'play: ' + e; });
    });
    await page.waitForFunction(
      () => document.getElementById('video').currentTime > 5 || document.getElementById('status').textContent !== '',
      null,
      { timeout: 60000, polling: 250 },
    );
    result = await page.evaluate(() => {
      const v = document.getElementById('video');
      const s = document.getElementById('status').textContent;
      return {
        currentTime: v.currentTime,
        error: s || (v.error ? 'media error ' + v.error.code + ' ' + v.error.message : null),
        width: v.videoWidth,
        height: v.videoHeight,
        canPlayH264: v.canPlayType('video/mp4; codecs="avc1.42E01E, mp4a.40.2"'),
      };
    });
  } catch (e) {
    result.error = String(e);
    try {
      result.currentTime = await page.evaluate(() => document.getElementById('video').currentTime);
    } catch (_) { /* the page is gone */ }
  }
  try {
    await page.screenshot({ path: screenshot });
  } catch (e) {
    console.error('screenshot failed:', String(e));
  }
  await context.close();
  result.responses = responses;
  console.log(JSON.stringify(result));
  process.exit(result.currentTime > 5 && !result.error ? 0 : 1);
})().catch((e) => {
  console.log(JSON.stringify({ currentTime: 0, error: String(e) }));
  process.exit(1);
});
