// ChatClient: a dependency-free client for the chat gateway (wire protocol v1).
//
// One WebSocket carries every joined room. The client reconnects by itself (exponential backoff
// with full jitter), resumes each room from the last message id it saw, queues messages sent while
// offline, refreshes its token before it expires, and falls back to the HTTP API (send by POST,
// receive by polling) when the WebSocket cannot be reached. Plain ES module: no build step.

const DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  fallbackAfter: 3, // consecutive failed WebSocket attempts before HTTP polling starts
  pollIntervalMs: 2_000,
  pollPagesPerTick: 5,
  typingThrottleMs: 2_000,
  typingIdleMs: 3_000,
  refreshLeadMs: 30_000,
  replayWaitMs: 5_000,
  handshakeTimeoutMs: 10_000,
  requestTimeoutMs: 10_000,
  stableAfterMs: 10_000, // a connection that lived this long resets the backoff
  maxFrameBytes: 65_536,
  seenIdsPerRoom: 2_000,
});

const UNCLAIMED_MAX = 50;

export const STATES = Object.freeze(["connecting", "open", "reconnecting", "fallback", "closed"]);

/** An error reported by the server (`code` from the protocol's list) or by the client itself. */
export class ChatError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = "ChatError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/** The JWT's payload as an object, or null; the signature is the server's business, not checked here. */
export function decodeJwtPayload(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")), (c) =>
      c.charCodeAt(0),
    );
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

