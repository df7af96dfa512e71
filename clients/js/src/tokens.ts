// The token: the current one, one refresh at a time, and a refresh scheduled ahead of `exp`.

import { ChatError } from "./errors.js";
import { isExpired, Timers, tokenExpMs } from "./util.js";

export type TokenSource = () => string | Promise<string>;

export interface TokenOptions {
  token?: string | null;
  /** Asked for the first token (and for refreshes when `onTokenRefresh` is absent). */
  getToken?: TokenSource | null;
  /** Asked shortly before the token expires, after a close with 4001, and after an HTTP 401. */
  onTokenRefresh?: TokenSource | null;
  /** Refresh this long before `exp` (halfway through the lifetime for shorter tokens). */
  refreshLeadMs: number;
}

export interface TokenOwner {
  /** A new token arrived: hand it to the live connection, if any. */
  refreshed(token: string): void;
  /** A scheduled refresh failed; it is tried again a few seconds later while the token is valid. */
  failed(error: ChatError): void;
}

const RETRY_MS = 5_000;

export class TokenKeeper {
  readonly #getToken: TokenSource | null;
  readonly #refresher: TokenSource | null;
  readonly #leadMs: number;
  readonly #owner: TokenOwner;
  readonly #timers = new Timers();
  #token: string | null;
  #refreshing: Promise<string> | null = null;

  constructor(options: TokenOptions, owner: TokenOwner) {
    if (!options.token && !options.getToken) throw new TypeError("ChatClient needs a token or a getToken callback");
    this.#token = options.token ?? null;
    this.#getToken = options.getToken ?? null;
    this.#refresher = options.onTokenRefresh ?? options.getToken ?? null;
    this.#leadMs = options.refreshLeadMs;
    this.#owner = owner;
  }

  get canRefresh(): boolean {
    return this.#refresher !== null;
  }

  /** The token as it is now, without asking anyone; used as the key of shared clients. */
  get token(): string | null {
    return this.#token;
  }

  /** A usable token: asks `getToken` the first time, refreshes an expired one. */
  async current(): Promise<string | null> {
    if (this.#getToken && !this.#token) this.#token = await this.#getToken();
    if (isExpired(this.#token)) {
      if (!this.#refresher) throw new ChatError("token_expired", "the token has expired");
      await this.refresh();
    }
    return this.#token;
  }

  /** Ask for a new token; concurrent callers share one refresh. Rejects with `token_expired`. */
  refresh(): Promise<string> {
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
  schedule(): void {
    this.#timers.clear("refresh");
    const exp = tokenExpMs(this.#token);
    if (!this.#refresher || exp === null) return;
    const ttl = exp - Date.now();
    const delay = ttl > 2 * this.#leadMs ? ttl - this.#leadMs : Math.max(ttl / 2, 1_000);
    this.#timers.set("refresh", () => void this.#scheduledRefresh(exp), delay);
  }

  cancel(): void {
    this.#timers.clearAll();
  }

  async #scheduledRefresh(exp: number): Promise<void> {
    try {
      await this.refresh();
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      this.#owner.failed(new ChatError("token_expired", message));
      if (Date.now() < exp) this.#timers.set("refresh", () => this.schedule(), RETRY_MS);
    }
  }
}
