// End-to-end tests of the web app in headless Chromium (playwright-core, Debian's chromium)
// against a running stack: BASE_URL (the edge serving web/dist), ADMIN_TOKEN, NATS_URL and
// NATS_PREFIX (for stream cleanup). Started by scripts/web-e2e.sh.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL ?? 'http://127.0.0.1:8080';
const ADMIN = process.env.ADMIN_TOKEN ?? '';
const ROOT = resolve(process.env.REPO_ROOT ?? new URL('../..', import.meta.url).pathname);
const SHOTS = join(ROOT, 'artifacts/web');
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS ?? 20000);
mkdirSync(SHOTS, { recursive: true });

const results = [];
async function scenario(name, body) {
  const started = Date.now();
  try {
    await Promise.race([
      body(),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out after ${TIMEOUT * 3} ms`)), TIMEOUT * 3)),
    ]);
    results.push({ name, ok: true });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}: ${error?.stack ?? error}`);
    await page.screenshot({ path: join(SHOTS, `failed-${name.replace(/\W+/g, '-')}.png`), fullPage: true }).catch(() => {});
  }
}
function assert(condition, message) {
  if (!condition) throw new Error(message);
}
// Reads `read()` until `done(value)` holds or TIMEOUT passes, and returns the last value read: the
// page (or the server behind it) may not have reached the state yet when a first sign of it shows.
async function settle(read, done) {
  const until = Date.now() + TIMEOUT;
  let value = await read();
  while (!done(value) && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    value = await read();
  }
  return value;
}

const userDataDir = mkdtempSync(join(tmpdir(), 'web-e2e-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  viewport: { width: 1000, height: 900 },
});
context.setDefaultTimeout(TIMEOUT);
const page = await context.newPage();
page.on('pageerror', (error) => console.log(`page error: ${error.message}`));

async function newConversation() {
  await page.goto(`${BASE}/`);
  await page.getByRole('button', { name: /Start a conversation|New conversation/ }).click();
  await page.waitForFunction(() => window.__chat?.thread() && document.querySelector('[data-testid="offline-banner"]') === null);
  // The transcript of a fresh thread is empty.
  await page.waitForFunction(() => window.__chat.state().items.length === 0);
}

async function say(text) {
  const before = await page.evaluate(() => window.__chat.state().items.filter((i) => i.kind === 'usage').length);
  await page.getByLabel('Message').fill(text);
  await page.getByLabel('Message').press('Enter');
  return before;
}

async function waitTurnDone(before) {
  await page.waitForFunction((n) => window.__chat.state().items.filter((i) => i.kind === 'usage').length > n, before);
}

async function historyReply() {
  return page.evaluate(async () => {
    const { threadId, token } = window.__chat.thread();
    const response = await fetch(`/api/threads/${threadId}/messages`, { headers: { Authorization: `Bearer ${token}` } });
    const history = await response.json();
    return history.messages.filter((m) => m.role === 'assistant').map((m) => m.content);
  });
}

function pageText() {
  return page.evaluate(() => window.__chat.state().items.filter((i) => i.kind === 'text').map((i) => i.content).join('\n'));
}

await scenario('chat with a tool call', async () => {
  await newConversation();
  const before = await say('Where is my order 1002?');
  await page.locator('[data-testid="tool-card"]', { hasText: 'get_order_status' }).filter({ hasText: 'ok' }).waitFor();
  await waitTurnDone(before);
  const text = await pageText();
  assert(text.includes('Order 1002'), `reply mentions Order 1002: ${text}`);
  await page.locator('.msg.assistant', { hasText: 'Order 1002' }).waitFor();
  await page.screenshot({ path: join(SHOTS, 'chat-tool.png'), fullPage: true });
});

await scenario('approval approved', async () => {
  await newConversation();
  await say('Cancel order 1003');
  const card = page.locator('[data-testid="approval-card"]');
  await card.waitFor();
  assert((await card.textContent()).includes('cancel_order'), 'card names the action');
  assert(/\d+:\d\d left/.test(await card.textContent()), 'card shows a countdown');
  await page.screenshot({ path: join(SHOTS, 'chat-approval.png'), fullPage: true });
  await card.getByRole('button', { name: 'Approve' }).click();
  await page.locator('.msg.assistant', { hasText: 'Order 1003 is now cancelled.' }).waitFor();
  await page.waitForFunction(() => !window.__chat.state().busy);
});

await scenario('reconnect mid-reply loses and doubles nothing', async () => {
  await newConversation();
  const before = await say('hello there');
  // Some tokens have arrived, the turn is not over.
  await page.waitForFunction(() => {
    const s = window.__chat.state();
    return s.items.some((i) => i.kind === 'text' && i.content.split(' ').length > 5) && !s.items.some((i) => i.kind === 'usage');
  });
  const seqBefore = await page.evaluate(() => window.__chat.state().lastSeq);
  assert((await page.evaluate(() => window.__chat.connections())) === 1, 'one socket before the drop');
  await page.evaluate(() => window.__chat.dropSocket());
  await page.locator('[data-testid="offline-banner"]').waitFor({ timeout: 5000 }).catch(() => {});
  await waitTurnDone(before);
  assert((await page.evaluate(() => window.__chat.connections())) >= 2, 'the socket was reopened');
  const text = await pageText();
  const replies = await settle(historyReply, (r) => r.length === 1 && r[0] === text);
  assert(replies.length === 1, `one reply in history: ${JSON.stringify(replies)}`);
  assert(text === replies[0], `page text equals the history reply:\n page:    ${JSON.stringify(text)}\n history: ${JSON.stringify(replies[0])}`);
  const seqAfter = await page.evaluate(() => window.__chat.state().lastSeq);
  assert(seqAfter > seqBefore, 'frames arrived after the drop');
  // A refresh restores the conversation from the history API.
  await page.reload();
  await page.locator('.msg.assistant', { hasText: replies[0].slice(0, 40) }).waitFor();
  await page.locator('.msg.user', { hasText: 'hello there' }).waitFor();
  await page.screenshot({ path: join(SHOTS, 'chat-restored.png'), fullPage: true });
});

async function adminLogin(path) {
  await page.goto(`${BASE}${path}`);
  const field = page.getByLabel('Admin token');
  if (await field.isVisible().catch(() => false)) {
    await field.fill(ADMIN);
    await field.press('Enter');
  }
}

await scenario('dashboard shows the conversations', async () => {
  await adminLogin('/dashboard');
  await page.locator('[data-testid="metrics"]').waitFor();
  const conversations = Number(await page.locator('.metric', { hasText: /^\d+Conversations$/ }).locator('.metric-value').textContent());
  assert(conversations >= 3, `conversations > 0: ${conversations}`);
  const tokens = Number(await page.locator('.metric', { hasText: 'Tokens' }).locator('.metric-value').textContent());
  assert(tokens > 0, `tokens > 0: ${tokens}`);
  await page.locator('[data-testid="agents"] tbody tr').first().waitFor();
  await page.locator('.chart canvas').waitFor();
  await page.screenshot({ path: join(SHOTS, 'dashboard.png'), fullPage: true });
});

await scenario('replay steps through a timeline', async () => {
  await adminLogin('/replay');
  await page.getByLabel('Search').fill('cancel');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.locator('[data-testid="conversations"] tbody tr', { hasText: 'Cancel order 1003' }).waitFor();
  // The unfiltered list holds that row too: wait for the filtered list itself.
  const rows = await settle(() => page.locator('[data-testid="conversations"] tbody tr').count(), (n) => n === 1);
  assert(rows === 1, `one conversation matches "cancel": ${rows}`);
  await page.getByRole('button', { name: 'Cancel order 1003' }).click();
  await page.locator('[data-testid="timeline"] li').first().waitFor();
  await page.getByRole('button', { name: 'Next ▶' }).click();
  await page.getByRole('button', { name: 'Next ▶' }).click();
  await page.locator('[data-testid="timeline"] li[aria-current="step"]').waitFor();
  const index = await page.locator('[data-testid="timeline"] li').evaluateAll((items) => items.findIndex((li) => li.getAttribute('aria-current') === 'step'));
  assert(index === 2, `third event is current: ${index}`);
  const all = await page.locator('[data-testid="timeline"]').textContent();
  assert(all.includes('cancel_order') && all.includes('Order 1003 is now cancelled.'), `timeline has the approval and reply: ${all}`);
  await page.screenshot({ path: join(SHOTS, 'replay.png'), fullPage: true });
});

await scenario('a pending approval survives a refresh and can be rejected', async () => {
  await newConversation();
  await say('Refund order 1005');
  await page.locator('[data-testid="approval-card"]').waitFor();
  await page.reload();
  const card = page.locator('[data-testid="approval-card"]');
  await card.waitFor();
  assert((await card.textContent()).includes('request_refund'), 'restored card names the action');
  await page.waitForFunction(() => window.__chat.connections() >= 1);
  await card.getByRole('button', { name: 'Reject' }).click();
  await page.waitForFunction(() => window.__chat.state().items.some((i) => i.kind === 'usage'));
  const text = await pageText();
  const replies = await settle(historyReply, (r) => r.length === 1 && r[0] === text);
  assert(replies.length === 1 && text === replies[0], `page text equals the history reply: ${JSON.stringify({ text, replies })}`);
  assert(text.includes('left it as it is'), `declined reply: ${text}`);
  assert((await card.textContent()).includes('rejected'), 'card shows rejected');
});

await scenario('a tool reclassified in Review stays so', async () => {
  await adminLogin('/review');
  // A refused document shows the server's message.
  await page.getByLabel('Or paste it').fill('openapi: 2.0\nnot: valid');
  await page.getByRole('button', { name: 'Import' }).click();
  await page.getByRole('alert').filter({ hasText: 'Import refused' }).waitFor();
  const spec = readFileSync(join(ROOT, 'examples/demo-shop-openapi.yaml'), 'utf8');
  await page.getByLabel('Or paste it').fill(spec);
  await page.getByRole('button', { name: 'Import' }).click();
  await page.getByRole('status').filter({ hasText: 'Imported 5 tools' }).waitFor();
  const access = page.getByLabel('Access of getShipment');
  await access.waitFor();
  assert((await access.inputValue()) === 'read', 'getShipment starts read');
  const patched = page.waitForResponse((r) => r.url().includes('/api/admin/tools/') && r.request().method() === 'PATCH');
  await access.selectOption('write');
  assert((await patched).ok(), 'PATCH succeeded');
  await page.reload();
  await page.getByLabel('Access of getShipment').waitFor();
  assert((await page.getByLabel('Access of getShipment').inputValue()) === 'write', 'write persisted after reload');
  const reviewed = await page.locator('tr[data-tool="getShipment"] td').last().textContent();
  assert(reviewed === 'yes', `reviewed: ${reviewed}`);
  await page.screenshot({ path: join(SHOTS, 'review.png'), fullPage: true });
});

await scenario('stop a streaming reply, then delete the conversation', async () => {
  page.once('dialog', (dialog) => dialog.accept());
  await newConversation();
  await say('Tell me about your shop and its history');
  const stop = page.getByTestId('stop');
  await stop.waitFor();
  await page.waitForFunction(() => window.__chat.state().items.some((i) => i.kind === 'text'));
  await stop.click();
  await page.getByTestId('stopped').waitFor();
  await page.waitForFunction(() => !window.__chat.state().busy);
  assert(!(await stop.isVisible().catch(() => false)), 'Stop is gone once the turn ended');
  const text = await pageText();
  const replies = await settle(historyReply, (r) => r.length === 1 && r[0] === text);
  assert(replies.length === 1 && replies[0] === text, `the stored partial reply is what the page shows: ${JSON.stringify({ text, replies })}`);
  await page.screenshot({ path: join(SHOTS, 'chat-stopped.png'), fullPage: true });
  const { threadId, token } = await page.evaluate(() => window.__chat.thread());
  await page.getByTestId('delete-conversation').click();
  await page.getByTestId('chat-notice').filter({ hasText: 'deleted' }).waitFor();
  await page.getByRole('button', { name: 'Start a conversation' }).waitFor();
  const status = await page.evaluate(
    async ([id, bearer]) => (await fetch(`/api/threads/${id}/messages`, { headers: { Authorization: `Bearer ${bearer}` } })).status,
    [threadId, token],
  );
  assert(status === 404, `the deleted conversation's history answers 404: ${status}`);
});

await scenario('an operator deletes a conversation from the Replay console', async () => {
  await newConversation();
  const before = await say('Where is my order 1007? erase-me');
  await waitTurnDone(before);
  const { threadId } = await page.evaluate(() => window.__chat.thread());
  await adminLogin('/replay');
  await page.getByLabel('Search').fill('erase-me');
  await page.getByRole('button', { name: 'Filter' }).click();
  const row = page.locator('[data-testid="conversations"] tbody tr', { hasText: 'erase-me' });
  await row.waitFor();
  await row.getByRole('button').click();
  await page.locator('[data-testid="timeline"] li').first().waitFor();
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByTestId('delete-conversation').click();
  await page.getByTestId('deleted-notice').waitFor();
  const left = await settle(() => row.count(), (n) => n === 0);
  assert(left === 0, 'the row is gone');
  const status = await page.evaluate(
    async ([id, bearer]) =>
      (await fetch(`/api/admin/conversations/${id}/timeline`, { headers: { Authorization: `Bearer ${bearer}` } })).status,
    [threadId, ADMIN],
  );
  assert(status === 404, `the timeline answers 404: ${status}`);
  // The chat page forgets the erased thread; leave it with a conversation for what follows.
  await newConversation();
});

await scenario('phone width', async () => {
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(`${BASE}/`);
  await page.getByLabel('Message').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(overflow <= 1, `no horizontal scroll at 375 px: ${overflow}`);
  await page.screenshot({ path: join(SHOTS, 'chat-phone.png'), fullPage: true });
});

await context.close();
rmSync(userDataDir, { recursive: true, force: true });

const failed = results.filter((r) => !r.ok);
console.log(`${results.length - failed.length}/${results.length} scenarios passed; screenshots in ${SHOTS}`);
process.exit(failed.length ? 1 : 0);
