// ChatClient: the facade over the transport, the rooms, the token keeper and the HTTP fallback.
//
// One WebSocket carries every joined room. The client reconnects by itself (exponential backoff
// with full jitter), resumes each room from the last message id it saw, queues messages sent while
// offline, refreshes its token before it expires, and falls back to the HTTP API (send by POST,
// receive by polling) when the WebSocket cannot be reached.

import { ChatError } from "./errors.js";
import { ChatEvents, type CloseReason, type ConnectionState } from "./events.js";
import { Poller } from "./fallback.js";
import type { Bot, BotStatus, CancelOkFrame, HistoryPage, NewBot, ServerFrame, Stored, WelcomeFrame } from "./frames.js";
import { type FetchLike, HttpApi, type HistoryQuery } from "./http.js";
import { type Joined, RoomBook } from "./rooms.js";
import { type TokenSource, TokenKeeper } from "./tokens.js";
import { Transport, type WebSocketConstructor } from "./transport.js";
import { TypingThrottle } from "./typing.js";
import { decodeJwtPayload, frameBytes, resolveUrls } from "./util.js";

export interface ChatClientTuning {
  backoffBaseMs: number;
  backoffCapMs: number;
  /** Consecutive failed WebSocket attempts before HTTP polling starts. */
  fallbackAfter: number;
  pollIntervalMs: number;
  pollPagesPerTick: number;
  typingThrottleMs: number;
  typingIdleMs: number;
  refreshLeadMs: number;
  replayWaitMs: number;
  handshakeTimeoutMs: number;
  requestTimeoutMs: number;
  /** A connection that lived this long resets the backoff. */
  stableAfterMs: number;
  maxFrameBytes: number;
  seenIdsPerRoom: number;
}

export interface ChatClientOptions extends Partial<ChatClientTuning> {
  /** WebSocket endpoint; default `/ws` on the page's host. `http(s)://` URLs become `ws(s)://`. */
  url?: string;
  token?: string | null;
  getToken?: TokenSource;
  onTokenRefresh?: TokenSource;
  /** Where the HTTP API lives; default the origin of `url`. */
  httpBase?: string;
  WebSocket?: WebSocketConstructor;
  fetch?: FetchLike;
}

export const DEFAULTS: Readonly<ChatClientTuning> = Object.freeze({
  backoffBaseMs: 500,
  backoffCapMs: 30_000,
  fallbackAfter: 3,
  pollIntervalMs: 2_000,
  pollPagesPerTick: 5,
  typingThrottleMs: 2_000,
  typingIdleMs: 3_000,
  refreshLeadMs: 30_000,
  replayWaitMs: 5_000,
  handshakeTimeoutMs: 10_000,
  requestTimeoutMs: 10_000,
  stableAfterMs: 10_000,
  maxFrameBytes: 65_536,
  seenIdsPerRoom: 2_000,
});

export interface BotCommandResult {
  bot: string;
  status: BotStatus;
  error: string | null;
}

export class ChatClient extends ChatEvents {
  /** The HTTP API with this client's token. */
  readonly api: HttpApi;
  readonly #o: ChatClientTuning;
  readonly #tokens: TokenKeeper;
  readonly #transport: Transport;
  readonly #rooms: RoomBook;
  readonly #poller: Poller;
  readonly #typing: TypingThrottle;
  #state: ConnectionState = "closed";
  #closeReason: CloseReason | null = null;
  #welcome: WelcomeFrame | null = null;
  #authRetries = 0;

