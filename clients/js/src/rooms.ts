// Joined rooms: join and rejoin with `since`, de-duplication by message id, and the hand-off of
// the offline queue once a room's replay is complete.

import { ChatError } from "./errors.js";
import type { ChatEventMap, FallbackJoined } from "./events.js";
import type {
  AckFrame,
  BotInfo,
  BotStatusFrame,
  ClientFrame,
  ErrorFrame,
  HistoryPage,
  JoinedFrame,
  MessageFrame,
  ServerFrame,
  Stored,
} from "./frames.js";
import type { HistoryQuery } from "./http.js";
import { Outbox } from "./outbox.js";
import { remember } from "./util.js";

export type Joined = JoinedFrame | FallbackJoined;

/** What the rooms need from the client around them. */
export interface RoomsHost {
  /** A socket that reached `welcome` is open. */
  readonly live: boolean;
  readonly generation: number;
  readonly fallback: boolean;
  readonly user: string | null;
  send(frame: ClientFrame): boolean;
  request(frame: ClientFrame): Promise<ServerFrame>;
  ref(): string;
  emit<K extends keyof ChatEventMap>(type: K, detail: ChatEventMap[K]): void;
  history(room: string, query: HistoryQuery): Promise<HistoryPage>;
  wakePoll(): void;
}

export interface RoomOptions {
  replayWaitMs: number;
  seenIdsPerRoom: number;
}

interface Waiter {
  resolve: (joined: Joined) => void;
  reject: (error: ChatError) => void;
}

export interface Room {
  /** The newest message id seen: the resume point. */
  lastId: string | null;
  readonly seen: Set<string>;
  joined: boolean;
  joinRef: string | null;
  /** The position the current join asked for. */
  since: string | null;
  /** The id that ends the replay after a join with `since`; the queue waits for it. */
  replayUntil: string | null;
  replayTimer: ReturnType<typeof setTimeout> | undefined;
  /** Our own messages seen in the room that no ack has claimed yet (see reconcile). */
  unclaimed: MessageFrame[];
  waiters: Waiter[];
  bot: BotInfo | null;
  joinedFrame: Joined | null;
  wasJoined: boolean;
}

const UNCLAIMED_MAX = 50;
const HISTORY_PAGE = 100;

export class RoomBook {
  readonly outbox: Outbox;
  readonly #rooms = new Map<string, Room>();
  readonly #host: RoomsHost;
  readonly #o: RoomOptions;

  constructor(host: RoomsHost, options: RoomOptions) {
    this.#host = host;
    this.#o = options;
    this.outbox = new Outbox(options.seenIdsPerRoom);
  }

  get(room: string): Room | undefined {
    return this.#rooms.get(room);
  }

