// ChatClient and ChatStore against a real gateway: chat, streamed replies, a killed socket resumed
// with nothing lost, the HTTP fallback, token refresh and bot commands.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { ChatClient, ChatStore } from "../dist/index.js";
import {
  api,
  makeToken,
  nextEvent,
  scaled,
  socketControl,
  startGateway,
  storeChanges,
  streamingWebhook,
  until,
} from "./helpers.mjs";

let gateway;

before(async () => {
  gateway = await startGateway();
});

after(async () => {
  await gateway?.stop();
});

/** A client of `user` on the test's gateway with quick retries; closed when the test ends. */
function clientFor(t, user, options = {}) {
  const control = socketControl();
  const token = makeToken(user, { name: user[0].toUpperCase() + user.slice(1), ...(options.claims ?? {}) });
  const client = new ChatClient({
    url: `${gateway.url}/ws`,
    token,
    WebSocket: control.WebSocket,
    backoffBaseMs: 20,
    backoffCapMs: 200,
    pollIntervalMs: 200,
    ...options.client,
  });
  t.after(() => client.close());
  return { client, control, token };
}

async function echoBot(token, config = {}) {
  const bot = await api(gateway, token, "POST", "/api/bots", { name: "Echo", kind: "echo", config });
  await api(gateway, token, "POST", `/api/bots/${bot.id}/start`);
  return bot;
}

/** Every message event of a client, from now on, and a wait for the answer to one of them. */
function messageLog(client) {
  const messages = [];
  const listeners = new Set();
  client.on("message", (m) => {
    messages.push(m);
    for (const fn of [...listeners]) fn();
  });
  const changed = (fn) => (listeners.add(fn), () => listeners.delete(fn));
  const replyTo = (id) => until(changed, () => messages.find((m) => m.reply_to === id), `the answer to ${id}`);
  return { messages, changed, replyTo };
}

const userTexts = (view) => view.messages.filter((m) => m.from.kind === "user").map((m) => m.text);

test("the store shows a sent message, the bot typing and the echo reply", async (t) => {
  const { client, token } = clientFor(t, "amy");
  const bot = await echoBot(token, { delay: 0.3 });
  const store = new ChatStore(client);
  client.connect();
  store.open(bot.id);
  await until(storeChanges(store), () => store.room(bot.id).status === "joined", "joined");
  const stored = await store.send(bot.id, "hello bot");
  const typing = await until(storeChanges(store), () => store.room(bot.id).typing[0], "the bot typing");
  assert.equal(typing.kind, "bot");
  const reply = await until(
    storeChanges(store),
    () => store.room(bot.id).messages.find((m) => m.reply_to === stored.id),
    "the reply",
  );
  assert.equal(reply.text, "hello bot");
  const view = store.room(bot.id);
  assert.deepEqual(userTexts(view), ["hello bot"]);
  assert.deepEqual(view.pending, []);
  await until(storeChanges(store), () => store.room(bot.id).progress[stored.id]?.state === "done", "done");
  store.dispose();
});

test("a streamed reply grows in the store and the final message replaces it", async (t) => {
  const hook = await streamingWebhook(["Hel", "lo", " there"]);
  t.after(() => hook.close());
  const { client, token } = clientFor(t, "ben", { claims: { roles: ["admin"] } });
  const bot = await api(gateway, token, "POST", "/api/bots", { name: "S", kind: "webhook", config: { url: hook.url } });
  await api(gateway, token, "POST", `/api/bots/${bot.id}/start`);
  const store = new ChatStore(client);
  client.connect();
  store.open(bot.id);
  await until(storeChanges(store), () => store.room(bot.id).status === "joined", "joined");
  const stored = await store.send(bot.id, "stream please");
  const first = await until(storeChanges(store), () => store.room(bot.id).replies[0], "a reply in progress");
  assert.deepEqual({ ...first }, { replyTo: stored.id, text: "Hel", attempt: 1, seq: 1, state: "streaming" });
  hook.release();
  const final = await until(
    storeChanges(store),
    () => store.room(bot.id).messages.find((m) => m.reply_to === stored.id),
    "the final message",
  );
  assert.equal(final.text, "Hello there");
  assert.deepEqual(store.room(bot.id).replies, []);
  store.dispose();
});

