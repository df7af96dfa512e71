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

/** 40 words: the echo bot with pace 0.1 streams them for about four seconds. */
const LONG_TEXT = Array.from({ length: 40 }, (_, i) => `word${i}`).join(" ");

/** A store of a new client of `user` with `room` open and joined. */
async function openStore(t, user, room, options) {
  const made = clientFor(t, user, options);
  const store = new ChatStore(made.client);
  t.after(() => store.dispose());
  made.client.connect();
  store.open(room);
  await until(storeChanges(store), () => store.room(room).status === "joined", `${user} joined`);
  return { ...made, store };
}

/** Every text the store showed for the reply to `replyTo` while it streamed, in order, once each. */
function replyTexts(store, room, replyTo) {
  const texts = [];
  const record = () => {
    const reply = store.room(room).replies.find((r) => r.replyTo === replyTo);
    if (reply && reply.text !== texts.at(-1)) texts.push(reply.text);
  };
  const off = store.subscribe(record);
  record();
  return { texts, off };
}

test("a second client that joins mid-reply shows the text so far, then grows it to the final text", async (t) => {
  const { client, token } = clientFor(t, "hal");
  const bot = await echoBot(token, { pace: 0.1 });
  const first = new ChatStore(client);
  t.after(() => first.dispose());
  client.connect();
  first.open(bot.id);
  await until(storeChanges(first), () => first.room(bot.id).status === "joined", "joined");
  const stored = await first.send(bot.id, LONG_TEXT);
  await until(storeChanges(first), () => first.room(bot.id).replies[0]?.seq >= 5, "five pieces");

  const { store: second } = await openStore(t, "hal", bot.id);
  const reply = await until(storeChanges(second), () => second.room(bot.id).replies[0], "the reply in progress");
  assert.equal(reply.replyTo, stored.id);
  // The snapshot holds everything written so far (pieces may have been gathered into fewer deltas).
  assert.ok(reply.seq >= 1, `seq ${reply.seq}`);
  assert.ok(reply.text.startsWith("word0 word1 word2 "), `the text so far from its start: ${JSON.stringify(reply.text)}`);
  assert.ok(LONG_TEXT.startsWith(reply.text.trimEnd()));
  const seen = replyTexts(second, bot.id, stored.id);
  const final = await until(
    storeChanges(second),
    () => second.room(bot.id).messages.find((m) => m.reply_to === stored.id),
    "the final message",
    scaled(15_000),
  );
  seen.off();
  assert.equal(final.text, LONG_TEXT);
  assert.equal(final.state, undefined);
  assert.ok(seen.texts.length > 2, "it kept growing after the snapshot");
  for (let i = 1; i < seen.texts.length; i++) assert.ok(seen.texts[i].startsWith(seen.texts[i - 1]), "only appended to");
  assert.ok(LONG_TEXT.startsWith(seen.texts.at(-1).trimEnd()));
  assert.deepEqual(second.room(bot.id).replies, []);
});

test("cancel from one client ends the reply as cancelled for both, with the same text so far", async (t) => {
  const { client, token } = clientFor(t, "ida");
  const bot = await echoBot(token, { pace: 0.1 });
  const first = new ChatStore(client);
  t.after(() => first.dispose());
  client.connect();
  first.open(bot.id);
  await until(storeChanges(first), () => first.room(bot.id).status === "joined", "joined");
  const { client: otherClient, store: second } = await openStore(t, "ida", bot.id);
  const deltas = [];
  otherClient.on("delta", (d) => deltas.push(d));
  const stored = await first.send(bot.id, LONG_TEXT);
  await until(storeChanges(second), () => second.room(bot.id).replies[0]?.seq >= 3, "three pieces in the other client");

  const ok = await second.cancel(bot.id, stored.id);
  assert.deepEqual({ type: ok.type, room: ok.room, message: ok.message }, { type: "cancel_ok", room: bot.id, message: stored.id });
  const ended = await Promise.all(
    [first, second].map((store) =>
      until(storeChanges(store), () => store.room(bot.id).messages.find((m) => m.reply_to === stored.id), "the cancelled reply"),
    ),
  );
  for (const [i, store] of [first, second].entries()) {
    await until(storeChanges(store), () => store.room(bot.id).progress[stored.id]?.state === "cancelled", `cancelled (${i})`);
    assert.deepEqual(store.room(bot.id).replies, []);
  }
  assert.equal(ended[0].state, "cancelled");
  assert.equal(ended[0].id, ended[1].id);
  assert.equal(ended[0].text, ended[1].text);
  assert.ok(ended[0].text.length > 0 && ended[0].text.length < LONG_TEXT.length, ended[0].text);
  assert.ok(LONG_TEXT.startsWith(ended[0].text.trimEnd()));
  const atEnd = deltas.length;

  // A reply that ended cannot be cancelled again, and nothing more of it arrives: the next request's
  // whole reply comes after it.
  await assert.rejects(second.cancel(bot.id, stored.id), (err) => err.code === "conflict");
  const next = await first.send(bot.id, "and then");
  await until(storeChanges(first), () => first.room(bot.id).messages.some((m) => m.reply_to === next.id), "the next reply");
  assert.deepEqual(deltas.slice(atEnd).filter((d) => d.reply_to === stored.id), []);
  assert.ok(first.room(bot.id).messages.filter((m) => m.reply_to === stored.id).length === 1);
});

test("cancel goes over HTTP while the socket is down", async (t) => {
  const { client, control, token } = clientFor(t, "jon");
  const bot = await echoBot(token, { pace: 0.1 });
  const store = new ChatStore(client);
  t.after(() => store.dispose());
  client.connect();
  store.open(bot.id);
  await until(storeChanges(store), () => store.room(bot.id).status === "joined", "joined");
  const stored = await store.send(bot.id, LONG_TEXT);
  await until(storeChanges(store), () => store.room(bot.id).replies[0]?.seq >= 2, "two pieces");

  control.refuse = true;
  control.kill();
  await nextEvent(client, "state", (s) => s.state === "reconnecting");
  const ok = await store.cancel(bot.id, stored.id);
  assert.equal(ok.message, stored.id);
  control.refuse = false;
  const reply = await until(
    storeChanges(store),
    () => store.room(bot.id).messages.find((m) => m.reply_to === stored.id),
    "the cancelled reply after the rejoin",
    scaled(15_000),
  );
  assert.equal(reply.state, "cancelled");
  assert.ok(reply.text.length < LONG_TEXT.length);
  const history = (await client.history(bot.id)).messages;
  assert.deepEqual(
    history.map((m) => [m.from.kind, m.state ?? null]),
    [["user", null], ["bot", "cancelled"]],
  );
});