  entries(): [string, Room][] {
    return [...this.#rooms];
  }

  join(room: string, since?: string | null): Promise<Joined> {
    let r = this.#rooms.get(room);
    if (!r) {
      r = newRoom();
      this.#rooms.set(room, r);
    }
    if (since != null) r.lastId = String(since);
    if (r.joined && r.joinedFrame) return Promise.resolve(r.joinedFrame);
    const room_ = r;
    const promise = new Promise<Joined>((resolve, reject) => room_.waiters.push({ resolve, reject }));
    if (this.#host.live && !r.joinRef) this.#sendJoin(room, r);
    else if (this.#host.fallback) this.#host.wakePoll();
    return promise;
  }

  async leave(room: string): Promise<void> {
    const r = this.#rooms.get(room);
    if (!r) return;
    this.drop(room, new ChatError("bad_request", "left the room"));
    if (this.#host.live && r.joined) await this.#host.request({ type: "leave", room }).catch(() => undefined);
  }

  /** Forget a room: its pending join and queued messages are rejected with `error`. */
  drop(room: string, error: ChatError): void {
    const r = this.#rooms.get(room);
    if (!r) return;
    this.#rooms.delete(room);
    clearTimeout(r.replayTimer);
    settleWaiters(r, error);
    this.outbox.failWhere((e) => e.room === room, error);
  }

  send(room: string, text: string): Promise<Stored> {
    const promise = this.outbox.add(this.#host.ref(), room, text);
    this.flush(room);
    return promise;
  }

  /** The socket reached `welcome`: join every room again from its position. */
  rejoinAll(): void {
    for (const [room, r] of this.#rooms) void this.#rejoin(room, r);
  }

  async #rejoin(room: string, r: Room): Promise<void> {
    if (r.lastId === null && r.wasJoined) {
      // The room was empty when we joined, so there is no position to resume from: read what was
      // posted meanwhile first, so that nothing is missed and an unacked message can be recognised.
      const generation = this.#host.generation;
      const current = () => generation === this.#host.generation && this.#host.live;
      await this.catchUp(room, r, current).catch(() => undefined);
      if (!current() || this.#rooms.get(room) !== r || r.joinRef) return;
    }
    this.#sendJoin(room, r);
  }

  #sendJoin(room: string, r: Room): void {
    r.joinRef = this.#host.ref();
    r.since = r.lastId;
    const frame: ClientFrame = { type: "join", room, ref: r.joinRef };
    if (r.since != null) frame.since = r.since;
    this.#host.send(frame);
  }

  /** The socket is gone: every room must be joined again. */
  connectionLost(): void {
    for (const r of this.#rooms.values()) {
      clearTimeout(r.replayTimer);
      Object.assign(r, { joined: false, joinRef: null, replayUntil: null, replayTimer: undefined });
    }
  }

  /** The client stopped for good: reject every pending join and queued message. */
  shutdown(error: ChatError): void {
    this.connectionLost();
    for (const r of this.#rooms.values()) settleWaiters(r, error);
    this.outbox.failWhere(() => true, error);
  }

  onJoined(f: JoinedFrame): void {
    const r = this.#rooms.get(f.room);
    if (!r) return;
    Object.assign(r, { joined: true, joinRef: null, bot: f.bot ?? r.bot, joinedFrame: f, wasJoined: true });
    const lastId = f.last_id ?? null;
    if (r.since == null || f.recovered === false) {
      if (lastId !== null) r.lastId = lastId;
      if (r.since != null) this.#host.emit("resync", { room: f.room, since: r.since, last_id: lastId });
    }
    settleWaiters(r, null, f);
    // With `since`, the missed messages follow `joined`; hold our queue until the one with last_id.
    // Without recovery the replay may be partial or empty, so there is nothing reliable to wait for.
    if (r.since != null && f.recovered !== false && lastId !== null && lastId !== r.since) {
      r.replayUntil = lastId;
      r.replayTimer = setTimeout(() => this.#replayDone(f.room), this.#o.replayWaitMs);
    } else {
      this.#replayDone(f.room);
    }
  }

  /** Record a message; false when it is a duplicate that the application must not see again. */
  onMessage(f: MessageFrame): boolean {
    const r = this.#rooms.get(f.room);
    if (!r || f.id == null) return true;
    const id = String(f.id);
    if (r.seen.has(id)) return false;
    remember(r.seen, id, this.#o.seenIdsPerRoom);
    r.lastId = id;
    const entry = f.client_id === undefined ? undefined : this.outbox.byRef(f.client_id);
    if (entry?.room === f.room) {
      // Our client id on the stored copy: exact, whether or not its ack ever comes.
      this.claim(f.room, id);
      this.outbox.settle(entry, { id, ts: f.ts });
    } else if (
      f.client_id === undefined &&
      f.from?.kind === "user" &&
      f.from.id === this.#host.user &&
      !this.outbox.isAcked(id)
    ) {
      r.unclaimed.push(f);
      if (r.unclaimed.length > UNCLAIMED_MAX) r.unclaimed.shift();
    }
    if (id === r.replayUntil) this.#replayDone(f.room);
    return true;
  }

  onAck(f: AckFrame): void {
    const entry = f.ref == null ? undefined : this.outbox.byRef(String(f.ref));
    if (!entry) return;
    this.claim(entry.room, f.id);
    this.outbox.settle(entry, { id: f.id, ts: f.ts });
  }

  onError(f: ErrorFrame): void {
    if (f.ref == null) return;
    const ref = String(f.ref);
    const error = new ChatError(f.code ?? "internal", f.message, { frame: f });
    const entry = this.outbox.byRef(ref);
    if (entry) this.outbox.fail(entry, error);
    for (const [room, r] of this.#rooms) {
      if (r.joinRef === ref) this.drop(room, error);
    }
  }

  onBotStatus(f: BotStatusFrame): void {
    const r = this.#rooms.get(f.bot);
    if (r?.bot) r.bot = { ...r.bot, status: f.status, error: f.error ?? null };
  }

  /** Message `id` is ours: no longer a candidate for reconciling an unacked send. */
  claim(room: string, id: string): void {
    this.outbox.claim(String(id));
    const r = this.#rooms.get(room);
    if (r) r.unclaimed = r.unclaimed.filter((m) => String(m.id) !== String(id));
  }

  // Messages that went out on an earlier connection but got no ack may have been stored. Each is sent
  // with its ref as `client_id`: a server that stores client ids returns it on the stored copy
  // (settled in onMessage) and answers a resend with the first ack, so resending is safe. For copies
  // without a client id (an older server), match our own messages that no ack claimed (same sender,
  // same text; seen live or replayed after `since`), oldest first, and resend only the unmatched ones.
  reconcile(room: string): void {
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

  #replayDone(room: string): void {
    const r = this.#rooms.get(room);
    if (!r) return;
    clearTimeout(r.replayTimer);
    Object.assign(r, { replayUntil: null, replayTimer: undefined });
    this.reconcile(room);
    this.flush(room);
  }

  /** Write the room's queued messages to the socket, in order, once it is joined and replayed. */
  flush(room: string): void {
    if (this.#host.fallback) {
      this.#host.wakePoll();
      return;
    }
    const r = this.#rooms.get(room);
    if (!this.#host.live || !r?.joined || r.replayUntil !== null) return;
    const generation = this.#host.generation;
    for (const entry of this.outbox.of(room)) {
      if (entry.sentOn === generation || entry.posting) continue;
      const frame: ClientFrame = { type: "message", room, text: entry.text, ref: entry.ref, client_id: entry.ref };
      if (!this.#host.send(frame)) return;
      entry.sentOn = generation;
    }
  }

  /**
   * Fetch what the room got after our position over HTTP and deliver it as `message` events.
   * `current()` tells whether the answers still matter when they arrive; false when they did not.
   */
  async catchUp(room: string, r: Room, current: () => boolean, pages = 5): Promise<boolean> {
    for (let page = 0; page < pages; page++) {
      const query = r.lastId === null ? { limit: HISTORY_PAGE } : { since: r.lastId, limit: HISTORY_PAGE };
      const res = await this.#host.history(room, query);
      if (!current() || this.#rooms.get(room) !== r) return false;
      const messages = res.messages ?? [];
      for (const m of messages) {
        const frame: MessageFrame = { ...m, type: "message", room };
        if (this.onMessage(frame)) this.#host.emit("message", frame);
      }
      if (res.last_id != null && r.lastId === null) r.lastId = String(res.last_id);
      if (messages.length < HISTORY_PAGE) break;
    }
    return true;
  }
}

function newRoom(): Room {
  return {
    lastId: null,
    seen: new Set(),
    joined: false,
    joinRef: null,
    since: null,
    replayUntil: null,
    replayTimer: undefined,
    unclaimed: [],
    waiters: [],
    bot: null,
    joinedFrame: null,
    wasJoined: false,
  };
}

export function settleWaiters(r: Room, error: ChatError | null, value?: Joined): void {
  const waiters = r.waiters;
  r.waiters = [];
  for (const w of waiters) {
    if (error) w.reject(error);
    else if (value) w.resolve(value);
  }
}
