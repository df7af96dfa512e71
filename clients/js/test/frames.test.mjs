// The client's frame types against a real gateway: every server frame type is provoked, recorded,
// and checked (strictly: keys the types do not know are reported) by the runtime checks that the
// compiler ties to the TypeScript types. The HTTP API's shapes are compared with /api/openapi.json.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import WebSocket from "ws";
import { checkServerFrame, guards, problems, SERVER_FRAME_TYPES } from "../dist/index.js";
import { api, makeToken, scaled, startGateway, streamingWebhook, until } from "./helpers.mjs";

let gateway;
let hook;

// Message keys the HTTP API's schema does not list: `queued` is on live copies only.
const NOT_IN_OPENAPI = { Message: ["queued"] };

before(async () => {
  gateway = await startGateway();
  hook = await streamingWebhook();
});

after(async () => {
  await gateway?.stop();
  await hook?.close();
});

/** A raw protocol connection that records every frame it receives. */
async function rawSocket(token) {
  const ws = new WebSocket(`${gateway.url.replace("http", "ws")}/ws?token=${token}`);
  const frames = [];
  const listeners = new Set();
  ws.on("message", (data) => {
    frames.push(JSON.parse(String(data)));
    for (const fn of [...listeners]) fn();
  });
  const changed = (fn) => (listeners.add(fn), () => listeners.delete(fn));
  const socket = {
    ws,
    frames,
    send: (frame) => ws.send(JSON.stringify(frame)),
    expect: (predicate, what) => until(changed, () => frames.find(predicate), what, scaled(15_000)),
  };
  await socket.expect((f) => f.type === "welcome", "welcome");
  return socket;
}

test("every server frame type a real gateway sends matches the client's types", async () => {
  const alice = await rawSocket(makeToken("alice", { roles: ["admin"], name: "Alice" }));
  const bot = await api(gateway, makeToken("alice", { roles: ["admin"] }), "POST", "/api/bots", {
    name: "Frames",
    kind: "webhook",
    config: { url: hook.url },
  });
  await api(gateway, makeToken("alice"), "PUT", `/api/bots/${bot.id}/members/bob`);
  const room = bot.id;

  alice.send({ type: "join", room, ref: 1 });
  await alice.expect((f) => f.type === "joined" && f.ref === 1, "joined");
  alice.send({ type: "ping", ref: "p" });
  await alice.expect((f) => f.type === "pong", "pong");
  alice.send({ type: "no such frame", ref: 2 });
  await alice.expect((f) => f.type === "error" && f.ref === 2, "error");
  alice.send({ type: "auth", token: makeToken("alice", { roles: ["admin"] }), ref: 3 });
  await alice.expect((f) => f.type === "auth_ok", "auth_ok");

  // A stopped bot: the message and its ack carry `queued`; starting it announces bot_status.
  alice.send({ type: "message", room, text: "while stopped", ref: 4, client_id: "frames-4" });
  const queued = await alice.expect((f) => f.type === "ack" && f.ref === 4 && f.queued === true, "a queued ack");
  alice.send({ type: "bot.start", bot: room, ref: 5 });
  await alice.expect((f) => f.type === "bot_status" && f.ref === 5, "the bot_status answer");
  await alice.expect((f) => f.type === "bot_status" && f.status === "running" && f.ts, "bot_status running");
  await alice.expect((f) => f.type === "delta" && f.reply_to === queued.id, "a delta");

  // Another user joins mid-stream: the text so far comes as `stream`; presence and typing go both ways.
  const bob = await rawSocket(makeToken("bob", { name: "Bob" }));
  bob.send({ type: "join", room, ref: 1 });
  await bob.expect((f) => f.type === "joined", "bob joined");
  const snapshot = await bob.expect((f) => f.type === "stream" && f.reply_to === queued.id, "the stream snapshot");
  assert.equal(snapshot.text, "Hel");
  await alice.expect((f) => f.type === "presence" && f.event === "join", "presence join");
  bob.send({ type: "typing", room, state: true });
  await alice.expect((f) => f.type === "typing" && f.from.id === "bob", "typing");

  // Cancelling the reply in progress.
  alice.send({ type: "cancel", room, message: queued.id, ref: 6 });
  await alice.expect((f) => f.type === "cancel_ok" && f.ref === 6, "cancel_ok");
  await alice.expect((f) => f.type === "status" && f.message_id === queued.id && f.state === "cancelled", "cancelled");
  hook.release();

  alice.send({ type: "message", room, text: "and now", ref: 7 });
  const ack = await alice.expect((f) => f.type === "ack" && f.ref === 7, "ack");
  await alice.expect((f) => f.type === "message" && f.reply_to === ack.id, "the reply");
  await alice.expect((f) => f.type === "status" && f.message_id === ack.id && f.state === "done", "status done");

  bob.send({ type: "leave", room, ref: 2 });
  await bob.expect((f) => f.type === "left", "left");
  await alice.expect((f) => f.type === "presence" && f.event === "leave", "presence leave");
  bob.ws.close();

  // A node that shuts down hands its clients back with `reconnect` before closing with 1012.
  const closed = new Promise((resolve) => alice.ws.on("close", resolve));
  try {
    await gateway.stop();
    await alice.expect((f) => f.type === "reconnect", "reconnect");
    assert.equal(await closed, 1012);
  } finally {
    gateway = await startGateway();
  }

  const recorded = [...alice.frames, ...bob.frames];
  for (const frame of recorded) {
    assert.deepEqual(checkServerFrame(frame, { strict: true }), [], JSON.stringify(frame));
  }
  const seen = new Set(recorded.map((f) => f.type));
  const missing = SERVER_FRAME_TYPES.filter((t) => !seen.has(t));
  assert.deepEqual(missing, [], "every frame type was provoked");
});

