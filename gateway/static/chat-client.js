// ChatClient for the chat gateway (wire protocol v1): plain ES module, no dependencies.
// GENERATED FILE: built from clients/js/src by `npm run build` in clients/js; do not edit by hand.
// Types, the React hook and the docs: clients/js and docs/client.md.
var __defProp = Object.defineProperty;
var __export = (target, all) => {
  for (var name in all)
    __defProp(target, name, { get: all[name], enumerable: true });
};

// src/errors.ts
var ChatError = class extends Error {
  code;
  status;
  network;
  frame;
  constructor(code, message2, details = {}) {
    super(message2 || code, details.cause === void 0 ? void 0 : { cause: details.cause });
    this.name = "ChatError";
    this.code = code;
    if (details.status !== void 0) this.status = details.status;
    if (details.network !== void 0) this.network = details.network;
    if (details.frame !== void 0) this.frame = details.frame;
  }
};

// src/events.ts
var STATES = Object.freeze([
  "connecting",
  "open",
  "reconnecting",
  "fallback",
  "closed"
]);
var ChatEvents = class extends EventTarget {
  /** Subscribe to an event; returns a function that unsubscribes. Handlers get the payload itself. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
};

// src/util.ts
function decodeJwtPayload(token) {
  try {
    const part = String(token).split(".")[1];
    if (part === void 0) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64.padEnd(b64.length + (4 - b64.length % 4) % 4, "=");
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return typeof payload === "object" && payload !== null ? payload : null;
  } catch {
    return null;
  }
}
function tokenExpMs(token) {
  const exp = decodeJwtPayload(token)?.["exp"];
  return typeof exp === "number" ? exp * 1e3 : null;
}
function isExpired(token, now = Date.now()) {
  const exp = tokenExpMs(token);
  return exp !== null && exp <= now;
}
function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  return random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}
function frameBytes(frame) {
  return new TextEncoder().encode(JSON.stringify(frame)).length;
}
function remember(set, value, cap) {
  set.add(value);
  if (set.size > cap) {
    const oldest = set.values().next();
    if (!oldest.done) set.delete(oldest.value);
  }
}
function resolveUrls(url, httpBase) {
  const here = globalThis.location?.href;
  const ws = new URL(url ?? "/ws", here);
  if (ws.protocol === "http:" || ws.protocol === "https:") ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
  let base = httpBase;
  if (!base) {
    const http = new URL(ws.href);
    http.protocol = ws.protocol === "wss:" ? "https:" : "http:";
    base = http.origin;
  }
  return { wsUrl: ws.href, httpBase: String(base).replace(/\/+$/, "") };
}
var Timers = class {
  #timers = /* @__PURE__ */ new Map();
  set(name, fn, ms) {
    this.clear(name);
    this.#timers.set(
      name,
      setTimeout(() => {
        this.#timers.delete(name);
        fn();
      }, ms)
    );
  }
  clear(name) {
    clearTimeout(this.#timers.get(name));
    this.#timers.delete(name);
  }
  has(name) {
    return this.#timers.has(name);
  }
  clearAll() {
    for (const name of [...this.#timers.keys()]) this.clear(name);
  }
};

// src/outbox.ts
var Outbox = class {
  #entries = [];
  /** Ids of messages an ack (or a reconciliation) has given to one of our sends. */
  #acked = /* @__PURE__ */ new Set();
  #ackedCap;
  constructor(ackedCap) {
    this.#ackedCap = ackedCap;
  }
  /** Queue a message; resolves once the server stored it. */
  add(ref2, room, text) {
    return new Promise((resolve, reject) => {
      this.#entries.push({ ref: ref2, room, text, sentOn: 0, posting: false, resolve, reject });
    });
  }
  /** The queued messages of a room, oldest first (a copy: settling them while iterating is safe). */
  of(room) {
    return this.#entries.filter((e) => e.room === room);
  }
  has(entry) {
    return this.#entries.includes(entry);
  }
  byRef(ref2) {
    return this.#entries.find((e) => e.ref === ref2);
  }
  isAcked(id) {
    return this.#acked.has(id);
  }
  /** Record that message `id` is one of ours, whether or not a queued entry is waiting for it. */
  claim(id) {
    remember(this.#acked, id, this.#ackedCap);
  }
  /** The server stored `entry` as `stored`: resolve its send(). */
  settle(entry, stored) {
    if (!this.#remove(entry)) return;
    this.claim(stored.id);
    entry.resolve(stored);
  }
  fail(entry, error) {
    if (this.#remove(entry)) entry.reject(error);
  }
  failWhere(match, error) {
    for (const entry of this.#entries.filter(match)) this.fail(entry, error);
  }
  #remove(entry) {
    const i = this.#entries.indexOf(entry);
    if (i < 0) return false;
    this.#entries.splice(i, 1);
    return true;
  }
};

// src/rooms.ts
var UNCLAIMED_MAX = 50;
var HISTORY_PAGE = 100;
var RoomBook = class {
  outbox;
  #rooms = /* @__PURE__ */ new Map();
  #host;
  #o;
  constructor(host, options) {
    this.#host = host;
    this.#o = options;
    this.outbox = new Outbox(options.seenIdsPerRoom);
  }
  get(room) {
    return this.#rooms.get(room);
  }
  entries() {
    return [...this.#rooms];
  }
  join(room, since) {
    let r = this.#rooms.get(room);
    if (!r) {
      r = newRoom();
      this.#rooms.set(room, r);
    }
    if (since != null) r.lastId = String(since);
    if (r.joined && r.joinedFrame) return Promise.resolve(r.joinedFrame);
    const room_ = r;
    const promise = new Promise((resolve, reject) => room_.waiters.push({ resolve, reject }));
    if (this.#host.live && !r.joinRef) this.#sendJoin(room, r);
    else if (this.#host.fallback) this.#host.wakePoll();
    return promise;
  }
  async leave(room) {
    const r = this.#rooms.get(room);
    if (!r) return;
    this.drop(room, new ChatError("bad_request", "left the room"));
    if (this.#host.live && r.joined) await this.#host.request({ type: "leave", room }).catch(() => void 0);
  }
  /** Forget a room: its pending join and queued messages are rejected with `error`. */
  drop(room, error) {
    const r = this.#rooms.get(room);
    if (!r) return;
    this.#rooms.delete(room);
    clearTimeout(r.replayTimer);
    settleWaiters(r, error);
    this.outbox.failWhere((e) => e.room === room, error);
  }
  send(room, text) {
    const promise = this.outbox.add(this.#host.ref(), room, text);
    this.flush(room);
    return promise;
  }
  /** The socket reached `welcome`: join every room again from its position. */
  rejoinAll() {
    for (const [room, r] of this.#rooms) void this.#rejoin(room, r);
  }
  async #rejoin(room, r) {
    if (r.lastId === null && r.wasJoined) {
      const generation = this.#host.generation;
      const current = () => generation === this.#host.generation && this.#host.live;
      await this.catchUp(room, r, current).catch(() => void 0);
      if (!current() || this.#rooms.get(room) !== r || r.joinRef) return;
    }
    this.#sendJoin(room, r);
  }
  #sendJoin(room, r) {
    r.joinRef = this.#host.ref();
    r.since = r.lastId;
    const frame = { type: "join", room, ref: r.joinRef };
    if (r.since != null) frame.since = r.since;
    this.#host.send(frame);
  }
  /** The socket is gone: every room must be joined again. */
  connectionLost() {
    for (const r of this.#rooms.values()) {
      clearTimeout(r.replayTimer);
      Object.assign(r, { joined: false, joinRef: null, replayUntil: null, replayTimer: void 0 });
    }
  }
  /** The client stopped for good: reject every pending join and queued message. */
  shutdown(error) {
    this.connectionLost();
    for (const r of this.#rooms.values()) settleWaiters(r, error);
    this.outbox.failWhere(() => true, error);
  }
  onJoined(f) {
    const r = this.#rooms.get(f.room);
    if (!r) return;
    Object.assign(r, { joined: true, joinRef: null, bot: f.bot ?? r.bot, joinedFrame: f, wasJoined: true });
    const lastId = f.last_id ?? null;
    if (r.since == null || f.recovered === false) {
      if (lastId !== null) r.lastId = lastId;
      if (r.since != null) this.#host.emit("resync", { room: f.room, since: r.since, last_id: lastId });
    }
    settleWaiters(r, null, f);
    if (r.since != null && f.recovered !== false && lastId !== null && lastId !== r.since) {
      r.replayUntil = lastId;
      r.replayTimer = setTimeout(() => this.#replayDone(f.room), this.#o.replayWaitMs);
    } else {
      this.#replayDone(f.room);
    }
  }
  /** Record a message; false when it is a duplicate that the application must not see again. */
  onMessage(f) {
    const r = this.#rooms.get(f.room);
    if (!r || f.id == null) return true;
    const id = String(f.id);
    if (r.seen.has(id)) return false;
    remember(r.seen, id, this.#o.seenIdsPerRoom);
    r.lastId = id;
    const entry = f.client_id === void 0 ? void 0 : this.outbox.byRef(f.client_id);
    if (entry?.room === f.room) {
      this.claim(f.room, id);
      this.outbox.settle(entry, { id, ts: f.ts });
    } else if (f.client_id === void 0 && f.from?.kind === "user" && f.from.id === this.#host.user && !this.outbox.isAcked(id)) {
      r.unclaimed.push(f);
      if (r.unclaimed.length > UNCLAIMED_MAX) r.unclaimed.shift();
    }
    if (id === r.replayUntil) this.#replayDone(f.room);
    return true;
  }
  onAck(f) {
    const entry = f.ref == null ? void 0 : this.outbox.byRef(String(f.ref));
    if (!entry) return;
    this.claim(entry.room, f.id);
    this.outbox.settle(entry, { id: f.id, ts: f.ts });
  }
  onError(f) {
    if (f.ref == null) return;
    const ref2 = String(f.ref);
    const error = new ChatError(f.code ?? "internal", f.message, { frame: f });
    const entry = this.outbox.byRef(ref2);
    if (entry) this.outbox.fail(entry, error);
    for (const [room, r] of this.#rooms) {
      if (r.joinRef === ref2) this.drop(room, error);
    }
  }
  onBotStatus(f) {
    const r = this.#rooms.get(f.bot);
    if (r?.bot) r.bot = { ...r.bot, status: f.status, error: f.error ?? null };
  }
  /** Message `id` is ours: no longer a candidate for reconciling an unacked send. */
  claim(room, id) {
    this.outbox.claim(String(id));
    const r = this.#rooms.get(room);
    if (r) r.unclaimed = r.unclaimed.filter((m) => String(m.id) !== String(id));
  }
  // Messages that went out on an earlier connection but got no ack may have been stored. Each is sent
  // with its ref as `client_id`: a server that stores client ids returns it on the stored copy
  // (settled in onMessage) and answers a resend with the first ack, so resending is safe. For copies
  // without a client id (an older server), match our own messages that no ack claimed (same sender,
  // same text; seen live or replayed after `since`), oldest first, and resend only the unmatched ones.
  reconcile(room) {
    const r = this.#rooms.get(room);
    if (!r) return;
    for (const entry of this.outbox.of(room)) {
      if (entry.sentOn === 0 || entry.sentOn === this.#host.generation || entry.posting) continue;
      const m = r.unclaimed.find((u) => u.text === entry.text);
      if (!m) continue;
      this.claim(room, m.id);
      this.outbox.settle(entry, { id: m.id, ts: m.ts });
    }
  }
  #replayDone(room) {
    const r = this.#rooms.get(room);
    if (!r) return;
    clearTimeout(r.replayTimer);
    Object.assign(r, { replayUntil: null, replayTimer: void 0 });
    this.reconcile(room);
    this.flush(room);
  }
  /** Write the room's queued messages to the socket, in order, once it is joined and replayed. */
  flush(room) {
    if (this.#host.fallback) {
      this.#host.wakePoll();
      return;
    }
    const r = this.#rooms.get(room);
    if (!this.#host.live || !r?.joined || r.replayUntil !== null) return;
    const generation = this.#host.generation;
    for (const entry of this.outbox.of(room)) {
      if (entry.sentOn === generation || entry.posting) continue;
      const frame = { type: "message", room, text: entry.text, ref: entry.ref, client_id: entry.ref };
      if (!this.#host.send(frame)) return;
      entry.sentOn = generation;
    }
  }
  /**
   * Fetch what the room got after our position over HTTP and deliver it as `message` events.
   * `current()` tells whether the answers still matter when they arrive; false when they did not.
   */
  async catchUp(room, r, current, pages = 5) {
    for (let page = 0; page < pages; page++) {
      const query = r.lastId === null ? { limit: HISTORY_PAGE } : { since: r.lastId, limit: HISTORY_PAGE };
      const res = await this.#host.history(room, query);
      if (!current() || this.#rooms.get(room) !== r) return false;
      const messages = res.messages ?? [];
      for (const m of messages) {
        const frame = { ...m, type: "message", room };
        if (this.onMessage(frame)) this.#host.emit("message", frame);
      }
      if (res.last_id != null && r.lastId === null) r.lastId = String(res.last_id);
      if (messages.length < HISTORY_PAGE) break;
    }
    return true;
  }
};
function newRoom() {
  return {
    lastId: null,
    seen: /* @__PURE__ */ new Set(),
    joined: false,
    joinRef: null,
    since: null,
    replayUntil: null,
    replayTimer: void 0,
    unclaimed: [],
    waiters: [],
    bot: null,
    joinedFrame: null,
    wasJoined: false
  };
}
function settleWaiters(r, error, value) {
  const waiters = r.waiters;
  r.waiters = [];
  for (const w of waiters) {
    if (error) w.reject(error);
    else if (value) w.resolve(value);
  }
}

// src/fallback.ts
var Poller = class {
  #rooms;
  #http;
  #host;
  #intervalMs;
  #pagesPerTick;
  #timers = new Timers();
  #polling = false;
  constructor(rooms, http, host, intervalMs, pagesPerTick) {
    this.#rooms = rooms;
    this.#http = http;
    this.#host = host;
    this.#intervalMs = intervalMs;
    this.#pagesPerTick = pagesPerTick;
  }
  /** Poll now (unless a round is in flight), then every interval while the fallback lasts. */
  wake() {
    if (this.#polling || !this.#host.active) return;
    this.#polling = true;
    this.#timers.clear("poll");
    void this.#pollAll().finally(() => {
      this.#polling = false;
      if (this.#host.active) this.#timers.set("poll", () => this.wake(), this.#intervalMs);
    });
  }
  /** Stop polling; a round still in flight sees the state change and stops. */
  stop() {
    this.#timers.clearAll();
  }
  async #pollAll() {
    for (const [room, r] of this.#rooms.entries()) {
      if (!this.#host.active) return;
      try {
        await this.#pollRoom(room, r);
        await this.#postQueued(room);
      } catch (err) {
        this.#failed(room, err);
      }
    }
  }
  #failed(room, err) {
    if (err.code === "forbidden" || err.code === "not_found") this.#rooms.drop(room, err);
    if (err.status === 401) {
      this.#host.unauthorized();
      return;
    }
    if (!err.network) this.#host.emit("error", { type: "error", code: err.code, message: err.message, room });
  }
  async #pollRoom(room, r) {
    const bot2 = await this.#http.getBot(room);
    if (!this.#host.active) return;
    const changed = !r.bot || r.bot.status !== bot2.status || (r.bot.error ?? null) !== (bot2.error ?? null);
    r.bot = { id: bot2.id, name: bot2.name, kind: bot2.kind, status: bot2.status, error: bot2.error ?? null };
    if (r.waiters.length) {
      const joined = {
        type: "joined",
        room,
        bot: r.bot,
        members: [],
        member_count: null,
        last_id: r.lastId,
        recovered: r.lastId !== null,
        fallback: true
      };
      this.#host.emit("joined", joined);
      settleWaiters(r, null, joined);
    } else if (changed) {
      this.#host.emit("bot_status", { type: "bot_status", bot: room, status: bot2.status, error: bot2.error ?? null });
    }
    if (await this.#rooms.catchUp(room, r, () => this.#host.active, this.#pagesPerTick)) this.#rooms.reconcile(room);
  }
  // In order, one at a time: a failure leaves the rest queued for the next tick.
  async #postQueued(room) {
    const outbox = this.#rooms.outbox;
    for (const entry of outbox.of(room)) {
      if (!this.#host.active || !outbox.has(entry)) return;
      entry.posting = true;
      try {
        const stored = await this.#http.postMessage(room, entry.text, entry.ref);
        this.#rooms.claim(room, stored.id);
        outbox.settle(entry, { id: stored.id, ts: stored.ts });
      } catch (err) {
        const e = err;
        if (e.network || e.status === 429 || (e.status ?? 0) >= 500) {
          entry.sentOn = -1;
          return;
        }
        outbox.fail(entry, e);
      } finally {
        entry.posting = false;
      }
    }
  }
};

// src/http.ts
var HttpApi = class {
  #base;
  #fetch;
  #auth;
  constructor(base, fetchFn, auth) {
    this.#base = base;
    this.#fetch = fetchFn;
    this.#auth = auth;
  }
  listBots() {
    return this.call("GET", "/api/bots");
  }
  getBot(bot2) {
    return this.call("GET", `/api/bots/${encodeURIComponent(bot2)}`);
  }
  createBot({ name, kind = "echo", config }) {
    return this.call("POST", "/api/bots", config === void 0 ? { name, kind } : { name, kind, config });
  }
  deleteBot(bot2) {
    return this.call("DELETE", `/api/bots/${encodeURIComponent(bot2)}`);
  }
  addMember(bot2, user) {
    return this.call("PUT", `/api/bots/${encodeURIComponent(bot2)}/members/${encodeURIComponent(user)}`);
  }
  removeMember(bot2, user) {
    return this.call("DELETE", `/api/bots/${encodeURIComponent(bot2)}/members/${encodeURIComponent(user)}`);
  }
  botCommand(bot2, action) {
    return this.call("POST", `/api/bots/${encodeURIComponent(bot2)}/${action}`, {});
  }
  /** Stop the bot's reply to a user message: 202 {room, message}. */
  cancel(room, message2) {
    return this.call("POST", `/api/bots/${encodeURIComponent(room)}/messages/${encodeURIComponent(message2)}/cancel`, {});
  }
  /** Store a message; with `clientId`, a repeat of the same POST stores nothing and answers the first one's id. */
  postMessage(room, text, clientId) {
    const body = clientId === void 0 ? { text } : { text, client_id: clientId };
    return this.call("POST", `/api/bots/${encodeURIComponent(room)}/messages`, body);
  }
  /** A room's history, oldest first. */
  history(room, { since, limit } = {}) {
    const query = new URLSearchParams();
    if (since != null) query.set("since", since);
    if (limit != null) query.set("limit", String(limit));
    const qs = query.toString() ? `?${query}` : "";
    return this.call("GET", `/api/bots/${encodeURIComponent(room)}/messages${qs}`);
  }
  /** A JSON request with the token; errors become ChatErrors. One refresh and retry after a 401. */
  async call(method, path, body, retryAuth = true) {
    const token = await this.#auth.current();
    const headers = {};
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const init = { method, headers };
    if (body !== void 0) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await this.#fetch(this.#base + path, init);
    } catch (err) {
      throw new ChatError("unavailable", "network error", { network: true, cause: err });
    }
    if (res.status === 401 && retryAuth && this.#auth.refresh) {
      await this.#auth.refresh();
      return this.call(method, path, body, false);
    }
    return answer(res);
  }
};
async function answer(res) {
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = data ?? {};
    const code = typeof err.error === "string" ? err.error : `http_${res.status}`;
    const message2 = typeof err.message === "string" ? err.message : res.statusText;
    throw new ChatError(code, message2, { status: res.status });
  }
  return data;
}
async function devToken(base, user, fetchFn = globalThis.fetch) {
  const res = await fetchFn(`${base.replace(/\/+$/, "")}/api/dev/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user })
  });
  return answer(res);
}

// src/tokens.ts
var RETRY_MS = 5e3;
var TokenKeeper = class {
  #getToken;
  #refresher;
  #leadMs;
  #owner;
  #timers = new Timers();
  #token;
  #refreshing = null;
  constructor(options, owner) {
    if (!options.token && !options.getToken) throw new TypeError("ChatClient needs a token or a getToken callback");
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    this.#refresher = options.onTokenRefresh ?? options.getToken ?? null;
    this.#leadMs = options.refreshLeadMs;
    this.#owner = owner;
  }
  get canRefresh() {
    return this.#refresher !== null;
  }
  /** The token as it is now, without asking anyone; used as the key of shared clients. */
  get token() {
    return this.#token;
  }
  /** A usable token: asks `getToken` the first time, refreshes an expired one. */
  async current() {
    if (this.#getToken && !this.#token) this.#token = await this.#getToken();
    if (isExpired(this.#token)) {
      if (!this.#refresher) throw new ChatError("token_expired", "the token has expired");
      await this.refresh();
    }
    return this.#token;
  }
  /** Ask for a new token; concurrent callers share one refresh. Rejects with `token_expired`. */
  refresh() {
    this.#refreshing ??= (async () => {
      try {
        if (!this.#refresher) throw new ChatError("token_expired", "no way to refresh the token");
        const token = await this.#refresher();
        if (!token || isExpired(token)) throw new ChatError("token_expired", "the refreshed token is already expired");
        this.#token = token;
        this.#owner.refreshed(token);
        return token;
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }
  /** Plan the next refresh: `refreshLeadMs` before exp, or halfway for short-lived tokens. */
  schedule() {
    this.#timers.clear("refresh");
    const exp = tokenExpMs(this.#token);
    if (!this.#refresher || exp === null) return;
    const ttl = exp - Date.now();
    const delay = ttl > 2 * this.#leadMs ? ttl - this.#leadMs : Math.max(ttl / 2, 1e3);
    this.#timers.set("refresh", () => void this.#scheduledRefresh(exp), delay);
  }
  cancel() {
    this.#timers.clearAll();
  }
  async #scheduledRefresh(exp) {
    try {
      await this.refresh();
    } catch (err) {
      const message2 = err instanceof Error ? err.message : String(err);
      this.#owner.failed(new ChatError("token_expired", message2));
      if (Date.now() < exp) this.#timers.set("refresh", () => this.schedule(), RETRY_MS);
    }
  }
};

// src/transport.ts
var OPEN = 1;
var Transport = class {
  #o;
  #owner;
  #timers = new Timers();
  #requests = /* @__PURE__ */ new Map();
  // Refs double as message client ids, so they must not repeat across page loads: 52 random bits.
  #refPrefix = Math.floor(Math.random() * 2 ** 52).toString(36);
  #refCount = 0;
  #ws = null;
  #active = false;
  // between start() and stop()
  #generation = 0;
  // of the current socket: handlers of older sockets do nothing
  #welcomed = false;
  #openedAt = 0;
  #lastFrameAt = 0;
  #failures = 0;
  // consecutive attempts that never reached `welcome`
  #attempt = 0;
  // backoff exponent
  #serverDelayMs = null;
  // from a `reconnect` frame: replaces the backoff once
  constructor(options, owner) {
    this.#o = options;
    this.#owner = owner;
  }
  /** True while a socket that reached `welcome` is open. */
  get live() {
    return this.#welcomed;
  }
  /** Changes whenever a socket is opened or lost. */
  get generation() {
    return this.#generation;
  }
  /** Consecutive attempts that never reached `welcome`. */
  get failures() {
    return this.#failures;
  }
  start() {
    this.#active = true;
    this.#failures = 0;
    this.#attempt = 0;
    void this.#open();
  }
  /** Close for good; pending requests are rejected with `error`. */
  stop(error) {
    this.#active = false;
    const ws = this.#ws;
    this.#generation++;
    this.#ws = null;
    this.#welcomed = false;
    this.#timers.clearAll();
    if (ws) closeQuietly(ws, 1e3);
    this.#rejectRequests(error);
  }
  /** Count a failed attempt that never got as far as a socket (no token, for instance). */
  countFailure() {
    this.#failures++;
  }
  /** Open a new socket after `delayMs`, or after the server's delay, or after the backoff. */
  reconnectAfter(delayMs) {
    let delay = delayMs;
    if (delay === void 0 && this.#serverDelayMs !== null) delay = (this.#o.random ?? Math.random)() * this.#serverDelayMs;
    delay ??= backoffDelay(this.#attempt++, this.#o.backoffBaseMs, this.#o.backoffCapMs, this.#o.random);
    this.#serverDelayMs = null;
    this.#timers.set("reconnect", () => void this.#open(), delay);
  }
  /** Abandon the socket without waiting for its close handshake (it may be dead). */
  drop() {
    const ws = this.#ws;
    if (!ws) return;
    this.#gone(this.#generation, 1006);
    closeQuietly(ws);
  }
  /** A fresh `ref` for a client frame. */
  ref() {
    return `${this.#refPrefix}-${++this.#refCount}`;
  }
  /** Send a frame if the socket is open; false when it is not. */
  send(frame) {
    if (!this.#ws || this.#ws.readyState !== OPEN) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }
  /** Send a frame with a new `ref`; resolves with the answer carrying it, rejects on an `error` answer. */
  request(frame) {
    return new Promise((resolve, reject) => {
      const ref2 = this.ref();
      if (!this.send({ ...frame, ref: ref2 })) {
        reject(new ChatError("unavailable", "not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.#requests.delete(ref2);
        reject(new ChatError("unavailable", `no answer to ${frame.type}`));
      }, this.#o.requestTimeoutMs);
      this.#requests.set(ref2, { resolve, reject, timer });
    });
  }
  async #open() {
    this.#timers.clear("reconnect");
    const generation = ++this.#generation;
    let token;
    try {
      token = await this.#owner.token();
    } catch (err) {
      if (generation === this.#generation && this.#active) this.#owner.tokenFailed(err);
      return;
    }
    if (generation !== this.#generation || !this.#active) return;
    if (!token) {
      this.#owner.tokenFailed(null);
      return;
    }
    const url = new URL(this.#o.url);
    url.searchParams.set("token", token);
    let ws;
    try {
      ws = new this.#o.WebSocket(url.href);
    } catch {
      this.#gone(generation, 1006);
      return;
    }
    this.#ws = ws;
    ws.onmessage = (event) => {
      if (generation === this.#generation) this.#receive(event.data);
    };
    ws.onclose = (event) => this.#gone(generation, event.code);
    this.#timers.set("handshake", () => this.#dropIf(generation), this.#o.handshakeTimeoutMs);
  }
  #dropIf(generation) {
    if (generation === this.#generation) this.drop();
  }
  #gone(generation, code) {
    if (generation !== this.#generation) return;
    this.#generation++;
    this.#ws = null;
    this.#timers.clear("handshake");
    this.#timers.clear("heartbeat");
    const welcomed = this.#welcomed;
    this.#welcomed = false;
    this.#rejectRequests(new ChatError("unavailable", "connection lost"));
    if (!this.#active) return;
    if (!welcomed) this.#failures++;
    else if (Date.now() - this.#openedAt >= this.#o.stableAfterMs) this.#attempt = 0;
    this.#owner.down(code, welcomed);
  }
  #receive(data) {
    let frame;
    try {
      frame = JSON.parse(String(data));
    } catch {
      return;
    }
    if (typeof frame !== "object" || frame === null || typeof frame.type !== "string") return;
    this.#lastFrameAt = Date.now();
    if (frame.type === "welcome") {
      this.#timers.clear("handshake");
      this.#welcomed = true;
      this.#failures = 0;
      this.#openedAt = Date.now();
      this.#startHeartbeat(Number(frame.heartbeat) || 25);
    } else if (frame.type === "reconnect") {
      this.#serverDelayMs = Math.max(0, Number(frame.delay_ms) || 0);
    }
    const ref2 = "ref" in frame ? frame.ref : void 0;
    if (ref2 != null && frame.type !== "ack") this.#settle(String(ref2), frame);
    this.#owner.frame(frame);
  }
  #settle(ref2, frame) {
    const pending = this.#requests.get(ref2);
    if (!pending) return;
    this.#requests.delete(ref2);
    clearTimeout(pending.timer);
    if (frame.type === "error") pending.reject(new ChatError(frame.code ?? "internal", frame.message, { frame }));
    else pending.resolve(frame);
  }
  #rejectRequests(error) {
    for (const [ref2, pending] of this.#requests) {
      this.#requests.delete(ref2);
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }
  // Our own ping keeps the socket honest: a connection that stays silent for two periods is dead.
  #startHeartbeat(seconds) {
    const period = seconds * 1e3;
    const generation = this.#generation;
    const beat = () => {
      if (generation !== this.#generation) return;
      if (Date.now() - this.#lastFrameAt > 2 * period) {
        this.drop();
        return;
      }
      this.send({ type: "ping" });
      this.#timers.set("heartbeat", beat, period);
    };
    this.#timers.set("heartbeat", beat, period);
  }
};
function closeQuietly(ws, code) {
  try {
    ws.close(code);
  } catch {
  }
}

// src/typing.ts
var TypingThrottle = class {
  #rooms = /* @__PURE__ */ new Map();
  #throttleMs;
  #idleMs;
  /** Sends the frame when the room is joined on a live socket; false when it could not. */
  #send;
  constructor(throttleMs, idleMs, send) {
    this.#throttleMs = throttleMs;
    this.#idleMs = idleMs;
    this.#send = send;
  }
  report(room, state) {
    let t = this.#rooms.get(room);
    if (!t) this.#rooms.set(room, t = { sent: false, at: 0, idle: void 0 });
    clearTimeout(t.idle);
    if (state) {
      t.idle = setTimeout(() => this.report(room, false), this.#idleMs);
      if (t.sent && Date.now() - t.at < this.#throttleMs) return;
      t.at = Date.now();
      t.sent = this.#send(room, true);
    } else if (t.sent) {
      t.sent = false;
      this.#send(room, false);
    }
  }
  clear() {
    for (const t of this.#rooms.values()) clearTimeout(t.idle);
    this.#rooms.clear();
  }
};

// src/client.ts
var DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 3e4,
  fallbackAfter: 3,
  pollIntervalMs: 2e3,
  pollPagesPerTick: 5,
  typingThrottleMs: 2e3,
  typingIdleMs: 3e3,
  refreshLeadMs: 3e4,
  replayWaitMs: 5e3,
  handshakeTimeoutMs: 1e4,
  requestTimeoutMs: 1e4,
  stableAfterMs: 1e4,
  maxFrameBytes: 65536,
  seenIdsPerRoom: 2e3
});
var ChatClient = class extends ChatEvents {
  /** The HTTP API with this client's token. */
  api;
  #o;
  #tokens;
  #transport;
  #rooms;
  #poller;
  #typing;
  #state = "closed";
  #closeReason = null;
  #welcome = null;
  #authRetries = 0;
  constructor(options = {}) {
    super();
    const { url, token, getToken, onTokenRefresh, httpBase, WebSocket: WS, fetch: fetchFn, ...tuning } = options;
    const o = { ...DEFAULTS };
    for (const [key, value] of Object.entries(tuning)) if (value !== void 0) Object.assign(o, { [key]: value });
    this.#o = o;
    this.#tokens = new TokenKeeper(
      { token: token ?? null, getToken: getToken ?? null, onTokenRefresh: onTokenRefresh ?? null, refreshLeadMs: o.refreshLeadMs },
      {
        refreshed: (fresh) => this.#tokenRefreshed(fresh),
        failed: (err) => this.emit("error", { type: "error", code: err.code, message: err.message })
      }
    );
    const urls = resolveUrls(url, httpBase);
    const socketClass = WS ?? globalThis.WebSocket;
    if (!socketClass) throw new TypeError("no WebSocket in this runtime: pass one in the options");
    this.api = new HttpApi(urls.httpBase, fetchFn ?? globalThis.fetch.bind(globalThis), {
      current: () => this.#tokens.current(),
      refresh: this.#tokens.canRefresh ? () => this.#tokens.refresh() : null
    });
    this.#transport = new Transport(
      { ...o, url: urls.wsUrl, WebSocket: socketClass },
      {
        token: () => this.#tokens.current(),
        tokenFailed: (err) => this.#tokenFailed(err),
        frame: (frame) => this.#onFrame(frame),
        down: (code) => this.#socketDown(code)
      }
    );
    const self = this;
    this.#rooms = new RoomBook(
      {
        get live() {
          return self.#transport.live;
        },
        get generation() {
          return self.#transport.generation;
        },
        get fallback() {
          return self.#state === "fallback";
        },
        get user() {
          return self.user ?? subject(self.#tokens.token);
        },
        send: (frame) => this.#transport.send(frame),
        request: (frame) => this.#transport.request(frame),
        ref: () => this.#transport.ref(),
        emit: (type, detail) => this.emit(type, detail),
        history: (room, query) => this.api.history(room, query),
        wakePoll: () => this.#poller.wake()
      },
      o
    );
    this.#poller = new Poller(
      this.#rooms,
      this.api,
      {
        get active() {
          return self.#state === "fallback";
        },
        emit: (type, detail) => this.emit(type, detail),
        unauthorized: () => this.#shutdown("unauthorized", "token refused by the HTTP API")
      },
      o.pollIntervalMs,
      o.pollPagesPerTick
    );
    this.#typing = new TypingThrottle(o.typingThrottleMs, o.typingIdleMs, (room, state) => {
      const r = this.#rooms.get(room);
      return Boolean(this.#transport.live && r?.joined && this.#transport.send({ type: "typing", room, state }));
    });
  }
  /** A `state` event ({state, previous, reason}) fires on every change. */
  get state() {
    return this.#state;
  }
  /** Why the client stopped for good, or null while it runs. */
  get closeReason() {
    return this.#closeReason;
  }
  /** From the last `welcome`: the user id, the connection's session id and the node serving it. */
  get user() {
    return this.#welcome?.user ?? null;
  }
  get session() {
    return this.#welcome?.session ?? null;
  }
  get node() {
    return this.#welcome?.node ?? null;
  }
  /** The token in use now (it changes when refreshed). */
  get token() {
    return this.#tokens.token;
  }
  /** The newest message id seen in `room`, or null. */
  lastId(room) {
    return this.#rooms.get(room)?.lastId ?? null;
  }
  connect() {
    if (this.#state !== "closed") return;
    this.#closeReason = null;
    this.#setState("connecting");
    this.#transport.start();
  }
  /** Stop for good: queued messages and pending joins are rejected. */
  close() {
    this.#shutdown("closed", "closed by the application");
  }
  /** Join a room (a bot's chat). `since` resumes after a known message id. Resolves with `joined`. */
  join(room, { since } = {}) {
    return this.#rooms.join(room, since);
  }
  /** Leave a room; messages still queued for it are rejected. */
  leave(room) {
    return this.#rooms.leave(room);
  }
  /** Send a text to a joined room. Resolves with {id, ts} once the server stored it. */
  send(room, text) {
    if (this.#state === "closed" && this.#closeReason) {
      return Promise.reject(new ChatError("unavailable", "client closed"));
    }
    if (!this.#rooms.get(room)) return Promise.reject(new ChatError("bad_request", "join the room before sending"));
    if (frameBytes({ type: "message", room, text, ref: "x".repeat(16), client_id: "x".repeat(16) }) > this.#o.maxFrameBytes) {
      return Promise.reject(new ChatError("too_large", "message is larger than the frame limit"));
    }
    this.typing(room, false);
    return this.#rooms.send(room, text);
  }
  /** Report typing: call with `true` on every keystroke, `false` when the input is cleared. */
  typing(room, state) {
    this.#typing.report(room, state);
  }
  /**
   * Stop the bot's reply to the user message `messageId`, over the socket or, when it is down (or
   * goes down before the answer), over HTTP. Resolves with `cancel_ok`; the reply then ends with
   * `status cancelled`, and the text so far is stored as a cancelled reply. Rejects with `conflict`
   * when the reply already ended, `forbidden` for a user who is neither its sender, the bot's owner
   * nor an admin. Cancelling twice is harmless: the second one gets `conflict` or the same answer.
   */
  async cancel(room, messageId) {
    if (this.#transport.live) {
      try {
        const reply = await this.#transport.request({ type: "cancel", room, message: messageId });
        if (reply.type === "cancel_ok") return reply;
      } catch (err) {
        if (!(err instanceof ChatError) || err.frame || err.code !== "unavailable") throw err;
      }
    }
    const answer2 = await this.api.cancel(room, messageId);
    return { type: "cancel_ok", room: answer2.room, message: answer2.message };
  }
  startBot(bot2) {
    return this.#botCommand(bot2, "start");
  }
  stopBot(bot2) {
    return this.#botCommand(bot2, "stop");
  }
  listBots() {
    return this.api.listBots();
  }
  getBot(bot2) {
    return this.api.getBot(bot2);
  }
  createBot(bot2) {
    return this.api.createBot(bot2);
  }
  deleteBot(bot2) {
    return this.api.deleteBot(bot2);
  }
  /** A room's history, oldest first: {messages, last_id}. */
  history(room, query = {}) {
    return this.api.history(room, query);
  }
  async #botCommand(bot2, action) {
    if (this.#transport.live) {
      const reply = await this.#transport.request({ type: action === "start" ? "bot.start" : "bot.stop", bot: bot2 });
      if (reply.type === "bot_status") return { bot: reply.bot, status: reply.status, error: reply.error ?? null };
    }
    const b = await this.api.botCommand(bot2, action);
    return { bot: b.id, status: b.status, error: b.error ?? null };
  }
  // ---- what the transport reports ----------------------------------------------------------------
  #onFrame(frame) {
    switch (frame.type) {
      case "welcome":
        this.#onWelcome(frame);
        break;
      case "joined":
        this.#rooms.onJoined(frame);
        break;
      case "message":
        if (!this.#rooms.onMessage(frame)) return;
        break;
      case "ack":
        this.#rooms.onAck(frame);
        break;
      case "error":
        this.#rooms.onError(frame);
        break;
      case "auth_ok":
        this.#authRetries = 0;
        this.#tokens.schedule();
        break;
      case "bot_status":
        this.#rooms.onBotStatus(frame);
        break;
      default:
        break;
    }
    this.emit(frame.type, frame);
  }
  #onWelcome(frame) {
    this.#authRetries = 0;
    this.#welcome = frame;
    this.#poller.stop();
    this.#setState("open");
    this.#tokens.schedule();
    this.#rooms.rejoinAll();
  }
  #socketDown(code) {
    this.#rooms.connectionLost();
    if (this.#state === "closed") return;
    if (code === 4003) this.#shutdown("forbidden", "the server refused this connection (4003)");
    else if (code === 4001) void this.#reauthenticate();
    else this.#scheduleReconnect();
  }
  #scheduleReconnect(delayMs) {
    if (this.#state !== "fallback") {
      if (this.#transport.failures >= this.#o.fallbackAfter) {
        this.#setState("fallback");
        this.#poller.wake();
      } else {
        this.#setState("reconnecting");
      }
    }
    this.#transport.reconnectAfter(delayMs);
  }
  // 4001: the token expired or was refused. Try one refreshed token, then give up.
  async #reauthenticate() {
    if (!this.#tokens.canRefresh || this.#authRetries >= 1) {
      this.#shutdown("unauthorized", "token expired or refused");
      return;
    }
    this.#authRetries++;
    this.#setState("reconnecting");
    try {
      await this.#tokens.refresh();
    } catch {
      this.#shutdown("unauthorized", "token refresh failed");
      return;
    }
    if (this.#state !== "closed") this.#scheduleReconnect(0);
  }
  #tokenFailed(err) {
    if (err === null) {
      this.#shutdown("unauthorized", "no token available");
    } else if (err instanceof ChatError && err.code === "token_expired") {
      this.#shutdown("unauthorized", err.message);
    } else {
      this.#transport.countFailure();
      this.#scheduleReconnect();
    }
  }
  #tokenRefreshed(token) {
    if (!this.#transport.live) return;
    this.#transport.request({ type: "auth", token }).catch((err) => this.emit("error", { type: "error", code: err.code, message: err.message }));
    this.#tokens.schedule();
  }
  #shutdown(reason, message2) {
    if (this.#state === "closed" && this.#closeReason) return;
    this.#closeReason = reason;
    const error = new ChatError(reason === "closed" ? "unavailable" : reason, message2);
    this.#transport.stop(error);
    this.#poller.stop();
    this.#tokens.cancel();
    this.#typing.clear();
    this.#rooms.shutdown(error);
    this.#setState("closed", reason);
    if (reason !== "closed") this.emit("error", { type: "error", code: reason, message: message2 });
  }
  #setState(state, reason = null) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.emit("state", { state, previous, reason });
  }
};
function subject(token) {
  const sub = decodeJwtPayload(token)?.["sub"];
  return typeof sub === "string" ? sub : null;
}

// src/store.ts
var TYPING_TTL_MS = 8e3;
function emptyRoom(room) {
  return Object.freeze({
    room,
    status: "idle",
    error: null,
    bot: null,
    messages: [],
    pending: [],
    replies: [],
    progress: {},
    typing: [],
    members: [],
    memberCount: null,
    fallback: false
  });
}
var ChatStore = class {
  client;
  #rooms = /* @__PURE__ */ new Map();
  #ids = /* @__PURE__ */ new Map();
  // message ids held per room
  #opened = /* @__PURE__ */ new Map();
  // open() calls not yet released, per room
  #typingTimers = /* @__PURE__ */ new Map();
  #listeners = /* @__PURE__ */ new Set();
  #off;
  #connection;
  #keys = 0;
  constructor(client) {
    this.client = client;
    this.#connection = Object.freeze({ state: client.state, user: this.#user(), reason: client.closeReason });
    const on = client.on.bind(client);
    this.#off = [
      on("state", ({ state, reason }) => this.#onState(state, reason)),
      on("welcome", (f) => this.#setConnection({ user: f.user })),
      on(
        "joined",
        (f) => this.#update(f.room, () => ({
          status: "joined",
          error: null,
          bot: f.bot,
          members: f.members,
          memberCount: f.member_count,
          fallback: "fallback" in f
        }))
      ),
      on("left", (f) => this.#update(f.room, () => ({ status: "left", typing: [], members: [] }))),
      on("message", (m) => this.addMessages(m.room, [m])),
      on(
        "delta",
        (d) => this.applyReply(d.room, { replyTo: d.reply_to, text: d.text, mode: "append", attempt: d.attempt, seq: d.seq })
      ),
      on(
        "stream",
        (s) => this.applyReply(s.room, { replyTo: s.reply_to, text: s.text, mode: "replace", attempt: s.attempt, seq: s.seq })
      ),
      on("status", (s) => this.#onStatus(s.room, s.message_id, s.state, s.detail)),
      on("typing", (t) => this.#onTyping(t.room, t.from, t.state)),
      on("presence", (p) => this.#onPresence(p.room, p.user, p.event)),
      on(
        "bot_status",
        (b) => this.#update(b.bot, (v) => v.bot ? { bot: { ...v.bot, status: b.status, error: b.error ?? null } } : {})
      ),
      on("resync", ({ room }) => void this.#reload(room))
    ];
  }
  subscribe = (listener) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };
  /** The room's current view; the same object until the room changes. */
  room(room) {
    let view = this.#rooms.get(room);
    if (!view) {
      view = emptyRoom(room);
      this.#rooms.set(room, view);
    }
    return view;
  }
  connection = () => this.#connection;
  /** Load the room's newest history, then join after it. Returns a release function (refcounted). */
  open(room, { historyLimit = 50 } = {}) {
    const count = (this.#opened.get(room) ?? 0) + 1;
    this.#opened.set(room, count);
    if (count === 1 && this.room(room).status !== "joined") void this.#join(room, historyLimit);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#opened.set(room, (this.#opened.get(room) ?? 1) - 1);
      setTimeout(() => {
        if ((this.#opened.get(room) ?? 0) > 0) return;
        this.#opened.delete(room);
        this.#update(room, () => ({ status: "left", typing: [] }));
        void this.client.leave(room);
      }, 0);
    };
  }
  async #join(room, historyLimit) {
    this.#update(room, () => ({ status: "joining", error: null }));
    try {
      const page = historyLimit > 0 ? await this.client.history(room, { limit: historyLimit }) : null;
      if (page) this.addMessages(room, page.messages);
      const since = page?.last_id ?? this.client.lastId(room);
      await this.client.join(room, since != null ? { since } : {});
    } catch (err) {
      this.#update(room, () => ({ status: "error", error: err }));
    }
  }
  async #reload(room) {
    const page = await this.client.history(room, { limit: Math.max(50, this.room(room).messages.length) });
    this.#ids.set(room, /* @__PURE__ */ new Set());
    this.#update(room, () => ({ messages: [] }));
    this.addMessages(room, page.messages);
  }
  /** Send a text; it shows as pending until its stored copy arrives. */
  async send(room, text) {
    const key = `p${++this.#keys}`;
    this.#update(room, (v) => ({ pending: [...v.pending, { key, text, state: "sending" }] }));
    try {
      const stored = await this.client.send(room, text);
      this.#update(room, (v) => {
        if (this.#ids.get(room)?.has(stored.id)) return { pending: v.pending.filter((p) => p.key !== key) };
        return { pending: v.pending.map((p) => p.key === key ? { ...p, id: stored.id } : p) };
      });
      return stored;
    } catch (err) {
      const error = err;
      this.#update(room, (v) => ({
        pending: v.pending.map((p) => p.key === key ? { ...p, state: "failed", error } : p)
      }));
      throw error;
    }
  }
  /** Start or stop the room's bot (over the socket, or over HTTP when it is down) and show the result. */
  async botCommand(room, action) {
    const before = this.room(room).bot;
    const result = await (action === "start" ? this.client.startBot(room) : this.client.stopBot(room));
    this.#update(
      room,
      (v) => v.bot && v.bot === before && v.bot.status !== result.status ? { bot: { ...v.bot, status: result.status, error: result.error } } : {}
    );
    return result;
  }
  /** Forget a failed pending message. */
  discard(room, key) {
    this.#update(room, (v) => ({ pending: v.pending.filter((p) => p.key !== key) }));
  }
  /** Add stored messages (live, replayed or fetched), each once, in the order given. */
  addMessages(room, messages) {
    let ids = this.#ids.get(room);
    if (!ids) this.#ids.set(room, ids = /* @__PURE__ */ new Set());
    const fresh = messages.filter((m) => !ids.has(m.id));
    if (!fresh.length) return;
    for (const m of fresh) ids.add(m.id);
    const freshIds = new Set(fresh.map((m) => m.id));
    const answered = new Set(fresh.map((m) => m.reply_to).filter((id) => id !== void 0));
    const queued = fresh.filter((m) => m.queued);
    this.#update(room, (v) => {
      const progress2 = { ...v.progress };
      for (const m of queued) progress2[m.id] ??= { state: "queued" };
      const authors = new Set(fresh.filter((m) => m.from.kind === "user").map((m) => m.from.id));
      return {
        messages: [...v.messages, ...fresh],
        pending: v.pending.filter((p) => p.id === void 0 || !freshIds.has(p.id)),
        replies: v.replies.filter((r) => !answered.has(r.replyTo)),
        typing: v.typing.filter((s) => s.kind !== "user" || !authors.has(s.id)),
        progress: progress2
      };
    });
  }
  /** A streamed reply changed (see ReplyChange). Ignored once the reply's final message is in. */
  applyReply(room, change) {
    if (this.#answered(room, change.replyTo)) return;
    this.#update(room, (v) => {
      const current = v.replies.find((r) => r.replyTo === change.replyTo);
      const next = nextReply(current, change);
      if (next === current) return {};
      const replies = current ? v.replies.map((r) => r === current ? next : r) : [...v.replies, next];
      return { replies };
    });
  }
  /**
   * Ask the bot to stop its reply to `messageId` (see ChatClient.cancel); the view follows the frames
   * that come back: the reply ends `cancelled` and its text so far arrives as a message with
   * `state: "cancelled"`.
   */
  cancel(room, messageId) {
    return this.client.cancel(room, messageId);
  }
  #answered(room, replyTo) {
    return this.room(room).messages.some((m) => m.reply_to === replyTo);
  }
  /** Stop listening to the client. */
  dispose() {
    for (const off of this.#off) off();
    for (const timer of this.#typingTimers.values()) clearTimeout(timer);
    this.#typingTimers.clear();
    this.#listeners.clear();
  }
  // The server's word once welcomed; before that (or in the HTTP fallback) the token's subject.
  #user() {
    const sub = decodeJwtPayload(this.client.token)?.["sub"];
    return this.client.user ?? (typeof sub === "string" ? sub : null);
  }
  #onState(state, reason) {
    this.#setConnection({ state, reason, user: this.#user() });
    if (state === "open") return;
    for (const room of this.#rooms.keys()) this.#update(room, (v) => v.typing.length ? { typing: [] } : {});
  }
  #onStatus(room, messageId, state, detail) {
    this.#update(room, (v) => {
      const progress2 = { ...v.progress, [messageId]: detail === void 0 ? { state } : { state, detail } };
      const stream = v.replies.find((r) => r.replyTo === messageId);
      if (!stream || state !== "failed" && state !== "cancelled") return { progress: progress2 };
      return { progress: progress2, replies: v.replies.map((r) => r === stream ? { ...r, state } : r) };
    });
  }
  #onTyping(room, from, state) {
    const key = `${room}\0${from.kind}\0${from.id}`;
    clearTimeout(this.#typingTimers.get(key));
    this.#typingTimers.delete(key);
    if (state) this.#typingTimers.set(key, setTimeout(() => this.#onTyping(room, from, false), TYPING_TTL_MS));
    this.#update(room, (v) => {
      const others = v.typing.filter((s) => s.kind !== from.kind || s.id !== from.id);
      if (!state && others.length === v.typing.length) return {};
      return { typing: state ? [...others, from] : others };
    });
  }
  #onPresence(room, user, event) {
    this.#update(room, (v) => {
      const had = v.members.includes(user);
      if (event === "join" && !had) {
        return { members: [...v.members, user].sort(), memberCount: v.memberCount === null ? null : v.memberCount + 1 };
      }
      if (event === "leave" && had) {
        const memberCount = v.memberCount === null ? null : Math.max(0, v.memberCount - 1);
        return { members: v.members.filter((m) => m !== user), memberCount };
      }
      return {};
    });
  }
  #setConnection(change) {
    this.#connection = Object.freeze({ ...this.#connection, ...change });
    this.#notify();
  }
  #update(room, change) {
    const view = this.room(room);
    const patch = change(view);
    if (!Object.keys(patch).length) return;
    this.#rooms.set(room, Object.freeze({ ...view, ...patch }));
    this.#notify();
  }
  #notify() {
    for (const listener of [...this.#listeners]) listener();
  }
};
function nextReply(current, change) {
  const attempt = change.attempt ?? null;
  const seq = change.seq ?? null;
  const fresh = { replyTo: change.replyTo, text: change.text, attempt, seq, state: change.state ?? "streaming" };
  if (!current || change.mode === "replace") return fresh;
  if (attempt !== null && current.attempt !== null) {
    if (attempt < current.attempt) return current;
    if (attempt > current.attempt) return fresh;
    if (seq !== null && current.seq !== null && seq <= current.seq) return current;
  }
  return { ...current, text: current.text + change.text, attempt: attempt ?? current.attempt, seq: seq ?? current.seq };
}

// src/validate.ts
var validate_exports = {};
__export(validate_exports, {
  SERVER_FRAMES: () => SERVER_FRAMES,
  SERVER_FRAME_TYPES: () => SERVER_FRAME_TYPES,
  arr: () => arr,
  bool: () => bool,
  bot: () => bot,
  botInfo: () => botInfo,
  checkServerFrame: () => checkServerFrame,
  historyPage: () => historyPage,
  int: () => int,
  isServerFrame: () => isServerFrame,
  lit: () => lit,
  message: () => message,
  nullable: () => nullable,
  num: () => num,
  obj: () => obj,
  oneOf: () => oneOf,
  opt: () => opt,
  problems: () => problems,
  record: () => record,
  ref: () => ref,
  sender: () => sender,
  str: () => str
});
function leaf(describe, test) {
  return {
    describe,
    check(value, path, ctx) {
      if (!test(value)) ctx.problems.push(`${path}: expected ${describe}, got ${JSON.stringify(value)}`);
    }
  };
}
var str = leaf("a string", (v) => typeof v === "string");
var num = leaf("a number", (v) => typeof v === "number" && Number.isFinite(v));
var int = leaf("an integer", (v) => Number.isSafeInteger(v));
var bool = leaf("a boolean", (v) => typeof v === "boolean");
var ref = leaf("a ref (string or integer)", (v) => typeof v === "string" || Number.isSafeInteger(v));
function lit(value) {
  return leaf(JSON.stringify(value), (v) => v === value);
}
function oneOf(...values) {
  return leaf(`one of ${values.join(", ")}`, (v) => values.includes(v));
}
function nullable(guard) {
  return {
    describe: `${guard.describe} or null`,
    check: (value, path, ctx) => {
      if (value !== null) guard.check(value, path, ctx);
    }
  };
}
function opt(guard) {
  return { ...guard, optional: true };
}
function arr(guard) {
  return {
    describe: `a list of ${guard.describe}`,
    check(value, path, ctx) {
      if (!Array.isArray(value)) {
        ctx.problems.push(`${path}: expected a list, got ${JSON.stringify(value)}`);
        return;
      }
      value.forEach((item, i) => guard.check(item, `${path}[${i}]`, ctx));
    }
  };
}
var record = leaf(
  "an object",
  (v) => typeof v === "object" && v !== null && !Array.isArray(v)
);
function obj(shape) {
  const entries = Object.entries(shape);
  const known = new Set(entries.map(([key]) => key));
  return {
    describe: "an object",
    keys: {
      required: entries.filter(([, g]) => !g.optional).map(([key]) => key),
      optional: entries.filter(([, g]) => g.optional).map(([key]) => key)
    },
    check(value, path, ctx) {
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        ctx.problems.push(`${path}: expected an object, got ${JSON.stringify(value)}`);
        return;
      }
      const record2 = value;
      for (const [key, guard] of entries) {
        if (!(key in record2)) {
          if (!guard.optional) ctx.problems.push(`${path}.${key}: missing`);
          continue;
        }
        guard.check(record2[key], `${path}.${key}`, ctx);
      }
      if (ctx.strict) {
        for (const key of Object.keys(record2)) {
          if (!known.has(key)) ctx.problems.push(`${path}.${key}: not in the client's types`);
        }
      }
    }
  };
}
var errorCode = oneOf(
  "bad_request",
  "unauthorized",
  "forbidden",
  "not_found",
  "conflict",
  "rate_limited",
  "too_large",
  "token_expired",
  "unavailable",
  "internal"
);
var botStatus = oneOf("starting", "running", "stopping", "stopped", "error");
var progress = oneOf("processing", "thinking", "executing", "done", "failed", "cancelled");
var sender = obj({ kind: oneOf("user", "bot"), id: str, name: opt(str) });
var botInfo = obj({
  id: str,
  name: str,
  kind: str,
  status: botStatus,
  error: nullable(str)
});
var message = obj({
  type: lit("message"),
  id: str,
  ts: int,
  room: str,
  from: sender,
  text: str,
  reply_to: opt(str),
  queued: opt(bool),
  client_id: opt(str),
  state: opt(lit("cancelled"))
});
var bot = obj({
  id: str,
  name: str,
  kind: str,
  status: botStatus,
  error: nullable(str),
  owner: str,
  config: record,
  created: int
});
var historyPage = obj({ messages: arr(message), last_id: nullable(str) });
var SERVER_FRAMES = {
  welcome: obj({
    type: lit("welcome"),
    protocol: int,
    session: str,
    user: str,
    node: str,
    heartbeat: num
  }),
  joined: obj({
    type: lit("joined"),
    room: str,
    bot: botInfo,
    members: arr(str),
    member_count: int,
    last_id: nullable(str),
    recovered: bool,
    ref: opt(ref)
  }),
  left: obj({ type: lit("left"), room: str, reason: opt(str), ref: opt(ref) }),
  ack: obj({ type: lit("ack"), id: str, ts: int, queued: opt(bool), ref: opt(ref) }),
  pong: obj({ type: lit("pong"), ref: opt(ref) }),
  auth_ok: obj({ type: lit("auth_ok"), exp: int, ref: opt(ref) }),
  bot_status: obj({
    type: lit("bot_status"),
    bot: str,
    status: botStatus,
    ts: opt(int),
    error: opt(nullable(str)),
    ref: opt(ref)
  }),
  error: obj({ type: lit("error"), code: errorCode, message: str, ref: opt(ref) }),
  reconnect: obj({ type: lit("reconnect"), delay_ms: int }),
  message,
  presence: obj({ type: lit("presence"), room: str, user: str, event: oneOf("join", "leave") }),
  typing: obj({ type: lit("typing"), room: str, from: sender, state: bool }),
  status: obj({
    type: lit("status"),
    room: str,
    message_id: str,
    state: progress,
    detail: opt(str)
  }),
  delta: obj({ type: lit("delta"), room: str, reply_to: str, text: str, attempt: int, seq: int }),
  stream: obj({ type: lit("stream"), room: str, reply_to: str, text: str, attempt: int, seq: int }),
  cancel_ok: obj({ type: lit("cancel_ok"), room: str, message: str, ref: opt(ref) })
};
var SERVER_FRAME_TYPES = Object.freeze(Object.keys(SERVER_FRAMES));
function problems(guard, value, options = {}) {
  const ctx = { strict: options.strict ?? false, problems: [] };
  guard.check(value, "$", ctx);
  return ctx.problems;
}
function checkServerFrame(value, options = {}) {
  const type = value?.type;
  if (typeof type !== "string" || !Object.hasOwn(SERVER_FRAMES, type)) {
    return [`$.type: not a server frame type: ${JSON.stringify(type)}`];
  }
  return problems(SERVER_FRAMES[type], value, options);
}
function isServerFrame(value) {
  return checkServerFrame(value).length === 0;
}
export {
  ChatClient,
  ChatError,
  ChatEvents,
  ChatStore,
  DEFAULTS,
  HttpApi,
  SERVER_FRAMES,
  SERVER_FRAME_TYPES,
  STATES,
  backoffDelay,
  checkServerFrame,
  decodeJwtPayload,
  devToken,
  validate_exports as guards,
  isServerFrame,
  nextReply,
  problems
};
