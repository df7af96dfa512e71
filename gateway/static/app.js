// The chat page: sign-in, the bot list, and one room at a time, on top of ChatClient.
// Text from the server is only ever put in the DOM with textContent. The token lives in
// sessionStorage and in the client; it is never written to the DOM or the console.

import { ChatClient, decodeJwtPayload, nextReply } from "./chat-client.js";

const TOKEN_KEY = "chat.token";
const DEV_USER_KEY = "chat.devUser";
const ROOM_KEY = "chat.room"; // the open room, so that a reload shows it again (a reply in progress included)
const TYPING_EXPIRY_MS = 8_000; // the server clears typing after 6 s; this only guards lost frames
const HISTORY_LIMIT = 50;

const $ = (id) => document.querySelector(`[data-testid="${id}"]`);
const CONN_LABELS = {
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting…",
  fallback: "HTTP fallback",
  closed: "offline",
};
const PROGRESS_LABELS = {
  sending: "sending…",
  queued: "queued",
  processing: "processing",
  thinking: "thinking…",
  executing: "executing…",
  done: "done",
  failed: "failed",
  cancelled: "stopped",
};

const view = {
  client: null,
  me: { id: null, name: null, admin: false },
  bots: new Map(),
  room: null,
  members: new Map(),
  memberCount: 0,
  typers: new Map(),
  progress: new Map(), // user message id -> {state, detail}
  streams: new Map(), // reply_to -> {li, reply}: a bot reply being written (reply as nextReply() keeps it)
};

// ---- sign-in ------------------------------------------------------------------------------------

function tokenExpired(token) {
  const exp = decodeJwtPayload(token)?.exp;
  return typeof exp !== "number" || exp * 1000 <= Date.now();
}

// A token in the fragment (never sent to the server) is moved to sessionStorage and off the address bar.
function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (!token) return;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.removeItem(DEV_USER_KEY);
}

