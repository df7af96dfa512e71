// Typing reports: `true` at most once per throttle window, `false` after the user stops.

interface RoomTyping {
  sent: boolean;
  at: number;
  idle: ReturnType<typeof setTimeout> | undefined;
}

export class TypingThrottle {
  readonly #rooms = new Map<string, RoomTyping>();
  readonly #throttleMs: number;
  readonly #idleMs: number;
  /** Sends the frame when the room is joined on a live socket; false when it could not. */
  readonly #send: (room: string, state: boolean) => boolean;

  constructor(throttleMs: number, idleMs: number, send: (room: string, state: boolean) => boolean) {
    this.#throttleMs = throttleMs;
    this.#idleMs = idleMs;
    this.#send = send;
  }

  report(room: string, state: boolean): void {
    let t = this.#rooms.get(room);
    if (!t) this.#rooms.set(room, (t = { sent: false, at: 0, idle: undefined }));
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

  clear(): void {
    for (const t of this.#rooms.values()) clearTimeout(t.idle);
    this.#rooms.clear();
  }
}