/** Full-jitter backoff: a uniform random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  return random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

function tokenExpMs(token) {
  const exp = decodeJwtPayload(token)?.exp;
  return typeof exp === "number" ? exp * 1000 : null;
}

function isExpired(token) {
  const exp = tokenExpMs(token);
  return exp !== null && exp <= Date.now();
}

function userId(user) {
  return user && typeof user === "object" ? user.id : user;
}

function frameBytes(frame) {
  return new TextEncoder().encode(JSON.stringify(frame)).length;
}

// Keep a bounded set: the oldest ids fall out first (Sets iterate in insertion order).
function remember(set, value, cap) {
  set.add(value);
  if (set.size > cap) set.delete(set.values().next().value);
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

function newRoom() {
  // since: the position the current join asked for; replayUntil: the id that ends the replay;
  // unclaimed: our own messages seen in the room that no ack has claimed yet (see #reconcile).
  return { lastId: null, seen: new Set(), joined: false, joinRef: null, since: null, replayUntil: null,
    replayTimer: null, unclaimed: [], waiters: [], bot: null, joinedFrame: null, wasJoined: false };
}

export class ChatClient extends EventTarget {
  #o;
  #token;
  #getToken;
  #refresher;
  #WS;
  #fetch;
  #wsUrl;
  #httpBase;
  #state = "closed";
  #ws = null;
  #conn = 0; // generation of the current socket; handlers of older sockets do nothing
  #welcomed = false;
  #openedAt = 0;
  #lastFrameAt = 0;
  #failures = 0; // consecutive attempts that never reached `welcome`
  #attempt = 0; // backoff exponent
  #authRetries = 0;
  #serverDelayMs = null;
  #timers = new Map();
  #rooms = new Map();
  #outbox = []; // {ref, room, text, resolve, reject, sentOn, posting}
  #acked = new Set();
  #requests = new Map(); // ref -> {resolve, reject, timer}
  #typingState = new Map();
  #refreshing = null;
  #polling = false;
  #refPrefix = Math.random().toString(36).slice(2, 8);
  #refCount = 0;

  closeReason = null;
  user = null;
  session = null;
  node = null;

  constructor({ url, token, getToken, onTokenRefresh, httpBase, WebSocket: WS, fetch: fetchFn, ...options } = {}) {
    super();
    if (!token && !getToken) throw new TypeError("ChatClient needs a token or a getToken callback");
    this.#o = { ...DEFAULTS, ...options };
    this.#token = token ?? null;
    this.#getToken = getToken ?? null;
    this.#refresher = onTokenRefresh ?? getToken ?? null;
    this.#WS = WS ?? globalThis.WebSocket;
    this.#fetch = fetchFn ?? globalThis.fetch.bind(globalThis);
    ({ wsUrl: this.#wsUrl, httpBase: this.#httpBase } = resolveUrls(url, httpBase));
  }

  /** One of STATES. A `state` event ({state, previous, reason}) fires on every change. */
  get state() {
    return this.#state;
  }

  /** The newest message id seen in `room`, or null. */
  lastId(room) {
    return this.#rooms.get(room)?.lastId ?? null;
  }

  /** Subscribe to an event; returns a function that unsubscribes. Handlers get the frame itself. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  connect() {
    if (this.#state !== "closed") return;
    this.closeReason = null;
    this.#failures = 0;
    this.#attempt = 0;
    this.#setState("connecting");
    this.#openSocket();
  }

  close() {
    this.#shutdown("closed", "closed by the application");
  }

  /** Join a room (a bot's chat). `since` resumes after a known message id. Resolves with `joined`. */
  join(room, { since } = {}) {
    let r = this.#rooms.get(room);
    if (!r) {
      r = newRoom();
      this.#rooms.set(room, r);
    }
    if (since != null) r.lastId = String(since);
    if (r.joined && r.joinedFrame) return Promise.resolve(r.joinedFrame);
    const promise = new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
    if (this.#welcomed && !r.joinRef) this.#sendJoin(room, r);
    else if (this.#state === "fallback") this.#wakePoll();
    return promise;
  }

  /** Leave a room; messages still queued for it are rejected. */
  async leave(room) {
    const r = this.#rooms.get(room);
    if (!r) return;
    this.#rooms.delete(room);
    clearTimeout(r.replayTimer);
    this.#settleWaiters(r, new ChatError("bad_request", "left the room"));
    this.#rejectOutbox((e) => e.room === room, new ChatError("bad_request", "left the room"));
    if (this.#welcomed && r.joined) await this.#request({ type: "leave", room }).catch(() => {});
  }

  /** Send a text to a joined room. Resolves with {id, ts} once the server stored it. */
  send(room, text) {
    if (this.#state === "closed" && this.closeReason) return Promise.reject(new ChatError("unavailable", "client closed"));
    if (!this.#rooms.has(room)) return Promise.reject(new ChatError("bad_request", "join the room before sending"));
    const ref = this.#ref();
    if (frameBytes({ type: "message", room, text, ref }) > this.#o.maxFrameBytes) {
      return Promise.reject(new ChatError("too_large", "message is larger than the frame limit"));
    }
    this.typing(room, false);
    return new Promise((resolve, reject) => {
      this.#outbox.push({ ref, room, text, resolve, reject, sentOn: 0, posting: false });
      this.#flushRoom(room);
    });
  }

  /** Report typing. `true` goes out at most once per throttle window; `false` follows when the user stops. */
  typing(room, state) {
    let t = this.#typingState.get(room);
    if (!t) this.#typingState.set(room, (t = { sent: false, at: 0, idle: null }));
    clearTimeout(t.idle);
    if (state) {
      t.idle = setTimeout(() => this.typing(room, false), this.#o.typingIdleMs);
      if (t.sent && Date.now() - t.at < this.#o.typingThrottleMs) return;
      t.at = Date.now();
      t.sent = this.#sendToRoom(room, { type: "typing", room, state: true });
    } else if (t.sent) {
      t.sent = false;
      this.#sendToRoom(room, { type: "typing", room, state: false });
    }
  }

  startBot(bot) {
    return this.#botCommand(bot, "start");
  }

  stopBot(bot) {
    return this.#botCommand(bot, "stop");
  }

  // ---- HTTP API --------------------------------------------------------------------------------

  listBots() {
    return this.#http("GET", "/api/bots");
  }

  getBot(bot) {
    return this.#http("GET", `/api/bots/${encodeURIComponent(bot)}`);
  }

  createBot({ name, kind = "echo", config } = {}) {
    return this.#http("POST", "/api/bots", config === undefined ? { name, kind } : { name, kind, config });
  }

  deleteBot(bot) {
    return this.#http("DELETE", `/api/bots/${encodeURIComponent(bot)}`);
  }

  /** A room's history, oldest first: {messages, last_id}. */
  history(room, { since, limit } = {}) {
    const query = new URLSearchParams();
    if (since != null) query.set("since", since);
    if (limit != null) query.set("limit", String(limit));
    const qs = query.toString() ? `?${query}` : "";
    return this.#http("GET", `/api/bots/${encodeURIComponent(room)}/messages${qs}`);
  }

  async #http(method, path, body, retryAuth = true) {
    const token = await this.#currentToken();
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let res;
    try {
      res = await this.#fetch(this.#httpBase + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ChatError("unavailable", "network error", { network: true, cause: err });
    }
    if (res.status === 401 && retryAuth && this.#refresher) {
      await this.#refreshToken();
      return this.#http(method, path, body, false);
    }
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) {
      throw new ChatError(data?.error ?? `http_${res.status}`, data?.message ?? res.statusText, { status: res.status });
    }
    return data;
  }

  // ---- connection lifecycle ----------------------------------------------------------------------

  async #openSocket() {
    this.#clearTimer("reconnect");
    const conn = ++this.#conn;
    let token;
    try {
      token = await this.#currentToken();
    } catch (err) {
      if (conn !== this.#conn || this.#state === "closed") return;
      if (err.code === "token_expired") return this.#shutdown("unauthorized", err.message);
      // The refresh endpoint may be down with the gateway: count it as a failed attempt.
      this.#failures++;
      return this.#scheduleReconnect();
    }
    if (conn !== this.#conn || this.#state === "closed") return;
    if (!token) return this.#shutdown("unauthorized", "no token available");
    const url = new URL(this.#wsUrl);
    url.searchParams.set("token", token);
    let ws;
    try {
      ws = new this.#WS(url.href);
    } catch {
      return this.#socketGone(conn, 1006);
    }
    this.#ws = ws;
    ws.onmessage = (event) => {
      if (conn === this.#conn) this.#onFrame(event.data);
    };
    ws.onclose = (event) => this.#socketGone(conn, event.code);
    // A handshake that never yields `welcome` counts as a failed attempt.
    this.#setTimer("handshake", () => this.#dropSocket(conn), this.#o.handshakeTimeoutMs);
  }

  // Abandon a socket without waiting for its close handshake (it may be dead).
  #dropSocket(conn) {
    if (conn !== this.#conn || !this.#ws) return;
    const ws = this.#ws;
    this.#socketGone(conn, 1006);
    try {
      ws.close();
    } catch {
      // already closing
    }
  }

  #socketGone(conn, code) {
    if (conn !== this.#conn) return;
    this.#conn++; // late events of this socket are ignored from now on
    this.#ws = null;
    for (const name of ["handshake", "heartbeat"]) this.#clearTimer(name);
    const welcomed = this.#welcomed;
    this.#welcomed = false;
    for (const r of this.#rooms.values()) {
      clearTimeout(r.replayTimer);
      Object.assign(r, { joined: false, joinRef: null, replayUntil: null, replayTimer: null });
    }
    for (const [ref, req] of this.#requests) {
      this.#requests.delete(ref);
      clearTimeout(req.timer);
      req.reject(new ChatError("unavailable", "connection lost"));
    }
    if (this.#state === "closed") return;
    if (code === 4003) return this.#shutdown("forbidden", "the server refused this connection (4003)");
    if (code === 4001) return this.#reauthenticate();
    if (!welcomed) this.#failures++;
    else if (Date.now() - this.#openedAt >= this.#o.stableAfterMs) this.#attempt = 0;
    this.#scheduleReconnect();
  }

  #scheduleReconnect(delayMs) {
    if (this.#state !== "fallback") {
      if (this.#failures >= this.#o.fallbackAfter) this.#enterFallback();
      else this.#setState("reconnecting");
    }
    let delay = delayMs;
    if (delay === undefined && this.#serverDelayMs !== null) delay = Math.random() * this.#serverDelayMs;
    if (delay === undefined) delay = backoffDelay(this.#attempt++, this.#o.backoffBaseMs, this.#o.backoffCapMs);
    this.#serverDelayMs = null;
    this.#setTimer("reconnect", () => this.#openSocket(), delay);
  }

  // 4001: the token expired or was refused. Try one refreshed token, then give up.
  async #reauthenticate() {
    if (!this.#refresher || this.#authRetries >= 1) return this.#shutdown("unauthorized", "token expired or refused");
    this.#authRetries++;
    this.#setState("reconnecting");
    try {
      await this.#refreshToken();
    } catch {
      return this.#shutdown("unauthorized", "token refresh failed");
    }
    if (this.#state !== "closed") this.#scheduleReconnect(0);
  }

  #shutdown(reason, message) {
    if (this.#state === "closed" && this.closeReason) return;
    this.closeReason = reason;
    const ws = this.#ws;
    this.#conn++;
    this.#ws = null;
    this.#welcomed = false;
    this.#polling = false;
    for (const name of [...this.#timers.keys()]) this.#clearTimer(name);
    for (const t of this.#typingState.values()) clearTimeout(t.idle);
    this.#typingState.clear();
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    const error = new ChatError(reason === "closed" ? "unavailable" : reason, message);
    for (const [ref, req] of this.#requests) {
      this.#requests.delete(ref);
      clearTimeout(req.timer);
      req.reject(error);
    }
    for (const r of this.#rooms.values()) {
      clearTimeout(r.replayTimer);
      this.#settleWaiters(r, error);
      Object.assign(r, { joined: false, joinRef: null, replayUntil: null });
    }
    this.#rejectOutbox(() => true, error);
    this.#setState("closed", reason);
    if (reason !== "closed") this.#emit("error", { type: "error", code: reason, message });
  }

  #setState(state, reason = null) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#emit("state", { state, previous, reason });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setTimer(name, fn, ms) {
    this.#clearTimer(name);
    this.#timers.set(
      name,
      setTimeout(() => {
        this.#timers.delete(name);
        fn();
      }, ms),
    );
  }

  #clearTimer(name) {
    clearTimeout(this.#timers.get(name));
    this.#timers.delete(name);
  }

  #ref() {
    return `${this.#refPrefix}-${++this.#refCount}`;
  }

  #sendFrame(frame) {
    if (!this.#ws || this.#ws.readyState !== 1) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #sendToRoom(room, frame) {
    return Boolean(this.#welcomed && this.#rooms.get(room)?.joined && this.#sendFrame(frame));
  }

  // A frame whose reply carries its ref: resolves with the reply, rejects with an `error` reply.
  #request(frame) {
    return new Promise((resolve, reject) => {
      const ref = this.#ref();
      if (!this.#sendFrame({ ...frame, ref })) return reject(new ChatError("unavailable", "not connected"));
      const timer = setTimeout(() => {
        this.#requests.delete(ref);
        reject(new ChatError("unavailable", `no answer to ${frame.type}`));
      }, this.#o.requestTimeoutMs);
      this.#requests.set(ref, { resolve, reject, timer });
    });
  }

  // ---- incoming frames -----------------------------------------------------------------------------

  #onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    this.#lastFrameAt = Date.now();
    const handler = this.#handlers[frame.type];
    if (handler && handler(frame) === false) return; // false: a duplicate, not re-emitted
    if (frame.ref != null && frame.type !== "ack" && frame.type !== "error") this.#settleRequest(frame.ref, frame);
    this.#emit(frame.type, frame);
  }

  #handlers = {
    welcome: (f) => this.#onWelcome(f),
    joined: (f) => this.#onJoined(f),
    message: (f) => this.#onMessage(f),
    ack: (f) => this.#onAck(f),
    error: (f) => this.#onError(f),
    auth_ok: () => {
      this.#authRetries = 0;
      this.#scheduleRefresh();
    },
    bot_status: (f) => {
      const r = this.#rooms.get(f.bot);
      if (r?.bot) Object.assign(r.bot, { status: f.status, error: f.error ?? null });
    },
    reconnect: (f) => {
      this.#serverDelayMs = Math.max(0, Number(f.delay_ms) || 0);
    },
    ping: () => {
      this.#sendFrame({ type: "pong" });
    },
  };

  #onWelcome(f) {
    this.#clearTimer("handshake");
    this.#welcomed = true;
    this.#failures = 0;
    this.#authRetries = 0;
    this.#openedAt = Date.now();
    this.#clearTimer("poll"); // a poll still in flight sees the state change and stops
    Object.assign(this, { user: f.user ?? null, session: f.session ?? null, node: f.node ?? null });
    this.#setState("open");
    this.#startHeartbeat(Number(f.heartbeat) || 25);
    this.#scheduleRefresh();
    for (const [room, r] of this.#rooms) this.#rejoin(room, r);
  }

  async #rejoin(room, r) {
    if (r.lastId === null && r.wasJoined) {
      // The room was empty when we joined, so there is no position to resume from: read what was
      // posted meanwhile first, so that nothing is missed and an unacked message can be recognised.
      const conn = this.#conn;
      const current = () => conn === this.#conn && this.#welcomed;
      await this.#catchUp(room, r, current).catch(() => {});
      if (!current() || this.#rooms.get(room) !== r || r.joinRef) return;
    }
    this.#sendJoin(room, r);
  }

  // Our own ping keeps the socket honest: a connection that stays silent for two periods is dead.
  #startHeartbeat(seconds) {
    const period = seconds * 1000;
    const conn = this.#conn;
    const beat = () => {
      if (Date.now() - this.#lastFrameAt > 2 * period) return this.#dropSocket(conn);
      this.#sendFrame({ type: "ping" });
      this.#setTimer("heartbeat", beat, period);
    };
    this.#setTimer("heartbeat", beat, period);
  }

  #sendJoin(room, r) {
    r.joinRef = this.#ref();
    r.since = r.lastId;
    const frame = { type: "join", room, ref: r.joinRef };
    if (r.since != null) frame.since = r.since;
    this.#sendFrame(frame);
  }

  #onJoined(f) {
    const r = this.#rooms.get(f.room);
    if (!r) return;
    Object.assign(r, { joined: true, joinRef: null, bot: f.bot ?? r.bot, joinedFrame: f, wasJoined: true });
    const lastId = f.last_id ?? null;
    if (r.since == null || f.recovered === false) {
      if (lastId !== null) r.lastId = lastId;
      if (r.since != null) this.#emit("resync", { room: f.room, since: r.since, last_id: lastId });
    }
    this.#settleWaiters(r, null, f);
    // With `since`, the missed messages follow `joined`; hold our queue until the one with last_id.
    // Without recovery the replay may be partial or empty, so there is nothing reliable to wait for.
    if (r.since != null && f.recovered !== false && lastId !== null && lastId !== r.since) {
      r.replayUntil = lastId;
      r.replayTimer = setTimeout(() => this.#replayDone(f.room), this.#o.replayWaitMs);
    } else {
      this.#replayDone(f.room);
    }
  }

  #onMessage(f) {
    const r = this.#rooms.get(f.room);
    if (!r || f.id == null) return true;
    const id = String(f.id);
    if (r.seen.has(id)) return false;
    remember(r.seen, id, this.#o.seenIdsPerRoom);
    r.lastId = id;
    if (this.#isMine(f)) {
      r.unclaimed.push(f);
      if (r.unclaimed.length > UNCLAIMED_MAX) r.unclaimed.shift();
    }
    if (id === r.replayUntil) this.#replayDone(f.room);
    return true;
  }

  #isMine(f) {
    return f.from?.kind === "user" && userId(f.from) === userId(this.user) && !this.#acked.has(String(f.id));
  }

  #onAck(f) {
    const i = this.#outbox.findIndex((e) => e.ref === f.ref);
    if (i < 0) return;
    const [entry] = this.#outbox.splice(i, 1);
    this.#claim(entry.room, f.id);
    entry.resolve({ id: f.id, ts: f.ts });
  }

  #claim(room, id) {
    remember(this.#acked, String(id), this.#o.seenIdsPerRoom);
    const r = this.#rooms.get(room);
    if (r) r.unclaimed = r.unclaimed.filter((m) => String(m.id) !== String(id));
  }

  #onError(f) {
    if (f.ref == null) return;
    const error = new ChatError(f.code ?? "internal", f.message, { frame: f });
    const i = this.#outbox.findIndex((e) => e.ref === f.ref);
    if (i >= 0) this.#outbox.splice(i, 1)[0].reject(error);
    for (const [room, r] of this.#rooms) {
      if (r.joinRef !== f.ref) continue;
      this.#rooms.delete(room);
      this.#settleWaiters(r, error);
      this.#rejectOutbox((e) => e.room === room, error);
    }
    this.#settleRequest(f.ref, null, error);
  }

  #settleRequest(ref, value, error) {
    const req = this.#requests.get(ref);
    if (!req) return;
    this.#requests.delete(ref);
    clearTimeout(req.timer);
    if (error) req.reject(error);
    else req.resolve(value);
  }

  #settleWaiters(r, error, value) {
    const waiters = r.waiters;
    r.waiters = [];
    for (const w of waiters) {
      if (error) w.reject(error);
      else w.resolve(value);
    }
  }

  // ---- outgoing messages -------------------------------------------------------------------------

  // Messages that went out on an earlier connection but got no ack may have been stored. The server
  // does not echo our ref in `message` frames, so we match them against our own messages that no ack
  // claimed (same sender, same text; seen live or replayed after `since`), oldest first, and resend
  // only the unmatched ones.
  #reconcile(room) {
    const r = this.#rooms.get(room);
    if (!r) return;
    for (const entry of [...this.#outbox]) {
      if (entry.room !== room || entry.sentOn === 0 || entry.sentOn === this.#conn || entry.posting) continue;
      const m = r.unclaimed.find((u) => u.text === entry.text);
      if (!m) continue;
      this.#outbox.splice(this.#outbox.indexOf(entry), 1);
      this.#claim(room, m.id);
      entry.resolve({ id: m.id, ts: m.ts });
    }
  }

  #replayDone(room) {
    const r = this.#rooms.get(room);
    if (!r) return;
    clearTimeout(r.replayTimer);
    Object.assign(r, { replayUntil: null, replayTimer: null });
    this.#reconcile(room);
    this.#flushRoom(room);
  }

  #flushRoom(room) {
    if (this.#state === "fallback") return this.#wakePoll();
    const r = this.#rooms.get(room);
    if (!this.#welcomed || !r?.joined || r.replayUntil !== null) return;
    for (const entry of this.#outbox) {
      if (entry.room !== room || entry.sentOn === this.#conn || entry.posting) continue;
      if (!this.#sendFrame({ type: "message", room, text: entry.text, ref: entry.ref })) return;
      entry.sentOn = this.#conn;
    }
  }

  #rejectOutbox(match, error) {
    const rejected = this.#outbox.filter(match);
    this.#outbox = this.#outbox.filter((e) => !match(e));
    for (const e of rejected) e.reject(error);
  }

  async #botCommand(bot, action) {
    if (this.#welcomed) {
      const reply = await this.#request({ type: `bot.${action}`, bot });
      return { bot: reply.bot, status: reply.status, error: reply.error ?? null };
    }
    const b = await this.#http("POST", `/api/bots/${encodeURIComponent(bot)}/${action}`, {});
    return { bot: b.id, status: b.status, error: b.error ?? null };
  }

  // ---- tokens --------------------------------------------------------------------------------------

  async #currentToken() {
    if (this.#getToken && !this.#token) this.#token = await this.#getToken();
    if (isExpired(this.#token)) {
      if (!this.#refresher) throw new ChatError("token_expired", "the token has expired");
      await this.#refreshToken();
    }
    return this.#token;
  }

  #refreshToken() {
    this.#refreshing ??= (async () => {
      try {
        const token = await this.#refresher();
        if (!token || isExpired(token)) throw new ChatError("token_expired", "the refreshed token is already expired");
        this.#token = token;
        if (this.#welcomed) {
          this.#request({ type: "auth", token }).catch((err) =>
            this.#emit("error", { type: "error", code: err.code, message: err.message }),
          );
        }
        this.#scheduleRefresh();
        return token;
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }

  // Refresh `refreshLeadMs` before exp (halfway for short-lived tokens), while a socket is open.
  #scheduleRefresh() {
    this.#clearTimer("refresh");
    const exp = tokenExpMs(this.#token);
    if (!this.#refresher || exp === null || !this.#welcomed) return;
    const ttl = exp - Date.now();
    const delay = ttl > 2 * this.#o.refreshLeadMs ? ttl - this.#o.refreshLeadMs : Math.max(ttl / 2, 1_000);
    this.#setTimer(
      "refresh",
      () =>
        this.#refreshToken().catch((err) => {
          this.#emit("error", { type: "error", code: "token_expired", message: String(err?.message ?? err) });
          if (Date.now() < exp) this.#setTimer("refresh", () => this.#scheduleRefresh(), 5_000);
        }),
      delay,
    );
  }

  // ---- HTTP fallback -------------------------------------------------------------------------------

  #enterFallback() {
    this.#setState("fallback");
    this.#wakePoll();
  }

  #wakePoll() {
    if (this.#polling || this.#state !== "fallback") return;
    this.#polling = true;
    this.#clearTimer("poll");
    this.#pollAll().finally(() => {
      this.#polling = false;
      if (this.#state === "fallback") this.#setTimer("poll", () => this.#wakePoll(), this.#o.pollIntervalMs);
    });
  }

  async #pollAll() {
    for (const [room, r] of [...this.#rooms]) {
      if (this.#state !== "fallback") return;
      try {
        await this.#pollRoom(room, r);
        await this.#postQueued(room);
      } catch (err) {
        this.#pollFailed(room, r, err);
      }
    }
  }

  #pollFailed(room, r, err) {
    if (err.code === "forbidden" || err.code === "not_found") {
      this.#rooms.delete(room);
      this.#settleWaiters(r, err);
      this.#rejectOutbox((e) => e.room === room, err);
    }
    if (err.status === 401) return this.#shutdown("unauthorized", "token refused by the HTTP API");
    if (!err.network) this.#emit("error", { type: "error", code: err.code, message: err.message, room });
  }

  async #pollRoom(room, r) {
    const bot = await this.getBot(room);
    if (this.#state !== "fallback") return;
    const changed = !r.bot || r.bot.status !== bot.status || (r.bot.error ?? null) !== (bot.error ?? null);
    r.bot = { id: bot.id, name: bot.name, kind: bot.kind, status: bot.status, error: bot.error ?? null };
    if (r.waiters.length) {
      // No presence over HTTP: the synthetic `joined` says so with `fallback: true`.
      const joined = { type: "joined", room, bot: r.bot, members: [], member_count: null, last_id: r.lastId };
      Object.assign(joined, { recovered: r.lastId !== null, fallback: true });
      this.#emit("joined", joined);
      this.#settleWaiters(r, null, joined);
    } else if (changed) {
      this.#emit("bot_status", { type: "bot_status", bot: room, status: bot.status, error: bot.error ?? null });
    }
    if (await this.#catchUp(room, r, () => this.#state === "fallback")) this.#reconcile(room);
  }

  // Fetch what the room got after our position over HTTP and deliver it as `message` events.
  // `current()` tells whether the answers still matter when they arrive.
  async #catchUp(room, r, current) {
    const limit = 100;
    for (let page = 0; page < this.#o.pollPagesPerTick; page++) {
      const res = await this.history(room, r.lastId === null ? { limit } : { since: r.lastId, limit });
      if (!current() || this.#rooms.get(room) !== r) return false;
      const messages = res.messages ?? [];
      for (const m of messages) {
        const frame = { type: "message", room, ...m };
        if (this.#onMessage(frame) !== false) this.#emit("message", frame);
      }
      if (res.last_id != null && r.lastId === null) r.lastId = String(res.last_id);
      if (messages.length < limit) break;
    }
    return true;
  }

  // In order, one at a time: a failure leaves the rest queued for the next tick.
  async #postQueued(room) {
    for (const entry of this.#outbox.filter((e) => e.room === room)) {
      if (this.#state !== "fallback" || !this.#outbox.includes(entry)) return;
      entry.posting = true;
      try {
        const res = await this.#http("POST", `/api/bots/${encodeURIComponent(room)}/messages`, { text: entry.text });
        this.#outbox.splice(this.#outbox.indexOf(entry), 1);
        this.#claim(room, res.id);
        entry.resolve({ id: res.id, ts: res.ts });
      } catch (err) {
        if (err.network || err.status === 429 || err.status >= 500) {
          entry.sentOn = -1; // may have arrived: the next poll reconciles it
          return;
        }
        this.#outbox.splice(this.#outbox.indexOf(entry), 1);
        entry.reject(err);
      } finally {
        entry.posting = false;
      }
    }
  }
}