/** A token from the development sign-in endpoint, or null when the server does not offer it. */
async function devLogin(user) {
  const res = await fetch("/api/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`sign-in failed (HTTP ${res.status})`);
  return (await res.json()).token;
}

async function boot() {
  bindStaticHandlers();
  takeTokenFromUrl();
  const stored = sessionStorage.getItem(TOKEN_KEY);
  const devUser = sessionStorage.getItem(DEV_USER_KEY);
  if (stored && !tokenExpired(stored)) return start(stored, devUser);
  const name = devUser || `guest-${Math.random().toString(36).slice(2, 6)}`;
  try {
    const token = await devLogin(name);
    if (token) return start(token, name);
    showSignIn({ devAvailable: false });
  } catch (err) {
    showSignIn({ devAvailable: true, error: err.message });
  }
}

function showSignIn({ devAvailable = true, error = "" } = {}) {
  $("app").hidden = true;
  $("me").hidden = true;
  $("signin").hidden = false;
  $("dev-login-form").hidden = !devAvailable;
  $("signin-error").textContent = error;
}

function start(token, devUser) {
  sessionStorage.setItem(TOKEN_KEY, token);
  if (devUser) sessionStorage.setItem(DEV_USER_KEY, devUser);
  else sessionStorage.removeItem(DEV_USER_KEY);
  const claims = decodeJwtPayload(token) ?? {};
  const admin = Array.isArray(claims.roles) && claims.roles.includes("admin");
  view.me = { id: claims.sub ?? null, name: claims.name ?? claims.sub ?? "me", admin };
  const onTokenRefresh = devUser
    ? async () => {
        const fresh = await devLogin(devUser);
        if (!fresh) throw new Error("development sign-in is no longer available");
        sessionStorage.setItem(TOKEN_KEY, fresh);
        return fresh;
      }
    : undefined;
  const client = new ChatClient({ token, onTokenRefresh });
  view.client = client;
  subscribe(client);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me").hidden = false;
  $("me-name").textContent = view.me.name;
  client.connect();
  loadBots()
    .then(() => {
      const room = sessionStorage.getItem(ROOM_KEY);
      if (room && view.bots.has(room)) return openRoom(room);
      sessionStorage.removeItem(ROOM_KEY);
    })
    .catch(showError);
}

function signOut(message = "") {
  view.client?.close();
  view.client = null;
  view.room = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(DEV_USER_KEY);
  sessionStorage.removeItem(ROOM_KEY);
  showRoom(false);
  showSignIn({ devAvailable: true, error: message });
}

// ---- client events --------------------------------------------------------------------------------

function subscribe(client) {
  client.on("state", ({ state, reason }) => {
    const el = $("conn-state");
    el.dataset.state = state;
    el.querySelector(".conn-label").textContent = CONN_LABELS[state] ?? state;
    if (state === "closed" && (reason === "unauthorized" || reason === "forbidden")) {
      signOut("Your session ended. Please sign in again.");
    }
  });
  client.on("welcome", (f) => {
    const user = f.user;
    if (user && typeof user === "object") view.me = { ...view.me, id: user.id, name: user.name ?? user.id };
    else if (user) view.me.id = user;
    $("me-name").textContent = view.me.name;
  });
  client.on("joined", onJoined);
  client.on("message", (m) => {
    if (m.room !== view.room) return;
    renderMessage(m);
    // a request that waits for a stopped bot arrives marked, instead of with a separate status frame
    if (m.queued) onStatus({ room: m.room, message_id: m.id, state: "queued" });
  });
  client.on("delta", (d) => onReply(d, "append"));
  client.on("stream", (s) => onReply(s, "replace"));
  client.on("typing", onTyping);
  client.on("presence", onPresence);
  client.on("status", onStatus);
  client.on("bot_status", onBotStatus);
  client.on("resync", ({ room }) => {
    if (room === view.room) reloadHistory(room).catch(showError);
  });
  client.on("error", (f) => {
    if (f.ref == null && f.code !== "closed") showError(f);
  });
}

function onJoined(f) {
  if (f.room !== view.room) return;
  if (f.bot) mergeBot({ ...f.bot, id: f.bot.id ?? f.room });
  view.members = new Map();
  for (const m of f.members ?? []) view.members.set(memberId(m), memberName(m));
  view.memberCount = f.member_count ?? view.members.size;
  renderPresence(Boolean(f.fallback));
  renderRoomHead();
}

// A piece of a bot's reply (`delta`) or its text so far (`stream`, after a join or a new attempt).
function onReply(f, mode) {
  if (f.room !== view.room || f.reply_to == null) return;
  const replyTo = String(f.reply_to);
  if (messageByReply(replyTo)) return; // the final message is already here
  let entry = view.streams.get(replyTo);
  if (!entry) {
    const li = messageElement({ from: { kind: "bot", id: view.room }, text: "", ts: Date.now() });
    li.dataset.streaming = "true";
    li.dataset.replyTo = replyTo;
    entry = { li, reply: undefined };
    view.streams.set(replyTo, entry);
    appendMessage(li);
  }
  const change = { replyTo, text: f.text ?? "", mode, attempt: f.attempt, seq: f.seq };
  entry.reply = nextReply(entry.reply, change);
  entry.li.querySelector(".bubble").textContent = entry.reply.text;
  renderStop(entry);
  keepAtBottom();
}

// The reply ended without a complete message (failed, or cancelled before any text was stored).
function endStream(replyTo, state) {
  const entry = view.streams.get(replyTo);
  if (!entry || entry.li.dataset.streaming !== "true") return;
  entry.li.dataset.streaming = state;
  entry.reply = { ...entry.reply, state };
  renderStop(entry);
  addNote(entry.li, state === "cancelled" ? "stopped" : "the bot failed to finish this reply");
}

/** Stop is offered while the reply streams, to the user who asked, the bot's owner and admins. */
function canCancel(replyTo) {
  if (view.me.admin) return true;
  if (view.bots.get(view.room)?.owner === view.me.id) return true;
  return messageById(replyTo)?.dataset.own === "true";
}

function renderStop(entry) {
  const { li, reply } = entry;
  let button = li.querySelector('[data-testid="reply-stop"]');
  const wanted = li.dataset.streaming === "true" && canCancel(reply.replyTo);
  if (!wanted) {
    button?.remove();
    return;
  }
  if (button) return;
  button = document.createElement("button");
  button.type = "button";
  button.className = "reply-stop";
  button.dataset.testid = "reply-stop";
  button.textContent = "Stop";
  button.title = "Stop this reply";
  button.addEventListener("click", () => stopReply(reply.replyTo, button));
  li.append(button);
}

async function stopReply(replyTo, button) {
  const room = view.room;
  button.disabled = true;
  button.textContent = "Stopping…";
  try {
    await view.client.cancel(room, replyTo);
  } catch (err) {
    if (err?.code === "conflict") return; // it ended meanwhile: its final message is on the way
    button.disabled = false;
    button.textContent = "Stop";
    showError(err);
  }
}

function addNote(li, text) {
  let note = li.querySelector('[data-testid="message-note"]');
  if (!note) {
    note = document.createElement("div");
    note.className = "note";
    note.dataset.testid = "message-note";
    li.append(note);
  }
  note.textContent = text;
}

function onTyping(f) {
  if (f.room !== view.room || !f.from) return;
  if (f.from.kind === "user" && f.from.id === view.me.id) return;
  const key = `${f.from.kind}:${f.from.id}`;
  clearTimeout(view.typers.get(key)?.timer);
  if (f.state) {
    const timer = setTimeout(() => {
      view.typers.delete(key);
      renderTyping();
    }, TYPING_EXPIRY_MS);
    view.typers.set(key, { name: displayName(f.from), kind: f.from.kind, timer });
  } else {
    view.typers.delete(key);
  }
  renderTyping();
}

function onPresence(f) {
  if (f.room !== view.room) return;
  const id = memberId(f.user);
  if (f.event === "join" && !view.members.has(id)) {
    view.members.set(id, memberName(f.user));
    view.memberCount += 1;
  } else if (f.event === "leave" && view.members.has(id)) {
    view.members.delete(id);
    view.memberCount = Math.max(view.members.size, view.memberCount - 1);
  }
  if (typeof f.member_count === "number") view.memberCount = f.member_count;
  renderPresence(false);
}

function onStatus(f) {
  if (f.room !== view.room || f.message_id == null) return;
  view.progress.set(String(f.message_id), { state: f.state, detail: f.detail ?? "" });
  applyProgress(String(f.message_id));
  if (f.state === "failed" || f.state === "cancelled") endStream(String(f.message_id), f.state);
}

function onBotStatus(f) {
  mergeBot({ id: f.bot, status: f.status, error: f.error ?? null });
  if (f.bot === view.room) renderRoomHead();
}

// ---- bots -------------------------------------------------------------------------------------------

async function loadBots() {
  const { bots } = await view.client.listBots();
  view.bots = new Map(bots.map((b) => [b.id, b]));
  renderBotList();
}

function mergeBot(bot) {
  const known = view.bots.get(bot.id) ?? {};
  view.bots.set(bot.id, { ...known, ...Object.fromEntries(Object.entries(bot).filter(([, v]) => v !== undefined)) });
  renderBotList();
}

function renderBotList() {
  const list = $("bot-list");
  list.replaceChildren();
  for (const bot of view.bots.values()) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "bot-item";
    button.dataset.testid = "bot-item";
    button.dataset.botId = bot.id;
    button.setAttribute("aria-current", String(bot.id === view.room));
    const dot = document.createElement("span");
    dot.className = "status-dot";
    dot.dataset.status = bot.status ?? "stopped";
    dot.title = bot.status ?? "";
    const name = document.createElement("span");
    name.className = "bot-name";
    name.textContent = bot.name ?? bot.id;
    const kind = document.createElement("span");
    kind.className = "bot-kind";
    kind.textContent = bot.kind ?? "";
    button.append(dot, name, kind);
    button.addEventListener("click", () => openRoom(bot.id));
    const li = document.createElement("li");
    li.append(button);
    list.append(li);
  }
  $("bot-list-empty").hidden = view.bots.size > 0;
}

