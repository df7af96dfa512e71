// ChatStore: the client's events folded into immutable per-room views, for UI frameworks.
//
// Every change replaces the affected room's view object and notifies subscribers, so
// `useSyncExternalStore` (or any `subscribe` + `getSnapshot` consumer) re-renders exactly when the
// room changed. Streamed replies go through one entry point, applyReply(): a piece to append (a
// `delta`, ordered by `attempt` and `seq`) or the whole text so far (a `stream` snapshot), plus an
// end state (`cancelled`, `failed`); the final `message` with the same `reply_to` replaces it.

import type { BotCommandResult, ChatClient } from "./client.js";
import type { ChatError } from "./errors.js";
import type { CloseReason, ConnectionState } from "./events.js";
import type { BotInfo, CancelOkFrame, MessageFrame, ProgressState, Sender, Stored } from "./frames.js";
import { decodeJwtPayload } from "./util.js";

/** A message handed to send() that is not in the room's history yet. */
export interface PendingMessage {
  key: string;
  text: string;
  state: "sending" | "failed";
  /** Set once the server acknowledged it; the pending entry goes when the stored copy arrives. */
  id?: string;
  error?: ChatError;
}

/** A bot's reply while it is being written; replaced by the final message when that arrives. */
export interface ReplyStream {
  /** The user message it answers. */
  replyTo: string;
  text: string;
  /** The try at the reply that `text` belongs to, and its last piece; null from an older server. */
  attempt: number | null;
  seq: number | null;
  state: "streaming" | "cancelled" | "failed";
}

export interface ReplyChange {
  replyTo: string;
  text: string;
  /** `append` adds a piece (a `delta`); `replace` sets the text so far (a `stream` snapshot). */
  mode: "append" | "replace";
  attempt?: number;
  seq?: number;
  state?: ReplyStream["state"];
}

export interface Progress {
  state: ProgressState | "queued";
  detail?: string;
}

export interface RoomView {
  room: string;
  status: "idle" | "joining" | "joined" | "left" | "error";
  error: ChatError | null;
  bot: BotInfo | null;
  /** Stored messages, oldest first, each once. */
  messages: readonly MessageFrame[];
  pending: readonly PendingMessage[];
  replies: readonly ReplyStream[];
  /** The bot's progress on each user message, by message id. */
  progress: Readonly<Record<string, Progress>>;
  /** Others typing now (users and the bot). */
  typing: readonly Sender[];
  members: readonly string[];
  memberCount: number | null;
  /** Joined over the HTTP fallback: no presence, typing or streamed replies. */
  fallback: boolean;
}

export interface ConnectionView {
  state: ConnectionState;
  user: string | null;
  reason: CloseReason | null;
}

export interface OpenOptions {
  /** Messages of history to load before joining. */
  historyLimit?: number;
}

/** How long a typing indicator lasts without a new `typing true` (the server ends it after 6 s). */
const TYPING_TTL_MS = 8_000;

function emptyRoom(room: string): RoomView {
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
    fallback: false,
  });
}

export class ChatStore {
  readonly client: ChatClient;
  readonly #rooms = new Map<string, RoomView>();
  readonly #ids = new Map<string, Set<string>>(); // message ids held per room
  readonly #opened = new Map<string, number>(); // open() calls not yet released, per room
  readonly #typingTimers = new Map<string, ReturnType<typeof setTimeout>>();
  readonly #listeners = new Set<() => void>();
  readonly #off: (() => void)[];
  #connection: ConnectionView;
  #keys = 0;

