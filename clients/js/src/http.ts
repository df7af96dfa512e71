// The HTTP API (docs/protocol.md, "HTTP API") with the client's token: bots, history, messages.

import { ChatError } from "./errors.js";
import type { Bot, DevToken, HistoryPage, NewBot, Stored } from "./frames.js";

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface HistoryQuery {
  since?: string | null;
  limit?: number | null;
}

export interface HttpAuth {
  /** The token for the next request. */
  current(): Promise<string | null>;
  /** Asked once after a 401; absent when the token cannot be refreshed. */
  refresh: (() => Promise<string>) | null;
}

export class HttpApi {
  readonly #base: string;
  readonly #fetch: FetchLike;
  readonly #auth: HttpAuth;

  constructor(base: string, fetchFn: FetchLike, auth: HttpAuth) {
    this.#base = base;
    this.#fetch = fetchFn;
    this.#auth = auth;
  }

  listBots(): Promise<{ bots: Bot[] }> {
    return this.call("GET", "/api/bots");
  }

  getBot(bot: string): Promise<Bot> {
    return this.call("GET", `/api/bots/${encodeURIComponent(bot)}`);
  }

  createBot({ name, kind = "echo", config }: NewBot): Promise<Bot> {
    return this.call("POST", "/api/bots", config === undefined ? { name, kind } : { name, kind, config });
  }

  deleteBot(bot: string): Promise<null> {
    return this.call("DELETE", `/api/bots/${encodeURIComponent(bot)}`);
  }

  addMember(bot: string, user: string): Promise<null> {
    return this.call("PUT", `/api/bots/${encodeURIComponent(bot)}/members/${encodeURIComponent(user)}`);
  }

  removeMember(bot: string, user: string): Promise<null> {
    return this.call("DELETE", `/api/bots/${encodeURIComponent(bot)}/members/${encodeURIComponent(user)}`);
  }

  botCommand(bot: string, action: "start" | "stop"): Promise<Bot> {
    return this.call("POST", `/api/bots/${encodeURIComponent(bot)}/${action}`, {});
  }

  /** Stop the bot's reply to a user message: 202 {room, message}. */
  cancel(room: string, message: string): Promise<{ room: string; message: string }> {
    return this.call("POST", `/api/bots/${encodeURIComponent(room)}/messages/${encodeURIComponent(message)}/cancel`, {});
  }

  /** Store a message; with `clientId`, a repeat of the same POST stores nothing and answers the first one's id. */
  postMessage(room: string, text: string, clientId?: string): Promise<Stored> {
    const body = clientId === undefined ? { text } : { text, client_id: clientId };
    return this.call("POST", `/api/bots/${encodeURIComponent(room)}/messages`, body);
  }

  /** A room's history, oldest first. */
  history(room: string, { since, limit }: HistoryQuery = {}): Promise<HistoryPage> {
    const query = new URLSearchParams();
    if (since != null) query.set("since", since);
    if (limit != null) query.set("limit", String(limit));
    const qs = query.toString() ? `?${query}` : "";
    return this.call("GET", `/api/bots/${encodeURIComponent(room)}/messages${qs}`);
  }

  /** A JSON request with the token; errors become ChatErrors. One refresh and retry after a 401. */
  async call<T>(method: string, path: string, body?: unknown, retryAuth = true): Promise<T> {
    const token = await this.#auth.current();
    const headers: Record<string, string> = {};
    if (token) headers["Authorization"] = `Bearer ${token}`;
    const init: RequestInit = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res: Response;
    try {
      res = await this.#fetch(this.#base + path, init);
    } catch (err) {
      throw new ChatError("unavailable", "network error", { network: true, cause: err });
    }
    if (res.status === 401 && retryAuth && this.#auth.refresh) {
      await this.#auth.refresh();
      return this.call(method, path, body, false);
    }
    return answer<T>(res);
  }
}

async function answer<T>(res: Response): Promise<T> {
  const data: unknown = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = (data ?? {}) as { error?: unknown; message?: unknown };
    const code = typeof err.error === "string" ? (err.error as ChatError["code"]) : (`http_${res.status}` as const);
    const message = typeof err.message === "string" ? err.message : res.statusText;
    throw new ChatError(code, message, { status: res.status });
  }
  return data as T;
}

/**
 * `POST /api/dev/token`: a token for `user` from a gateway started with development sign-in.
 * For examples and tests; production front ends get tokens from their identity provider.
 */
export async function devToken(base: string, user: string, fetchFn: FetchLike = globalThis.fetch): Promise<DevToken> {
  const res = await fetchFn(`${base.replace(/\/+$/, "")}/api/dev/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  return answer<DevToken>(res);
}