async function createBot(event) {
  event.preventDefault();
  const name = $("bot-name").value.trim();
  const delay = Number($("bot-delay").value);
  const pace = Number($("bot-pace").value);
  if (!name) return;
  const config = {};
  if (delay > 0) config.delay = delay;
  if (pace > 0) config.pace = pace; // streams the echo word by word: a reply to reload or stop
  try {
    const bot = await view.client.createBot({ name, kind: "echo", config });
    $("bot-name").value = "";
    mergeBot(bot);
    await openRoom(bot.id);
  } catch (err) {
    showError(err);
  }
}

async function botCommand(action) {
  const id = view.room;
  try {
    const result = await (action === "start" ? view.client.startBot(id) : view.client.stopBot(id));
    mergeBot({ id, status: result.status, error: result.error });
    if (id === view.room) renderRoomHead();
  } catch (err) {
    showError(err);
  }
}

// ---- the room --------------------------------------------------------------------------------------

async function openRoom(id) {
  if (view.room === id) return;
  const client = view.client;
  if (view.room) client.leave(view.room).catch(() => {});
  view.room = id;
  sessionStorage.setItem(ROOM_KEY, id);
  resetRoom();
  showRoom(true);
  renderBotList();
  renderRoomHead();
  try {
    const h = await client.history(id, { limit: HISTORY_LIMIT });
    if (view.room !== id) return;
    for (const m of h.messages ?? []) renderMessage(m);
    keepAtBottom(true);
    const joined = await client.join(id, h.last_id != null ? { since: h.last_id } : {});
    // An empty room at history time may have got messages before the join: fetch them.
    if (view.room === id && h.last_id == null && joined.last_id != null) await reloadHistory(id);
  } catch (err) {
    if (view.room === id) showError(err);
  }
}