  constructor(options: ChatClientOptions = {}) {
    super();
    const { url, token, getToken, onTokenRefresh, httpBase, WebSocket: WS, fetch: fetchFn, ...tuning } = options;
    const o: ChatClientTuning = { ...DEFAULTS };
    for (const [key, value] of Object.entries(tuning)) if (value !== undefined) Object.assign(o, { [key]: value });
    this.#o = o;
    this.#tokens = new TokenKeeper(
      { token: token ?? null, getToken: getToken ?? null, onTokenRefresh: onTokenRefresh ?? null, refreshLeadMs: o.refreshLeadMs },
      {
        refreshed: (fresh) => this.#tokenRefreshed(fresh),
        failed: (err) => this.emit("error", { type: "error", code: err.code, message: err.message }),
      },
    );
    const urls = resolveUrls(url, httpBase);
    const socketClass = WS ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!socketClass) throw new TypeError("no WebSocket in this runtime: pass one in the options");
    this.api = new HttpApi(urls.httpBase, fetchFn ?? globalThis.fetch.bind(globalThis), {
      current: () => this.#tokens.current(),
      refresh: this.#tokens.canRefresh ? () => this.#tokens.refresh() : null,
    });
    this.#transport = new Transport(
      { ...o, url: urls.wsUrl, WebSocket: socketClass },
      {
        token: () => this.#tokens.current(),
        tokenFailed: (err) => this.#tokenFailed(err),
        frame: (frame) => this.#onFrame(frame),
        down: (code) => this.#socketDown(code),
      },
    );
    const self = this; // the hosts read the client's live state through getters
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
        wakePoll: () => this.#poller.wake(),
      },
      o,
    );
    this.#poller = new Poller(
      this.#rooms,
      this.api,
      {
        get active() {
          return self.#state === "fallback";
        },
        emit: (type, detail) => this.emit(type, detail),
        unauthorized: () => this.#shutdown("unauthorized", "token refused by the HTTP API"),
      },
      o.pollIntervalMs,
      o.pollPagesPerTick,
    );
    this.#typing = new TypingThrottle(o.typingThrottleMs, o.typingIdleMs, (room, state) => {
      const r = this.#rooms.get(room);
      return Boolean(this.#transport.live && r?.joined && this.#transport.send({ type: "typing", room, state }));
    });
  }

  /** A `state` event ({state, previous, reason}) fires on every change. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** Why the client stopped for good, or null while it runs. */
  get closeReason(): CloseReason | null {
    return this.#closeReason;
  }

  /** From the last `welcome`: the user id, the connection's session id and the node serving it. */
  get user(): string | null {
    return this.#welcome?.user ?? null;
  }

  get session(): string | null {
    return this.#welcome?.session ?? null;
  }

  get node(): string | null {
    return this.#welcome?.node ?? null;
  }

  /** The token in use now (it changes when refreshed). */
  get token(): string | null {
    return this.#tokens.token;
  }

  /** The newest message id seen in `room`, or null. */
  lastId(room: string): string | null {
    return this.#rooms.get(room)?.lastId ?? null;
  }

  connect(): void {
    if (this.#state !== "closed") return;
    this.#closeReason = null;
    this.#setState("connecting");
    this.#transport.start();
  }

  /** Stop for good: queued messages and pending joins are rejected. */
  close(): void {
    this.#shutdown("closed", "closed by the application");
  }

  /** Join a room (a bot's chat). `since` resumes after a known message id. Resolves with `joined`. */
  join(room: string, { since }: { since?: string | null } = {}): Promise<Joined> {
    return this.#rooms.join(room, since);
  }

  /** Leave a room; messages still queued for it are rejected. */
  leave(room: string): Promise<void> {
    return this.#rooms.leave(room);
  }

  /** Send a text to a joined room. Resolves with {id, ts} once the server stored it. */
  send(room: string, text: string): Promise<Stored> {
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
  typing(room: string, state: boolean): void {
    this.#typing.report(room, state);
  }

  /**
   * Stop the bot's reply to the user message `messageId`, over the socket or, when it is down (or
   * goes down before the answer), over HTTP. Resolves with `cancel_ok`; the reply then ends with
   * `status cancelled`, and the text so far is stored as a cancelled reply. Rejects with `conflict`
   * when the reply already ended, `forbidden` for a user who is neither its sender, the bot's owner
   * nor an admin. Cancelling twice is harmless: the second one gets `conflict` or the same answer.
   */
  async cancel(room: string, messageId: string): Promise<CancelOkFrame> {
    if (this.#transport.live) {
      try {
        const reply = await this.#transport.request({ type: "cancel", room, message: messageId });
        if (reply.type === "cancel_ok") return reply;
      } catch (err) {
        // An `error` frame is the server's answer; anything else means the socket went away first.
        if (!(err instanceof ChatError) || err.frame || err.code !== "unavailable") throw err;
      }
    }
    const answer = await this.api.cancel(room, messageId);
    return { type: "cancel_ok", room: answer.room, message: answer.message };
  }

  startBot(bot: string): Promise<BotCommandResult> {
    return this.#botCommand(bot, "start");
  }

  stopBot(bot: string): Promise<BotCommandResult> {
    return this.#botCommand(bot, "stop");
  }

  listBots(): Promise<{ bots: Bot[] }> {
    return this.api.listBots();
  }

  getBot(bot: string): Promise<Bot> {
    return this.api.getBot(bot);
  }

  createBot(bot: NewBot): Promise<Bot> {
    return this.api.createBot(bot);
  }

  deleteBot(bot: string): Promise<null> {
    return this.api.deleteBot(bot);
  }

  /** A room's history, oldest first: {messages, last_id}. */
  history(room: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    return this.api.history(room, query);
  }

  async #botCommand(bot: string, action: "start" | "stop"): Promise<BotCommandResult> {
    if (this.#transport.live) {
      const reply = await this.#transport.request({ type: action === "start" ? "bot.start" : "bot.stop", bot });
      if (reply.type === "bot_status") return { bot: reply.bot, status: reply.status, error: reply.error ?? null };
    }
    const b = await this.api.botCommand(bot, action);
    return { bot: b.id, status: b.status, error: b.error ?? null };
  }

  // ---- what the transport reports ----------------------------------------------------------------

  #onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        this.#onWelcome(frame);
        break;
      case "joined":
        this.#rooms.onJoined(frame);
        break;
      case "message":
        if (!this.#rooms.onMessage(frame)) return; // a duplicate: not re-emitted
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
    this.emit(frame.type, frame as never);
  }

  #onWelcome(frame: WelcomeFrame): void {
    this.#authRetries = 0;
    this.#welcome = frame;
    this.#poller.stop();
    this.#setState("open");
    this.#tokens.schedule();
    this.#rooms.rejoinAll();
  }

  #socketDown(code: number): void {
    this.#rooms.connectionLost();
    if (this.#state === "closed") return;
    if (code === 4003) this.#shutdown("forbidden", "the server refused this connection (4003)");
    else if (code === 4001) void this.#reauthenticate();
    else this.#scheduleReconnect();
  }

  #scheduleReconnect(delayMs?: number): void {
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
  async #reauthenticate(): Promise<void> {
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

  #tokenFailed(err: unknown): void {
    if (err === null) {
      this.#shutdown("unauthorized", "no token available");
    } else if (err instanceof ChatError && err.code === "token_expired") {
      this.#shutdown("unauthorized", err.message);
    } else {
      // The refresh endpoint may be down with the gateway: count it as a failed attempt.
      this.#transport.countFailure();
      this.#scheduleReconnect();
    }
  }

  #tokenRefreshed(token: string): void {
    if (!this.#transport.live) return;
    this.#transport
      .request({ type: "auth", token })
      .catch((err: ChatError) => this.emit("error", { type: "error", code: err.code, message: err.message }));
    this.#tokens.schedule();
  }

  #shutdown(reason: CloseReason, message: string): void {
    if (this.#state === "closed" && this.#closeReason) return;
    this.#closeReason = reason;
    const error = new ChatError(reason === "closed" ? "unavailable" : reason, message);
    this.#transport.stop(error);
    this.#poller.stop();
    this.#tokens.cancel();
    this.#typing.clear();
    this.#rooms.shutdown(error);
    this.#setState("closed", reason);
    if (reason !== "closed") this.emit("error", { type: "error", code: reason, message });
  }

  #setState(state: ConnectionState, reason: CloseReason | null = null): void {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.emit("state", { state, previous, reason });
  }
}

function subject(token: string | null): string | null {
  const sub = decodeJwtPayload(token)?.["sub"];
  return typeof sub === "string" ? sub : null;
}