  constructor(client: ChatClient) {
    this.client = client;
    this.#connection = Object.freeze({ state: client.state, user: this.#user(), reason: client.closeReason });
    const on = client.on.bind(client);
    this.#off = [
      on("state", ({ state, reason }) => this.#onState(state, reason)),
      on("welcome", (f) => this.#setConnection({ user: f.user })),
      on("joined", (f) =>
        this.#update(f.room, () => ({
          status: "joined",
          error: null,
          bot: f.bot,
          members: f.members,
          memberCount: f.member_count,
          fallback: "fallback" in f,
        })),
      ),
      on("left", (f) => this.#update(f.room, () => ({ status: "left", typing: [], members: [] }))),
      on("message", (m) => this.addMessages(m.room, [m])),
      on("delta", (d) =>
        this.applyReply(d.room, { replyTo: d.reply_to, text: d.text, mode: "append", attempt: d.attempt, seq: d.seq }),
      ),
      on("stream", (s) =>
        this.applyReply(s.room, { replyTo: s.reply_to, text: s.text, mode: "replace", attempt: s.attempt, seq: s.seq }),
      ),
      on("status", (s) => this.#onStatus(s.room, s.message_id, s.state, s.detail)),
      on("typing", (t) => this.#onTyping(t.room, t.from, t.state)),
      on("presence", (p) => this.#onPresence(p.room, p.user, p.event)),
      on("bot_status", (b) =>
        this.#update(b.bot, (v) => (v.bot ? { bot: { ...v.bot, status: b.status, error: b.error ?? null } } : {})),
      ),
      on("resync", ({ room }) => void this.#reload(room)),
    ];
  }

  subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  /** The room's current view; the same object until the room changes. */
  room(room: string): RoomView {
    let view = this.#rooms.get(room);
    if (!view) {
      view = emptyRoom(room);
      this.#rooms.set(room, view);
    }
    return view;
  }

  connection = (): ConnectionView => this.#connection;

  /** Load the room's newest history, then join after it. Returns a release function (refcounted). */
  open(room: string, { historyLimit = 50 }: OpenOptions = {}): () => void {
    const count = (this.#opened.get(room) ?? 0) + 1;
    this.#opened.set(room, count);
    if (count === 1 && this.room(room).status !== "joined") void this.#join(room, historyLimit);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#opened.set(room, (this.#opened.get(room) ?? 1) - 1);
      // Deferred: a component that unmounts and mounts again at once (React's strict mode) keeps the room.
      setTimeout(() => {
        if ((this.#opened.get(room) ?? 0) > 0) return;
        this.#opened.delete(room);
        this.#update(room, () => ({ status: "left", typing: [] }));
        void this.client.leave(room);
      }, 0);
    };
  }

  async #join(room: string, historyLimit: number): Promise<void> {
    this.#update(room, () => ({ status: "joining", error: null }));
    try {
      const page = historyLimit > 0 ? await this.client.history(room, { limit: historyLimit }) : null;
      if (page) this.addMessages(room, page.messages);
      const since = page?.last_id ?? this.client.lastId(room);
      await this.client.join(room, since != null ? { since } : {});
    } catch (err) {
      this.#update(room, () => ({ status: "error", error: err as ChatError }));
    }
  }

  async #reload(room: string): Promise<void> {
    const page = await this.client.history(room, { limit: Math.max(50, this.room(room).messages.length) });
    this.#ids.set(room, new Set());
    this.#update(room, () => ({ messages: [] }));
    this.addMessages(room, page.messages);
  }

  /** Send a text; it shows as pending until its stored copy arrives. */
  async send(room: string, text: string): Promise<Stored> {
    const key = `p${++this.#keys}`;
    this.#update(room, (v) => ({ pending: [...v.pending, { key, text, state: "sending" }] }));
    try {
      const stored = await this.client.send(room, text);
      this.#update(room, (v) => {
        if (this.#ids.get(room)?.has(stored.id)) return { pending: v.pending.filter((p) => p.key !== key) };
        return { pending: v.pending.map((p) => (p.key === key ? { ...p, id: stored.id } : p)) };
      });
      return stored;
    } catch (err) {
      const error = err as ChatError;
      this.#update(room, (v) => ({
        pending: v.pending.map((p) => (p.key === key ? { ...p, state: "failed", error } : p)),
      }));
      throw error;
    }
  }

  /** Start or stop the room's bot (over the socket, or over HTTP when it is down) and show the result. */
  async botCommand(room: string, action: "start" | "stop"): Promise<BotCommandResult> {
    const before = this.room(room).bot;
    const result = await (action === "start" ? this.client.startBot(room) : this.client.stopBot(room));
    // Over the socket, bot_status events may already have moved past the answer: keep the newest.
    this.#update(room, (v) =>
      v.bot && v.bot === before && v.bot.status !== result.status
        ? { bot: { ...v.bot, status: result.status, error: result.error } }
        : {},
    );
    return result;
  }

  /** Forget a failed pending message. */
  discard(room: string, key: string): void {
    this.#update(room, (v) => ({ pending: v.pending.filter((p) => p.key !== key) }));
  }

  /** Add stored messages (live, replayed or fetched), each once, in the order given. */
  addMessages(room: string, messages: readonly MessageFrame[]): void {
    let ids = this.#ids.get(room);
    if (!ids) this.#ids.set(room, (ids = new Set()));
    const fresh = messages.filter((m) => !ids.has(m.id));
    if (!fresh.length) return;
    for (const m of fresh) ids.add(m.id);
    const freshIds = new Set(fresh.map((m) => m.id));
    const answered = new Set(fresh.map((m) => m.reply_to).filter((id): id is string => id !== undefined));
    const queued = fresh.filter((m) => m.queued);
    this.#update(room, (v) => {
      const progress = { ...v.progress };
      for (const m of queued) progress[m.id] ??= { state: "queued" };
      const authors = new Set(fresh.filter((m) => m.from.kind === "user").map((m) => m.from.id));
      return {
        messages: [...v.messages, ...fresh],
        pending: v.pending.filter((p) => p.id === undefined || !freshIds.has(p.id)),
        replies: v.replies.filter((r) => !answered.has(r.replyTo)),
        typing: v.typing.filter((s) => s.kind !== "user" || !authors.has(s.id)),
        progress,
      };
    });
  }

  /** A streamed reply changed (see ReplyChange). Ignored once the reply's final message is in. */
  applyReply(room: string, change: ReplyChange): void {
    if (this.#answered(room, change.replyTo)) return;
    this.#update(room, (v) => {
      const current = v.replies.find((r) => r.replyTo === change.replyTo);
      const next = nextReply(current, change);
      if (next === current) return {};
      const replies = current ? v.replies.map((r) => (r === current ? next : r)) : [...v.replies, next];
      return { replies };
    });
  }

  /**
   * Ask the bot to stop its reply to `messageId` (see ChatClient.cancel); the view follows the frames
   * that come back: the reply ends `cancelled` and its text so far arrives as a message with
   * `state: "cancelled"`.
   */
  cancel(room: string, messageId: string): Promise<CancelOkFrame> {
    return this.client.cancel(room, messageId);
  }

  #answered(room: string, replyTo: string): boolean {
    return this.room(room).messages.some((m) => m.reply_to === replyTo);
  }

  /** Stop listening to the client. */
  dispose(): void {
    for (const off of this.#off) off();
    for (const timer of this.#typingTimers.values()) clearTimeout(timer);
    this.#typingTimers.clear();
    this.#listeners.clear();
  }

  // The server's word once welcomed; before that (or in the HTTP fallback) the token's subject.
  #user(): string | null {
    const sub = decodeJwtPayload(this.client.token)?.["sub"];
    return this.client.user ?? (typeof sub === "string" ? sub : null);
  }

  #onState(state: ConnectionState, reason: CloseReason | null): void {
    this.#setConnection({ state, reason, user: this.#user() });
    if (state === "open") return;
    // Typing and presence are live only: what was shown is stale once the socket is gone.
    for (const room of this.#rooms.keys()) this.#update(room, (v) => (v.typing.length ? { typing: [] } : {}));
  }

  #onStatus(room: string, messageId: string, state: ProgressState, detail?: string): void {
    this.#update(room, (v) => {
      const progress = { ...v.progress, [messageId]: detail === undefined ? { state } : { state, detail } };
      const stream = v.replies.find((r) => r.replyTo === messageId);
      if (!stream || (state !== "failed" && state !== "cancelled")) return { progress };
      // It ends without a complete reply; a cancelled one's text so far may still come as a message.
      return { progress, replies: v.replies.map((r) => (r === stream ? { ...r, state } : r)) };
    });
  }

  #onTyping(room: string, from: Sender, state: boolean): void {
    const key = `${room}\u0000${from.kind}\u0000${from.id}`;
    clearTimeout(this.#typingTimers.get(key));
    this.#typingTimers.delete(key);
    if (state) this.#typingTimers.set(key, setTimeout(() => this.#onTyping(room, from, false), TYPING_TTL_MS));
    this.#update(room, (v) => {
      const others = v.typing.filter((s) => s.kind !== from.kind || s.id !== from.id);
      if (!state && others.length === v.typing.length) return {};
      return { typing: state ? [...others, from] : others };
    });
  }

  #onPresence(room: string, user: string, event: "join" | "leave"): void {
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

  #setConnection(change: Partial<ConnectionView>): void {
    this.#connection = Object.freeze({ ...this.#connection, ...change });
    this.#notify();
  }

  #update(room: string, change: (view: RoomView) => Partial<RoomView>): void {
    const view = this.room(room);
    const patch = change(view);
    if (!Object.keys(patch).length) return;
    this.#rooms.set(room, Object.freeze({ ...view, ...patch }));
    this.#notify();
  }

  #notify(): void {
    for (const listener of [...this.#listeners]) listener();
  }
}

/** The reply after a change; `current` itself when the change is stale or a duplicate. */
export function nextReply(current: ReplyStream | undefined, change: ReplyChange): ReplyStream {
  const attempt = change.attempt ?? null;
  const seq = change.seq ?? null;
  const fresh: ReplyStream = { replyTo: change.replyTo, text: change.text, attempt, seq, state: change.state ?? "streaming" };
  if (!current || change.mode === "replace") return fresh;
  if (attempt !== null && current.attempt !== null) {
    if (attempt < current.attempt) return current; // a late piece of an abandoned try
    if (attempt > current.attempt) return fresh; // a new try starts the reply again
    if (seq !== null && current.seq !== null && seq <= current.seq) return current; // already have it
  }
  return { ...current, text: current.text + change.text, attempt: attempt ?? current.attempt, seq: seq ?? current.seq };
}