async function reloadHistory(id) {
  const h = await view.client.history(id, { limit: HISTORY_LIMIT });
  if (view.room !== id) return;
  const list = $("messages");
  const keep = [...list.querySelectorAll('[data-pending="true"], [data-streaming]')];
  list.replaceChildren();
  for (const m of h.messages ?? []) renderMessage(m);
  list.append(...keep);
  keepAtBottom(true);
}

function resetRoom() {
  for (const t of view.typers.values()) clearTimeout(t.timer);
  Object.assign(view, { members: new Map(), memberCount: 0, typers: new Map(), progress: new Map(), streams: new Map() });
  $("messages").replaceChildren();
  $("composer-input").value = "";
  renderTyping();
  renderPresence(false);
}

function showRoom(visible) {
  $("room-inner").hidden = !visible;
  $("room-placeholder").hidden = visible;
}

function renderRoomHead() {
  const bot = view.bots.get(view.room) ?? { id: view.room };
  const status = bot.status ?? "stopped";
  $("room-title").textContent = bot.name ?? bot.id ?? "";
  const badge = $("bot-status");
  badge.dataset.status = status;
  badge.textContent = status;
  const error = $("bot-error");
  error.hidden = status !== "error" || !bot.error;
  error.textContent = status === "error" ? (bot.error ?? "") : "";
  $("bot-start").disabled = status === "running" || status === "starting";
  $("bot-stop").disabled = status === "stopped" || status === "stopping";
}

function renderPresence(unknown) {
  const list = $("presence-list");
  list.replaceChildren();
  for (const [id, name] of [...view.members].slice(0, 50)) {
    const li = document.createElement("li");
    li.textContent = name ?? id;
    if (id === view.me.id) li.className = "self";
    list.append(li);
  }
  $("presence-count").textContent = unknown ? "?" : String(Math.max(view.memberCount, view.members.size));
}

