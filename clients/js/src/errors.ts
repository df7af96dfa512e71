import type { ErrorCode, ErrorFrame } from "./frames.js";

/**
 * The codes a ChatError may carry: the protocol's error codes, the client's own reasons for
 * stopping, and `http_<status>` when the HTTP API answered without a JSON error body.
 */
export type ChatErrorCode = ErrorCode | "closed" | `http_${number}`;

export interface ChatErrorDetails {
  /** The HTTP status, for errors of the HTTP API. */
  status?: number;
  /** True when the request never got an answer (the network failed). */
  network?: boolean;
  /** The `error` frame the server sent, for errors answered on the socket. */
  frame?: ErrorFrame;
  cause?: unknown;
}

/** An error reported by the server (`code` from the protocol's list) or by the client itself. */
export class ChatError extends Error {
  readonly code: ChatErrorCode;
  readonly status?: number;
  readonly network?: boolean;
  readonly frame?: ErrorFrame;

  constructor(code: ChatErrorCode, message?: string, details: ChatErrorDetails = {}) {
    super(message || code, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "ChatError";
    this.code = code;
    if (details.status !== undefined) this.status = details.status;
    if (details.network !== undefined) this.network = details.network;
    if (details.frame !== undefined) this.frame = details.frame;
  }
}