test("a frame that differs from the types is reported", () => {
  const delta = { type: "delta", room: "r", reply_to: "1-0", text: "x", attempt: 1, seq: 1 };
  assert.deepEqual(checkServerFrame(delta), []);
  assert.match(checkServerFrame({ ...delta, reply_to: undefined }).join("\n"), /reply_to: expected a string/);
  const { seq: _, ...noSeq } = delta;
  assert.match(checkServerFrame(noSeq).join("\n"), /seq: missing/);
  assert.match(checkServerFrame({ ...delta, text: 5 }).join("\n"), /text: expected a string/);
  assert.match(checkServerFrame({ type: "pong", extra: 1 }, { strict: true }).join(), /extra: not in the client's types/);
  assert.deepEqual(checkServerFrame({ type: "pong", extra: 1 }), [], "unknown keys are allowed outside strict mode");
  assert.match(checkServerFrame({ type: "surprise" }).join(), /not a server frame type/);
});

test("the HTTP API's Message, Sender and Bot match /api/openapi.json and real answers", async () => {
  const spec = await (await fetch(`${gateway.url}/api/openapi.json`)).json();
  for (const [name, guard] of [
    ["Message", guards.message],
    ["Sender", guards.sender],
    ["Bot", guards.bot],
  ]) {
    const schema = spec.components.schemas[name];
    const required = [...schema.required].sort();
    const all = Object.keys(schema.properties).sort();
    const extra = NOT_IN_OPENAPI[name] ?? [];
    assert.deepEqual([...guard.keys.required].sort(), required, `${name}: required keys`);
    const known = [...guard.keys.required, ...guard.keys.optional].filter((k) => !extra.includes(k));
    assert.deepEqual(known.sort(), all, `${name}: all keys`);
  }

  const token = makeToken("carol");
  const bot = await api(gateway, token, "POST", "/api/bots", { name: "Shapes", kind: "echo" });
  assert.deepEqual(problems(guards.bot, bot, { strict: true }), []);
  await api(gateway, token, "POST", `/api/bots/${bot.id}/start`);
  await api(gateway, token, "POST", `/api/bots/${bot.id}/messages`, { text: "over HTTP" });
  const history = await api(gateway, token, "GET", `/api/bots/${bot.id}/messages`);
  assert.deepEqual(problems(guards.historyPage, history, { strict: true }), []);
  assert.equal(history.messages[0].text, "over HTTP");
});
