// End-to-end tests of the web app in headless Chromium (playwright-core, Debian's chromium)
// against a running stack: BASE_URL (the edge serving web/dist), ADMIN_TOKEN, NATS_URL and
// NATS_PREFIX (for stream cleanup). Started by scripts/web-e2e.sh.
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
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

async function newConversation(on = page) {
  await on.goto(`${BASE}/`);
  const button = on.getByRole('button', { name: /Start a conversation|New conversation/ });
  await button.waitFor();
  // Until the new thread replaces it, the page still shows (and is connected to) the previous one.
  const previous = await on.evaluate(() => window.__chat?.thread()?.threadId ?? null);
  await button.click();
  await on.waitForFunction(
    (old) =>
      window.__chat?.thread() &&
      window.__chat.thread().threadId !== old &&
      window.__chat.connections() >= 1 &&
      document.querySelector('[data-testid="offline-banner"]') === null &&
      window.__chat.state().items.length === 0,
    previous,
  );
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

// The thread's history as the customer page's reload would read it.
async function historyOf() {
  return page.evaluate(async () => {
    const { threadId, token } = window.__chat.thread();
    const response = await fetch(`/api/threads/${threadId}/messages`, { headers: { Authorization: `Bearer ${token}` } });
    return response.json();
  });
}

// Reloads the customer page once the history has committed what `ready(history)` checks (a frame is
// sent just before its change is committed): what the page shows then comes from the history, not
// from frames replayed after it.
async function reloadWhenHistory(what, ready) {
  const history = await settle(historyOf, ready);
  assert(ready(history), `the history never showed ${what}: ${JSON.stringify(history)}`);
  await page.reload();
  await page.waitForFunction(() => window.__chat?.connections() >= 1 && document.querySelector('[data-testid="offline-banner"]') === null);
}

function pageText() {
  return page.evaluate(() => window.__chat.state().items.filter((i) => i.kind === 'text').map((i) => i.content).join('\n'));
}

// The customer page shows no internals: tool names, raw JSON, token counts, costs, agents.
async function assertNoInternals(where) {
  const shown = await page.locator('main').innerText();
  for (const internal of ['get_order_status', 'cancel_order', 'request_refund', 'tokens', '$', '{', 'orders']) {
    assert(!shown.includes(internal), `${where}: the customer page shows ${JSON.stringify(internal)}:\n${shown}`);
  }
  assert((await page.locator('[data-testid="tool-card"], [data-testid="usage"]').count()) === 0, `${where}: no tool card or usage`);
  assert((await page.locator('a[href^="/console"]').count()) === 0, `${where}: no link to the operator console`);
}

await scenario('chat with a tool call', async () => {
  await newConversation();
  const before = await say('Where is my order 1002?');
  await waitTurnDone(before);
  // The tool ran (the page's state has it), the page does not show it.
  const tools = await page.evaluate(() => window.__chat.state().items.filter((i) => i.kind === 'tool').map((i) => i.tool));
  assert(tools.includes('get_order_status'), `the turn called the tool: ${tools}`);
  const text = await pageText();
  assert(text.includes('Order 1002'), `reply mentions Order 1002: ${text}`);
  await page.locator('.msg.assistant', { hasText: 'Order 1002' }).waitFor();
  await assertNoInternals('after a tool-using reply');
  await page.screenshot({ path: join(SHOTS, 'chat-tool.png'), fullPage: true });
});

await scenario('approval approved', async () => {
  await newConversation();
  await say('Cancel order 1003');
  const card = page.locator('[data-testid="confirm-card"]');
  await card.waitFor();
  assert((await card.textContent()).includes('Cancel order 1003?'), `card asks in words: ${await card.textContent()}`);
  await assertNoInternals('with a pending confirmation');
  await page.screenshot({ path: join(SHOTS, 'chat-approval.png'), fullPage: true });
  await card.getByRole('button', { name: 'Confirm' }).click();
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
  await adminLogin('/console/dashboard');
  await page.locator('[data-testid="metrics"]').waitFor();
  const conversations = Number(await page.locator('.metric', { hasText: /^\d+Conversations$/ }).locator('.metric-value').textContent());
  assert(conversations >= 3, `conversations > 0: ${conversations}`);
  const tokens = Number(await page.locator('.metric', { hasText: 'Tokens' }).locator('.metric-value').textContent());
  assert(tokens > 0, `tokens > 0: ${tokens}`);
  await page.locator('[data-testid="agents"] tbody tr').first().waitFor();
  await page.locator('.chart canvas').waitFor();
  await page.screenshot({ path: join(SHOTS, 'dashboard.png'), fullPage: true });
});

// The Replay list once it answers the search `q` (the unfiltered list may hold the same rows).
function replayList(q) {
  return page.locator(`[data-testid="conversations"][data-query="${q}"][aria-busy="false"]`);
}

await scenario('replay steps through a timeline', async () => {
  await adminLogin('/console/replay');
  // The first, unfiltered load is over before filtering (the page drops late answers anyway).
  await replayList('').waitFor();
  await page.getByLabel('Search').fill('cancel');
  await page.getByRole('button', { name: 'Filter' }).click();
  const list = replayList('cancel');
  await list.waitFor();
  const rows = await list.locator('tbody tr').count();
  assert(rows === 1, `one conversation matches "cancel": ${rows}`);
  await list.locator('tbody tr', { hasText: 'Cancel order 1003' }).waitFor();
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
  await page.locator('[data-testid="confirm-card"]').waitFor();
  await page.reload();
  const card = page.locator('[data-testid="confirm-card"]');
  await card.waitFor();
  assert((await card.textContent()).includes('Refund order 1005?'), `restored card asks in words: ${await card.textContent()}`);
  await page.waitForFunction(() => window.__chat.connections() >= 1);
  await card.getByRole('button', { name: 'Keep it' }).click();
  await page.waitForFunction(() => window.__chat.state().items.some((i) => i.kind === 'usage'));
  const text = await pageText();
  const replies = await settle(historyReply, (r) => r.length === 1 && r[0] === text);
  assert(replies.length === 1 && text === replies[0], `page text equals the history reply: ${JSON.stringify({ text, replies })}`);
  assert(text.includes('left it as it is'), `declined reply: ${text}`);
  assert((await card.textContent()).includes('Kept as it is'), 'card shows it was kept');
});

await scenario('a tool reclassified in Review stays so', async () => {
  await adminLogin('/console/review');
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
  // The old path leads to the console's Replay page.
  await adminLogin('/replay');
  await page.waitForURL('**/console/replay');
  await replayList('').waitFor();
  await page.getByLabel('Search').fill('erase-me');
  await page.getByRole('button', { name: 'Filter' }).click();
  const row = replayList('erase-me').locator('tbody tr', { hasText: 'erase-me' });
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

async function api(path, init = {}) {
  const response = await fetch(`${BASE}${path}`, {
    ...init,
    headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json', ...(init.headers ?? {}) },
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

// A second browser, for a second person (its own storage, like another computer).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update'],
});

await scenario('a customer asks for a person; an operator takes over live, resolves; the customer rates it', async () => {
  const name = `Alice ${Date.now() % 100000}`;
  const created = await api('/api/admin/operators', { method: 'POST', body: JSON.stringify({ name }) });
  assert(typeof created.token === 'string' && created.token.length > 20, 'the admin API made an operator token');

  const operatorContext = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  operatorContext.setDefaultTimeout(TIMEOUT);
  const console_ = await operatorContext.newPage();
  console_.on('pageerror', (error) => console.log(`console page error: ${error.message}`));
  try {
    await console_.goto(`${BASE}/console`);
    await console_.getByLabel('Operator token').fill(created.token);
    await console_.getByLabel('Operator token').press('Enter');
    await console_.getByTestId('signed-in').filter({ hasText: name }).waitFor();
    // The inbox page stays this document throughout: nothing below reloads it.
    await console_.evaluate(() => {
      window.__sameDocument = true;
    });

    // The customer uses a tool first: the console will show it, the customer page must not.
    await newConversation();
    const before = await say('Where is my order 1004?');
    await waitTurnDone(before);
    const { threadId } = await page.evaluate(() => window.__chat.thread());
    const reply = page.locator('.msg.assistant', { hasText: 'Order 1004' });
    await reply.getByRole('button', { name: 'Good reply' }).click();
    await reply.getByText('Thanks for the feedback').waitFor();

    await page.getByTestId('talk-to-person').click();
    await page.getByTestId('handoff-status').filter({ hasText: 'Waiting for a person' }).waitFor();

    // It appears in the operator's inbox without a reload.
    const row = console_.locator(`[data-testid="inbox"] tr[data-thread="${threadId}"]`);
    await row.waitFor();
    assert((await row.textContent()).includes('waiting'), `the row says waiting: ${await row.textContent()}`);
    assert(await console_.evaluate(() => window.__sameDocument === true), 'the inbox was not reloaded');
    await console_.screenshot({ path: join(SHOTS, 'console-inbox.png'), fullPage: true });

    // The conversation, live, with the internals.
    await row.getByRole('link').click();
    await console_.locator('[data-testid="tool-card"]', { hasText: 'get_order_status' }).waitFor();
    await console_.locator('[data-testid="usage"]').first().waitFor();
    await console_.locator('[data-testid="handoff-state"][data-state="waiting"]').waitFor();
    await console_.getByRole('button', { name: 'Join' }).click();
    await console_.locator('[data-testid="handoff-state"][data-state="human"]').waitFor();
    await page.getByTestId('handoff-status').filter({ hasText: `${name} joined` }).waitFor();

    const words = 'Hello, this is a person. Your order 1004 is on its way.';
    await console_.getByLabel('Reply').fill(words);
    await console_.getByRole('button', { name: 'Send reply' }).click();
    const human = page.getByTestId('human-message').filter({ hasText: words });
    await human.waitFor();
    assert((await human.textContent()).includes(name), `the reply names the operator: ${await human.textContent()}`);
    // The operator's own view got it as a frame too.
    await console_.getByTestId('human-message').filter({ hasText: words }).waitFor();

    // A reload of the customer page keeps who answers and the operator's name on the message.
    await reloadWhenHistory('the operator message', (h) => h.messages?.some((m) => m.role === 'operator' && m.content === words));
    await page.getByTestId('handoff-status').filter({ hasText: `${name} joined` }).waitFor();
    const restored = page.getByTestId('human-message').filter({ hasText: words });
    await restored.waitFor();
    assert((await restored.textContent()).includes(name), `after a reload the reply names the operator: ${await restored.textContent()}`);
    assert(await page.getByTestId('talk-to-person').isDisabled(), 'a person is already here: no "Talk to a person"');
    assert(await console_.evaluate(() => window.__sameDocument === true), 'the console was not reloaded');
    await console_.screenshot({ path: join(SHOTS, 'console-conversation.png'), fullPage: true });

    await console_.getByRole('button', { name: 'Resolve' }).click();
    const csat = page.getByTestId('csat');
    await csat.waitFor();
    // Reloaded after the resolve: the CSAT prompt is still offered, and nobody "joined" any more.
    await reloadWhenHistory('the resolve', (h) => h.handoff?.resolved === true);
    await csat.getByRole('button', { name: '4 out of 5' }).waitFor();
    assert((await page.getByTestId('handoff-status').count()) === 0, 'no status line after the resolve');
    const again = page.getByTestId('human-message').filter({ hasText: words });
    assert((await again.textContent()).includes(name), `the operator's name stays after the resolve: ${await again.textContent()}`);
    await page.screenshot({ path: join(SHOTS, 'chat-handoff.png'), fullPage: true });
    await csat.getByRole('button', { name: '4 out of 5' }).click();
    await csat.getByText('Thank you for your feedback (4/5).').waitFor();
    await assertNoInternals('after the handoff');

    // Both kinds of feedback are stored: the analytics count them.
    const analytics = await settle(
      () => api('/api/admin/analytics?range=24h'),
      (a) => a.csat?.human_responses === 1 && a.thumbs_up_rate > 0,
    );
    assert(analytics.csat.human_responses === 1 && analytics.csat.human === 4, `CSAT stored: ${JSON.stringify(analytics.csat)}`);
    assert(analytics.thumbs_up_rate === 1, `thumbs stored: ${analytics.thumbs_up_rate}`);
    // And the dashboard shows them.
    await adminLogin('/console/dashboard');
    await page.locator('[data-testid="handoff-metrics"] .metric', { hasText: 'CSAT, with a person' }).filter({ hasText: '4.0 / 5 (1)' }).waitFor();
    await page.locator('[data-testid="handoff-metrics"] .metric', { hasText: 'Thumbs up' }).filter({ hasText: '100.0%' }).waitFor();
    await page.screenshot({ path: join(SHOTS, 'dashboard-handoff.png'), fullPage: true });
    // The inbox no longer lists it (nothing else waits in this run).
    await console_.goBack();
    await console_.getByText('Nobody is waiting for a person.').waitFor();
  } finally {
    await operatorContext.close();
  }
});

await scenario('the Operators page creates an operator, shows the token once, and revokes it', async () => {
  await adminLogin('/console/operators');
  const name = `Bob ${Date.now() % 100000}`;
  await page.getByLabel('Name').fill(name);
  await page.getByRole('button', { name: 'Create operator' }).click();
  const token = (await page.getByTestId('new-token').textContent()).trim();
  assert(token.startsWith('op_'), `a token is shown: ${token}`);
  const me = await fetch(`${BASE}/api/operator/me`, { headers: { Authorization: `Bearer ${token}` } });
  assert(me.status === 200, `the token works: ${me.status}`);
  await page.reload();
  await page.locator(`tr[data-operator="${name}"]`).waitFor();
  assert((await page.getByTestId('new-token').count()) === 0, 'the token is not shown again');
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: `Revoke ${name}` }).click();
  await page.locator(`tr[data-operator="${name}"]`, { hasText: 'revoked' }).waitFor();
  const after = await fetch(`${BASE}/api/operator/me`, { headers: { Authorization: `Bearer ${token}` } });
  assert(after.status === 401, `the revoked token is refused: ${after.status}`);
});

// Another site's page that embeds the chat with embed.js, served on http://localhost:PORT (the
// edge is http://127.0.0.1:…: another origin and another site).
function hostSite(port) {
  const server = createServer((request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(`<!doctype html><html><head><title>Shop</title></head><body><h1>The shop</h1>
<script src="${BASE}/embed.js" async></script></body></html>`);
  });
  return new Promise((resolve) => server.listen(Number(port), '127.0.0.1', () => resolve(server)));
}

await scenario('the chat embedded in another site listed in ALLOWED_ORIGINS', async () => {
  const listed = await hostSite(process.env.EMBED_HOST_PORT);
  const other = await hostSite(process.env.OTHER_HOST_PORT);
  const host = await browser.newContext();
  host.setDefaultTimeout(TIMEOUT);
  try {
    const visitor = await host.newPage();
    await visitor.goto(`http://localhost:${process.env.EMBED_HOST_PORT}/products`);
    await visitor.getByRole('button', { name: 'Chat with us' }).click();
    const chat = visitor.frameLocator('iframe[title="Support chat"]');
    await chat.getByRole('button', { name: 'Start a conversation' }).click();
    await chat.getByLabel('Message').fill('Where is my order 1006?');
    // Send is enabled once the socket is open.
    await chat.locator('button[type="submit"]:not([disabled])', { hasText: 'Send' }).click();
    await chat.locator('.msg.assistant', { hasText: 'Order 1006' }).waitFor();
    assert((await chat.locator('nav, a[href^="/console"], [data-testid="tool-card"]').count()) === 0, 'no console links or internals');
    await visitor.screenshot({ path: join(SHOTS, 'embed.png'), fullPage: true });

    // A site ALLOWED_ORIGINS does not list cannot frame it (Content-Security-Policy: frame-ancestors).
    const stranger = await host.newPage();
    const refused = new Promise((resolve) =>
      stranger.on('console', (message) => {
        if (/frame-ancestors/.test(message.text())) resolve(message.text());
      }),
    );
    await stranger.goto(`http://localhost:${process.env.OTHER_HOST_PORT}/`);
    await stranger.getByRole('button', { name: 'Chat with us' }).click();
    const why = await Promise.race([refused, new Promise((_, reject) => setTimeout(() => reject(new Error('no frame-ancestors refusal')), TIMEOUT))]);
    assert(String(why).includes(`http://localhost:${process.env.EMBED_HOST_PORT}`), `refused by the policy: ${why}`);
  } finally {
    await host.close();
    listed.close();
    other.close();
  }
});

await scenario('phone width', async () => {
  await page.setViewportSize({ width: 375, height: 800 });
  await page.goto(`${BASE}/`);
  await page.getByLabel('Message').waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(overflow <= 1, `no horizontal scroll at 375 px: ${overflow}`);
  await page.screenshot({ path: join(SHOTS, 'chat-phone.png'), fullPage: true });
});

await browser.close();
await context.close();
rmSync(userDataDir, { recursive: true, force: true });

const failed = results.filter((r) => !r.ok);
console.log(`${results.length - failed.length}/${results.length} scenarios passed; screenshots in ${SHOTS}`);
process.exit(failed.length ? 1 : 0);
