// Opens a station's status page (vodmesh-node --metrics) in headless Chromium and waits until
// every expected station's director peer id is on it; saves a screenshot.
// Usage: node status.js URL SCREENSHOT.png USER_DATA_DIR PEER_ID...  (Chromium: $CHROMIUM or
// /usr/bin/chromium). Prints one JSON line last: {"found": [...], "missing": [...], "error": ...};
// exits 1 unless every peer id was found.
'use strict';
const { chromium } = require('playwright-core');

const [url, screenshot, userDataDir, ...peers] = process.argv.slice(2);
if (!url || !screenshot || !userDataDir || peers.length === 0) {
  console.error('usage: node status.js URL SCREENSHOT USER_DATA_DIR PEER_ID...');
  process.exit(2);
}

(async () => {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  let result = { found: [], missing: peers, engines: 0, error: null };
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => console.error('page:', m.text()));
  page.on('pageerror', (e) => console.error('page error:', e.message));
  const onPage = () => page.evaluate(() => ({
    stations: [...document.querySelectorAll('.station')].map((s) => s.dataset.peer),
    engines: document.querySelectorAll('tr.engine').length,
    sparks: document.querySelectorAll('.station .sparks svg.spark').length,
    state: document.getElementById('state').textContent,
  }));
  try {
    await page.goto(url, { waitUntil: 'load', timeout: 30000 });
    // The page fills itself from /status.json, and refreshes every 2 s: wait for the swarm,
    // each station with its four sparklines (sampled every 10 s by the page's server).
    await page.waitForFunction(
      (want) => {
        const boxes = [...document.querySelectorAll('.station')];
        const drawn = boxes
          .filter((b) => b.querySelectorAll('.sparks svg.spark').length === 4)
          .map((b) => b.dataset.peer);
        return want.every((p) => drawn.includes(p));
      },
      peers,
      { timeout: 30000, polling: 250 },
    );
  } catch (e) {
    result.error = String(e);
  }
  try {
    const seen = await onPage();
    result.found = peers.filter((p) => seen.stations.includes(p));
    result.missing = peers.filter((p) => !seen.stations.includes(p));
    result.engines = seen.engines;
    result.sparks = seen.sparks;
    result.state = seen.state;
  } catch (e) {
    result.error = result.error || String(e);
  }
  try {
    await page.screenshot({ path: screenshot, fullPage: true });
  } catch (e) {
    console.error('screenshot failed:', String(e));
  }
  await context.close();
  console.log(JSON.stringify(result));
  process.exit(result.missing.length === 0 && !result.error ? 0 : 1);
})().catch((e) => {
  console.log(JSON.stringify({ found: [], missing: peers, error: String(e) }));
  process.exit(1);
});
