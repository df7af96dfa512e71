// The WebSocket: one connection at a time, reconnects with full-jitter backoff, a handshake that
// must reach `welcome`, an application heartbeat, and requests matched to answers by `ref`.
//
// The transport knows sockets and frames, not rooms: it reports every frame and every lost socket
// to its owner (the ChatClient), which decides what a close code means and when to reconnect.

import { ChatError } from "./errors.js";
import type { ClientFrame, ServerFrame } from "./frames.js";
import { backoffDelay, Timers } from "./util.js";

/** What the client needs of a WebSocket; the browser's and the `ws` package's both fit. */
export interface SocketLike {
  readonly readyState: number;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => SocketLike;

export interface TransportOptions {
  url: string;
  WebSocket: WebSocketConstructor;
  backoffBaseMs: number;
  backoffCapMs: number;
  handshakeTimeoutMs: number;
  requestTimeoutMs: number;
  /** A connection that lived this long resets the backoff. */
  stableAfterMs: number;
  random?: () => number;
}

export interface TransportOwner {
  /** The token to connect with; may throw (the owner's `tokenFailed` then decides). */
  token(): Promise<string | null>;
  tokenFailed(error: unknown): void;
  /** Every parsed server frame, `welcome` included, after the transport's own bookkeeping. */
  frame(frame: ServerFrame): void;
  /** The socket is gone; `welcomed` says whether it had reached `welcome`. */
  down(code: number, welcomed: boolean): void;
}

interface Pending {
  resolve: (frame: ServerFrame) => void;
  reject: (error: ChatError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;

export class Transport {
  readonly #o: TransportOptions;
  readonly #owner: TransportOwner;
  readonly #timers = new Timers();
  readonly #requests = new Map<string, Pending>();
  // Refs double as message client ids, so they must not repeat across page loads: 52 random bits.
  readonly #refPrefix = Math.floor(Math.random() * 2 ** 52).toString(36);
  #refCount = 0;
  #ws: SocketLike | null = null;
  #active = false; // between start() and stop()
  #generation = 0; // of the current socket: handlers of older sockets do nothing
  #welcomed = false;
  #openedAt = 0;
  #lastFrameAt = 0;
  #failures = 0; // consecutive attempts that never reached `welcome`
  #attempt = 0; // backoff exponent
  #serverDelayMs: number | null = null; // from a `reconnect` frame: replaces the backoff once

  constructor(options: TransportOptions, owner: TransportOwner) {
    this.#o = options;
    this.#owner = owner;
  }

  /** True while a socket that reached `welcome` is open. */
  get live(): boolean {
    return this.#welcomed;
  }

  /** Changes whenever a socket is opened or lost. */
  get generation(): number {
    return this.#generation;
  }

  /** Consecutive attempts that never reached `welcome`. */
  get failures(): number {
    return this.#failures;
  }

  start(): void {
    this.#active = true;
    this.#failures = 0;
    this.#attempt = 0;
    void this.#open();
  }

  /** Close for good; pending requests are rejected with `error`. */
  stop(error: ChatError): void {
    this.#active = false;
    const ws = this.#ws;
    this.#generation++;
    this.#ws = null;
    this.#welcomed = false;
    this.#timers.clearAll();
    if (ws) closeQuietly(ws, 1000);
    this.#rejectRequests(error);
  }

  /** Count a failed attempt that never got as far as a socket (no token, for instance). */
  countFailure(): void {
    this.#failures++;
  }

  /** Open a new socket after `delayMs`, or after the server's delay, or after the backoff. */
  reconnectAfter(delayMs?: number): void {
    let delay = delayMs;
    if (delay === undefined && this.#serverDelayMs !== null) delay = (this.#o.random ?? Math.random)() * this.#serverDelayMs;
    delay ??= backoffDelay(this.#attempt++, this.#o.backoffBaseMs, this.#o.backoffCapMs, this.#o.random);
    this.#serverDelayMs = null;
    this.#timers.set("reconnect", () => void this.#open(), delay);
  }

  /** Abandon the socket without waiting for its close handshake (it may be dead). */
  drop(): void {
    const ws = this.#ws;
    if (!ws) return;
    this.#gone(this.#generation, 1006);
    closeQuietly(ws);
  }

  /** A fresh `ref` for a client frame. */
  ref(): string {
    return `${this.#refPrefix}-${++this.#refCount}`;
  }

  /** Send a frame if the socket is open; false when it is not. */
  send(frame: ClientFrame): boolean {
    if (!this.#ws || this.#ws.readyState !== OPEN) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  /** Send a frame with a new `ref`; resolves with the answer carrying it, rejects on an `error` answer. */
  request(frame: ClientFrame): Promise<ServerFrame> {
    return new Promise((resolve, reject) => {
      const ref = this.ref();
      if (!this.send({ ...frame, ref })) {
        reject(new ChatError("unavailable", "not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.#requests.delete(ref);
        reject(new ChatError("unavailable", `no answer to ${frame.type}`));
      }, this.#o.requestTimeoutMs);
      this.#requests.set(ref, { resolve, reject, timer });
    });
  }

  async #open(): Promise<void> {
    this.#timers.clear("reconnect");
    const generation = ++this.#generation;
    let token: string | null;
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
    let ws: SocketLike;
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
    // A handshake that never yields `welcome` counts as a failed attempt.
    this.#timers.set("handshake", () => this.#dropIf(generation), this.#o.handshakeTimeoutMs);
  }

  #dropIf(generation: number): void {
    if (generation === this.#generation) this.drop();
  }

  #gone(generation: number, code: number): void {
    if (generation !== this.#generation) return;
    this.#generation++; // late events of this socket are ignored from now on
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

  #receive(data: unknown): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(String(data)) as ServerFrame;
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
    const ref = "ref" in frame ? frame.ref : undefined;
    if (ref != null && frame.type !== "ack") this.#settle(String(ref), frame);
    this.#owner.frame(frame);
  }

  #settle(ref: string, frame: ServerFrame): void {
    const pending = this.#requests.get(ref);
    if (!pending) return;
    this.#requests.delete(ref);
    clearTimeout(pending.timer);
    if (frame.type === "error") pending.reject(new ChatError(frame.code ?? "internal", frame.message, { frame }));
    else pending.resolve(frame);
  }

  #rejectRequests(error: ChatError): void {
    for (const [ref, pending] of this.#requests) {
      this.#requests.delete(ref);
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }

  // Our own ping keeps the socket honest: a connection that stays silent for two periods is dead.
  #startHeartbeat(seconds: number): void {
    const period = seconds * 1000;
    const generation = this.#generation;
    const beat = (): void => {
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
}

function closeQuietly(ws: SocketLike, code?: number): void {
  try {
    ws.close(code);
  } catch {
    // already closing
  }
}