function renderTyping() {
  const typers = [...view.typers.values()];
  const box = $("typing");
  box.hidden = typers.length === 0;
  box.dataset.bot = String(typers.some((t) => t.kind === "bot"));
  const names = typers.map((t) => t.name);
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing`;
  else if (names.length > 2) text = `${names[0]}, ${names[1]} and ${names.length - 2} more are typing`;
  $("typing-text").textContent = text;
}

// ---- messages ----------------------------------------------------------------------------------------

function memberId(user) {
  return user && typeof user === "object" ? user.id : user;
}

function memberName(user) {
  return user && typeof user === "object" ? (user.name ?? user.id) : user;
}

function displayName(from) {
  if (from.kind === "bot") return from.name ?? view.bots.get(from.id)?.name ?? view.bots.get(view.room)?.name ?? "bot";
  if (from.id === view.me.id) return "you";
  return from.name ?? from.id;
}

function messageById(id) {
  return $("messages").querySelector(`[data-id="${CSS.escape(String(id))}"]`);
}

function messageByReply(replyTo) {
  return $("messages").querySelector(`[data-reply-to="${CSS.escape(String(replyTo))}"]:not([data-streaming])`);
}

function formatTime(ts) {
  const date = new Date(typeof ts === "number" ? ts : Date.now());
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function messageElement(m) {
  const from = m.from ?? { kind: "user" };
  const own = from.kind === "user" && from.id === view.me.id;
  const li = document.createElement("li");
  li.className = "msg";
  li.dataset.testid = "message";
  li.dataset.kind = from.kind;
  li.dataset.own = String(own);
  if (m.id != null) li.dataset.id = String(m.id);
  if (m.reply_to != null) li.dataset.replyTo = String(m.reply_to);
  const meta = document.createElement("div");
  meta.className = "meta";
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = displayName(from);
  const time = document.createElement("time");
  time.textContent = formatTime(m.ts);
  meta.append(author, time);
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.dataset.testid = "message-text";
  bubble.textContent = m.text ?? "";
  li.append(meta, bubble);
  if (m.state === "cancelled") {
    li.dataset.state = "cancelled";
    addNote(li, "stopped");
  }
  if (from.kind === "user") {
    const progress = document.createElement("div");
    progress.className = "progress";
    progress.dataset.testid = "message-progress";
    progress.hidden = true;
    li.append(progress);
  }
  return li;
}

function renderMessage(m) {
  if (m.id != null && messageById(m.id)) return;
  const li = messageElement(m);
  const stream = m.reply_to != null ? view.streams.get(String(m.reply_to)) : null;
  if (stream) {
    view.streams.delete(String(m.reply_to));
    stream.li.replaceWith(li);
  } else {
    appendMessage(li);
  }
  if (m.from?.kind === "bot") {
    for (const [key, t] of view.typers) {
      if (t.kind === "bot") {
        clearTimeout(t.timer);
        view.typers.delete(key);
      }
    }
    renderTyping();
  }
  if (m.id != null) {
    applyProgress(String(m.id));
    // the user message a streamed reply answers may arrive after it: Stop may be offered now
    const answer = m.from?.kind === "user" ? view.streams.get(String(m.id)) : undefined;
    if (answer) renderStop(answer);
  }
  keepAtBottom();
}

function appendMessage(li) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function keepAtBottom(force = false) {
  const list = $("messages");
  if (force || list.scrollHeight - list.scrollTop - list.clientHeight < 160) list.scrollTop = list.scrollHeight;
}

function setProgress(li, state, detail = "") {
  const el = li.querySelector(".progress");
  if (!el) return;
  el.hidden = false;
  el.dataset.state = state;
  el.textContent = PROGRESS_LABELS[state] ?? state;
  if (detail) el.title = detail;
  if (state === "failed" && detail) el.textContent = `failed: ${detail}`;
}

function applyProgress(id) {
  const li = messageById(id);
  const p = view.progress.get(id);
  if (li && p) setProgress(li, p.state, p.detail);
}

async function sendMessage(event) {
  event?.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  const room = view.room;
  if (!text || !room) return;
  input.value = "";
  autosize();
  const li = messageElement({ from: { kind: "user", id: view.me.id }, text, ts: Date.now() });
  li.dataset.pending = "true";
  setProgress(li, "sending");
  $("messages").append(li);
  keepAtBottom(true);
  try {
    const { id, ts } = await view.client.send(room, text);
    if (messageById(id)) {
      li.remove(); // the broadcast copy arrived before the ack
      return;
    }
    delete li.dataset.pending;
    li.dataset.id = String(id);
    li.querySelector("time").textContent = formatTime(ts);
    li.querySelector(".progress").hidden = true;
    applyProgress(String(id));
    const answer = view.streams.get(String(id));
    if (answer) renderStop(answer);
  } catch (err) {
    li.dataset.pending = "failed";
    setProgress(li, "failed", err.message);
  }
}

// ---- chrome -------------------------------------------------------------------------------------------

function showError(err) {
  const text = err?.message || err?.code || String(err);
  const toast = document.createElement("div");
  toast.className = "toast";
  toast.dataset.testid = "toast";
  toast.textContent = err?.code && err.code !== text ? `${text} (${err.code})` : text;
  $("toasts").append(toast);
  setTimeout(() => toast.remove(), 6_000);
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
}

function bindStaticHandlers() {
  $("dev-login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("dev-name").value.trim();
    try {
      const token = await devLogin(name);
      if (token) start(token, name);
      else showSignIn({ devAvailable: false, error: "This server has no development sign-in: paste a token." });
    } catch (err) {
      showSignIn({ devAvailable: true, error: err.message });
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token-input");
    const token = input.value.trim();
    input.value = "";
    if (tokenExpired(token)) return showSignIn({ devAvailable: !$("dev-login-form").hidden, error: "That token is expired or malformed." });
    start(token, null);
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("bots-refresh").addEventListener("click", () => loadBots().catch(showError));
  $("bot-create-form").addEventListener("submit", createBot);
  $("bot-start").addEventListener("click", () => botCommand("start"));
  $("bot-stop").addEventListener("click", () => botCommand("stop"));
  $("composer").addEventListener("submit", sendMessage);
  const input = $("composer-input");
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) sendMessage(event);
  });
  input.addEventListener("input", () => {
    autosize();
    if (view.room) view.client?.typing(view.room, input.value.trim().length > 0);
  });
}

boot();
