// The offline queue: messages handed to send() that the server has not acknowledged yet.

import type { ChatError } from "./errors.js";
import type { Stored } from "./frames.js";
import { remember } from "./util.js";

export interface Outgoing {
  readonly ref: string;
  readonly room: string;
  readonly text: string;
  /** Generation of the socket it was last written to: 0 never, -1 maybe posted over HTTP. */
  sentOn: number;
  /** A POST of it is in flight. */
  posting: boolean;
}

interface Entry extends Outgoing {
  resolve: (stored: Stored) => void;
  reject: (error: ChatError) => void;
}

export class Outbox {
  #entries: Entry[] = [];
  /** Ids of messages an ack (or a reconciliation) has given to one of our sends. */
  readonly #acked = new Set<string>();
  readonly #ackedCap: number;

  constructor(ackedCap: number) {
    this.#ackedCap = ackedCap;
  }

  /** Queue a message; resolves once the server stored it. */
  add(ref: string, room: string, text: string): Promise<Stored> {
    return new Promise((resolve, reject) => {
      this.#entries.push({ ref, room, text, sentOn: 0, posting: false, resolve, reject });
    });
  }

  /** The queued messages of a room, oldest first (a copy: settling them while iterating is safe). */
  of(room: string): Outgoing[] {
    return this.#entries.filter((e) => e.room === room);
  }

  has(entry: Outgoing): boolean {
    return this.#entries.includes(entry as Entry);
  }

  byRef(ref: string): Outgoing | undefined {
    return this.#entries.find((e) => e.ref === ref);
  }

  isAcked(id: string): boolean {
    return this.#acked.has(id);
  }

  /** Record that message `id` is one of ours, whether or not a queued entry is waiting for it. */
  claim(id: string): void {
    remember(this.#acked, id, this.#ackedCap);
  }

  /** The server stored `entry` as `stored`: resolve its send(). */
  settle(entry: Outgoing, stored: Stored): void {
    if (!this.#remove(entry)) return;
    this.claim(stored.id);
    (entry as Entry).resolve(stored);
  }

  fail(entry: Outgoing, error: ChatError): void {
    if (this.#remove(entry)) (entry as Entry).reject(error);
  }

  failWhere(match: (entry: Outgoing) => boolean, error: ChatError): void {
    for (const entry of this.#entries.filter(match)) this.fail(entry, error);
  }

  #remove(entry: Outgoing): boolean {
    const i = this.#entries.indexOf(entry as Entry);
    if (i < 0) return false;
    this.#entries.splice(i, 1);
    return true;
  }
}
