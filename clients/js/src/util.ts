// Small pure helpers shared by the client's parts.

/** The JWT's payload as an object, or null; the signature is the server's business, not checked here. */
export function decodeJwtPayload(token: string | null | undefined): Record<string, unknown> | null {
  try {
    const part = String(token).split(".")[1];
    if (part === undefined) return null;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = b64.padEnd(b64.length + ((4 - (b64.length % 4)) % 4), "=");
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const payload: unknown = JSON.parse(new TextDecoder().decode(bytes));
    return typeof payload === "object" && payload !== null ? (payload as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** The token's `exp` in Unix milliseconds, or null when it has none. */
export function tokenExpMs(token: string | null | undefined): number | null {
  const exp = decodeJwtPayload(token)?.["exp"];
  return typeof exp === "number" ? exp * 1000 : null;
}

export function isExpired(token: string | null | undefined, now = Date.now()): boolean {
  const exp = tokenExpMs(token);
  return exp !== null && exp <= now;
}

/** Full-jitter backoff: a uniform random delay in [0, min(cap, base * 2^attempt)). */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  return random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

/** The UTF-8 size of a frame once encoded. */
export function frameBytes(frame: unknown): number {
  return new TextEncoder().encode(JSON.stringify(frame)).length;
}

/** Add to a bounded set: the oldest values fall out first (Sets iterate in insertion order). */
export function remember<T>(set: Set<T>, value: T, cap: number): void {
  set.add(value);
  if (set.size > cap) {
    const oldest = set.values().next();
    if (!oldest.done) set.delete(oldest.value);
  }
}

/** The WebSocket URL (http(s) turned into ws(s)) and the HTTP API's base, from the options. */
export function resolveUrls(url: string | undefined, httpBase: string | undefined): { wsUrl: string; httpBase: string } {
  const here = (globalThis as { location?: { href: string } }).location?.href;
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

/** Named timers: setting one replaces the previous timer of that name. */
export class Timers {
  #timers = new Map<string, ReturnType<typeof setTimeout>>();

  set(name: string, fn: () => void, ms: number): void {
    this.clear(name);
    this.#timers.set(
      name,
      setTimeout(() => {
        this.#timers.delete(name);
        fn();
      }, ms),
    );
  }

  clear(name: string): void {
    clearTimeout(this.#timers.get(name));
    this.#timers.delete(name);
  }

  has(name: string): boolean {
    return this.#timers.has(name);
  }

  clearAll(): void {
    for (const name of [...this.#timers.keys()]) this.clear(name);
  }
}