test("a socket killed mid-conversation resumes with every message once, in order", async (t) => {
  const { client, control, token } = clientFor(t, "cat");
  const bot = await echoBot(token);
  await api(gateway, token, "PUT", `/api/bots/${bot.id}/members/dan`);
  const dan = makeToken("dan");
  client.connect();
  await client.join(bot.id);
  const log = messageLog(client);
  const first = await client.send(bot.id, "before");
  await log.replyTo(first.id);

  // The network goes: the socket dies and new ones are refused while both users keep writing.
  control.refuse = true;
  control.kill();
  await nextEvent(client, "state", (s) => s.state === "reconnecting");
  const offline = [client.send(bot.id, "offline 1"), client.send(bot.id, "offline 2")];
  for (const text of ["dan 1", "dan 2", "dan 3"]) await api(gateway, dan, "POST", `/api/bots/${bot.id}/messages`, { text });
  control.refuse = false;
  await until(control.changed, () => client.state === "open", "open again", scaled(15_000));
  const acks = await Promise.all(offline);

  // Every user message gets one echo: wait for all of them, then compare with history.
  const history = async () => (await api(gateway, token, "GET", `/api/bots/${bot.id}/messages?limit=100`)).messages;
  await until(log.changed, () => log.messages.length >= 12, "every message and answer");
  const received = log.messages.map((m) => m.id);
  const stored = await history();
  assert.deepEqual(
    stored.filter((m) => m.from.kind === "user").map((m) => m.text),
    ["before", "dan 1", "dan 2", "dan 3", "offline 1", "offline 2"],
  );
  assert.equal(stored.length, 12, "one answer each");
  assert.deepEqual(received, stored.map((m) => m.id), "each message delivered once, in order");
  assert.deepEqual(acks.map((a) => a.id), stored.filter((m) => m.from.kind === "user" && m.text.startsWith("offline")).map((m) => m.id));
});

test("with the socket refused the client falls back to HTTP, then returns to the socket", async (t) => {
  const { client, control, token } = clientFor(t, "eve");
  const bot = await echoBot(token);
  control.refuse = true;
  const states = [];
  client.on("state", (s) => states.push(s.state));
  client.connect();
  await nextEvent(client, "state", (s) => s.state === "fallback");
  const joined = await client.join(bot.id);
  assert.equal(joined.fallback, true);
  const log = messageLog(client);
  const stored = await client.send(bot.id, "over HTTP");
  const reply = await log.replyTo(stored.id);
  assert.equal(reply.text, "over HTTP");
  assert.equal(client.state, "fallback");

  control.refuse = false;
  await nextEvent(client, "state", (s) => s.state === "open", scaled(15_000));
  const live = await client.send(bot.id, "live again");
  await log.replyTo(live.id);
  assert.deepEqual(states.slice(0, 3), ["connecting", "reconnecting", "fallback"]);
  const texts = (await client.history(bot.id)).messages.map((m) => m.text);
  assert.deepEqual(texts, ["over HTTP", "over HTTP", "live again", "live again"]);
});

test("the token is refreshed on the live connection before it expires", async (t) => {
  let asked = 0;
  const fresh = makeToken("fay", { ttl: 3600 });
  const { client } = clientFor(t, "fay", {
    claims: {},
    client: { token: makeToken("fay", { ttl: 4 }), onTokenRefresh: async () => (asked++, fresh) },
  });
  client.connect();
  const ok = await nextEvent(client, "auth_ok", () => true, scaled(10_000));
  assert.equal(ok.exp * 1000 > Date.now() + 3_000_000, true);
  assert.equal(asked, 1);
  assert.equal(client.token, fresh);
  assert.equal(client.state, "open");
});

test("stopBot and startBot answer with the new status and the room hears it", async (t) => {
  const { client, token } = clientFor(t, "gus");
  const bot = await echoBot(token);
  const store = new ChatStore(client);
  client.connect();
  store.open(bot.id);
  await until(storeChanges(store), () => store.room(bot.id).bot?.status === "running", "running");
  const stopped = await store.botCommand(bot.id, "stop");
  assert.match(stopped.status, /^(stopping|stopped)$/);
  await until(storeChanges(store), () => /^(stopping|stopped)$/.test(store.room(bot.id).bot?.status), "stopping");
  const queued = await store.send(bot.id, "wait for me");
  await until(storeChanges(store), () => store.room(bot.id).progress[queued.id]?.state === "queued", "queued");
  await store.botCommand(bot.id, "start");
  await until(
    storeChanges(store),
    () => store.room(bot.id).messages.some((m) => m.reply_to === queued.id),
    "the answer after the start",
  );
  await until(storeChanges(store), () => store.room(bot.id).bot?.status === "running", "running again");
  store.dispose();
});
