// The HTTP fallback: while the WebSocket cannot be reached, send by POST and receive by polling.

import type { ChatError } from "./errors.js";
import type { ChatEventMap, FallbackJoined } from "./events.js";
import type { HttpApi } from "./http.js";
import { type Room, type RoomBook, settleWaiters } from "./rooms.js";
import { Timers } from "./util.js";

export interface PollerHost {
  /** The client is in the `fallback` state. */
  readonly active: boolean;
  emit<K extends keyof ChatEventMap>(type: K, detail: ChatEventMap[K]): void;
  /** The HTTP API refused the token: stop for good. */
  unauthorized(): void;
}

export class Poller {
  readonly #rooms: RoomBook;
  readonly #http: HttpApi;
  readonly #host: PollerHost;
  readonly #intervalMs: number;
  readonly #pagesPerTick: number;
  readonly #timers = new Timers();
  #polling = false;

  constructor(rooms: RoomBook, http: HttpApi, host: PollerHost, intervalMs: number, pagesPerTick: number) {
    this.#rooms = rooms;
    this.#http = http;
    this.#host = host;
    this.#intervalMs = intervalMs;
    this.#pagesPerTick = pagesPerTick;
  }

  /** Poll now (unless a round is in flight), then every interval while the fallback lasts. */
  wake(): void {
    if (this.#polling || !this.#host.active) return;
    this.#polling = true;
    this.#timers.clear("poll");
    void this.#pollAll().finally(() => {
      this.#polling = false;
      if (this.#host.active) this.#timers.set("poll", () => this.wake(), this.#intervalMs);
    });
  }

  /** Stop polling; a round still in flight sees the state change and stops. */
  stop(): void {
    this.#timers.clearAll();
  }

  async #pollAll(): Promise<void> {
    for (const [room, r] of this.#rooms.entries()) {
      if (!this.#host.active) return;
      try {
        await this.#pollRoom(room, r);
        await this.#postQueued(room);
      } catch (err) {
        this.#failed(room, err as ChatError);
      }
    }
  }

  #failed(room: string, err: ChatError): void {
    if (err.code === "forbidden" || err.code === "not_found") this.#rooms.drop(room, err);
    if (err.status === 401) {
      this.#host.unauthorized();
      return;
    }
    if (!err.network) this.#host.emit("error", { type: "error", code: err.code, message: err.message, room });
  }

  async #pollRoom(room: string, r: Room): Promise<void> {
    const bot = await this.#http.getBot(room);
    if (!this.#host.active) return;
    const changed = !r.bot || r.bot.status !== bot.status || (r.bot.error ?? null) !== (bot.error ?? null);
    r.bot = { id: bot.id, name: bot.name, kind: bot.kind, status: bot.status, error: bot.error ?? null };
    if (r.waiters.length) {
      // No presence over HTTP: the synthetic `joined` says so with `fallback: true`.
      const joined: FallbackJoined = {
        type: "joined",
        room,
        bot: r.bot,
        members: [],
        member_count: null,
        last_id: r.lastId,
        recovered: r.lastId !== null,
        fallback: true,
      };
      this.#host.emit("joined", joined);
      settleWaiters(r, null, joined);
    } else if (changed) {
      this.#host.emit("bot_status", { type: "bot_status", bot: room, status: bot.status, error: bot.error ?? null });
    }
    if (await this.#rooms.catchUp(room, r, () => this.#host.active, this.#pagesPerTick)) this.#rooms.reconcile(room);
  }

  // In order, one at a time: a failure leaves the rest queued for the next tick.
  async #postQueued(room: string): Promise<void> {
    const outbox = this.#rooms.outbox;
    for (const entry of outbox.of(room)) {
      if (!this.#host.active || !outbox.has(entry)) return;
      entry.posting = true;
      try {
        const stored = await this.#http.postMessage(room, entry.text, entry.ref);
        this.#rooms.claim(room, stored.id);
        outbox.settle(entry, { id: stored.id, ts: stored.ts });
      } catch (err) {
        const e = err as ChatError;
        if (e.network || e.status === 429 || (e.status ?? 0) >= 500) {
          entry.sentOn = -1; // may have arrived: the next poll finds it by client_id, or the repeat is answered with it
          return;
        }
        outbox.fail(entry, e);
      } finally {
        entry.posting = false;
      }
    }
  }
}
