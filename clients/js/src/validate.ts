// Runtime checks of the frames in frames.ts, kept beside the types and tied to them by the compiler.
//
// Each check is a Guard<T>. Its phantom type is invariant, and an object's checks are written as a
// Shape<T> (one check per key, no more, no less), so a check that drifts from its interface (a
// key missing or extra, a field made optional, a type changed) fails `tsc`. The tests run these
// checks in strict mode (unknown keys reported) over frames recorded from a real gateway, so a
// server change that the types do not know about fails the tests.

import type {
  Bot,
  BotInfo,
  BotStatus,
  ErrorCode,
  FrameOf,
  HistoryPage,
  MessageFrame,
  ProgressState,
  Ref,
  Sender,
  ServerFrame,
  ServerFrameType,
} from "./frames.js";

interface Context {
  strict: boolean;
  problems: string[];
}

/** A runtime check for values of type T. */
export interface Guard<T> {
  readonly describe: string;
  readonly check: (value: unknown, path: string, ctx: Context) => void;
  /** For objects: which keys the type has, and which of them may be absent. */
  readonly keys?: { readonly required: readonly string[]; readonly optional: readonly string[] };
  readonly optional?: boolean;
  /** Never set: carries T, invariantly, for the compiler. */
  readonly _type?: (value: T) => T;
}

/** One check per key of T. */
export type Shape<T> = { [K in keyof T]-?: Guard<T[K]> };

function leaf<T>(describe: string, test: (value: unknown) => boolean): Guard<T> {
  return {
    describe,
    check(value, path, ctx) {
      if (!test(value)) ctx.problems.push(`${path}: expected ${describe}, got ${JSON.stringify(value)}`);
    },
  };
}

export const str: Guard<string> = leaf("a string", (v) => typeof v === "string");
export const num: Guard<number> = leaf("a number", (v) => typeof v === "number" && Number.isFinite(v));
export const int: Guard<number> = leaf("an integer", (v) => Number.isSafeInteger(v));
export const bool: Guard<boolean> = leaf("a boolean", (v) => typeof v === "boolean");
export const ref: Guard<Ref> = leaf("a ref (string or integer)", (v) => typeof v === "string" || Number.isSafeInteger(v));

export function lit<const T extends string>(value: T): Guard<T> {
  return leaf(JSON.stringify(value), (v) => v === value);
}

export function oneOf<const T extends string>(...values: T[]): Guard<T> {
  return leaf(`one of ${values.join(", ")}`, (v) => (values as unknown[]).includes(v));
}

export function nullable<T>(guard: Guard<T>): Guard<T | null> {
  return {
    describe: `${guard.describe} or null`,
    check: (value, path, ctx) => {
      if (value !== null) guard.check(value, path, ctx);
    },
  };
}

/** A key that may be absent (never `null` unless the inner check allows it). */
export function opt<T>(guard: Guard<T>): Guard<T | undefined> {
  return { ...guard, optional: true } as Guard<T | undefined>;
}

export function arr<T>(guard: Guard<T>): Guard<T[]> {
  return {
    describe: `a list of ${guard.describe}`,
    check(value, path, ctx) {
      if (!Array.isArray(value)) {
        ctx.problems.push(`${path}: expected a list, got ${JSON.stringify(value)}`);
        return;
      }
      value.forEach((item, i) => guard.check(item, `${path}[${i}]`, ctx));
    },
  };
}

/** Any JSON object (a bot's config, for instance). */
export const record: Guard<Record<string, unknown>> = leaf(
  "an object",
  (v) => typeof v === "object" && v !== null && !Array.isArray(v),
);

export function obj<T>(shape: Shape<T>): Guard<T> {
  const entries = Object.entries(shape) as [string, Guard<unknown>][];
  const known = new Set(entries.map(([key]) => key));
  return {
    describe: "an object",
    keys: {
      required: entries.filter(([, g]) => !g.optional).map(([key]) => key),
      optional: entries.filter(([, g]) => g.optional).map(([key]) => key),
    },
    check(value, path, ctx) {
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        ctx.problems.push(`${path}: expected an object, got ${JSON.stringify(value)}`);
        return;
      }
      const record = value as Record<string, unknown>;
      for (const [key, guard] of entries) {
        if (!(key in record)) {
          if (!guard.optional) ctx.problems.push(`${path}.${key}: missing`);
          continue;
        }
        guard.check(record[key], `${path}.${key}`, ctx);
      }
      if (ctx.strict) {
        for (const key of Object.keys(record)) {
          if (!known.has(key)) ctx.problems.push(`${path}.${key}: not in the client's types`);
        }
      }
    },
  };
}

// ---- the protocol's shapes ----------------------------------------------------------------------

const errorCode: Guard<ErrorCode> = oneOf(
  "bad_request",
  "unauthorized",
  "forbidden",
  "not_found",
  "conflict",
  "rate_limited",
  "too_large",
  "token_expired",
  "unavailable",
  "internal",
);
const botStatus: Guard<BotStatus> = oneOf("starting", "running", "stopping", "stopped", "error");
const progress: Guard<ProgressState> = oneOf("processing", "thinking", "executing", "done", "failed", "cancelled");

export const sender: Guard<Sender> = obj<Sender>({ kind: oneOf("user", "bot"), id: str, name: opt(str) });

export const botInfo: Guard<BotInfo> = obj<BotInfo>({
  id: str,
  name: str,
  kind: str,
  status: botStatus,
  error: nullable(str),
});

export const message: Guard<MessageFrame> = obj<MessageFrame>({
  type: lit("message"),
  id: str,
  ts: int,
  room: str,
  from: sender,
  text: str,
  reply_to: opt(str),
  queued: opt(bool),
  client_id: opt(str),
  state: opt(lit("cancelled")),
});

export const bot: Guard<Bot> = obj<Bot>({
  id: str,
  name: str,
  kind: str,
  status: botStatus,
  error: nullable(str),
  owner: str,
  config: record,
  created: int,
});

export const historyPage: Guard<HistoryPage> = obj<HistoryPage>({ messages: arr(message), last_id: nullable(str) });

/** A check for every server frame type; the mapped type makes a missing one a compile error. */
export const SERVER_FRAMES: { readonly [K in ServerFrameType]: Guard<FrameOf<K>> } = {
  welcome: obj<FrameOf<"welcome">>({
    type: lit("welcome"),
    protocol: int,
    session: str,
    user: str,
    node: str,
    heartbeat: num,
  }),
  joined: obj<FrameOf<"joined">>({
    type: lit("joined"),
    room: str,
    bot: botInfo,
    members: arr(str),
    member_count: int,
    last_id: nullable(str),
    recovered: bool,
    ref: opt(ref),
  }),
  left: obj<FrameOf<"left">>({ type: lit("left"), room: str, reason: opt(str), ref: opt(ref) }),
  ack: obj<FrameOf<"ack">>({ type: lit("ack"), id: str, ts: int, queued: opt(bool), ref: opt(ref) }),
  pong: obj<FrameOf<"pong">>({ type: lit("pong"), ref: opt(ref) }),
  auth_ok: obj<FrameOf<"auth_ok">>({ type: lit("auth_ok"), exp: int, ref: opt(ref) }),
  bot_status: obj<FrameOf<"bot_status">>({
    type: lit("bot_status"),
    bot: str,
    status: botStatus,
    ts: opt(int),
    error: opt(nullable(str)),
    ref: opt(ref),
  }),
  error: obj<FrameOf<"error">>({ type: lit("error"), code: errorCode, message: str, ref: opt(ref) }),
  reconnect: obj<FrameOf<"reconnect">>({ type: lit("reconnect"), delay_ms: int }),
  message,
  presence: obj<FrameOf<"presence">>({ type: lit("presence"), room: str, user: str, event: oneOf("join", "leave") }),
  typing: obj<FrameOf<"typing">>({ type: lit("typing"), room: str, from: sender, state: bool }),
  status: obj<FrameOf<"status">>({
    type: lit("status"),
    room: str,
    message_id: str,
    state: progress,
    detail: opt(str),
  }),
  delta: obj<FrameOf<"delta">>({ type: lit("delta"), room: str, reply_to: str, text: str, attempt: int, seq: int }),
  stream: obj<FrameOf<"stream">>({ type: lit("stream"), room: str, reply_to: str, text: str, attempt: int, seq: int }),
  cancel_ok: obj<FrameOf<"cancel_ok">>({ type: lit("cancel_ok"), room: str, message: str, ref: opt(ref) }),
};

/** Every server frame `type` of protocol 1. */
export const SERVER_FRAME_TYPES = Object.freeze(Object.keys(SERVER_FRAMES) as ServerFrameType[]);

export interface CheckOptions {
  /** Also report keys the client's types do not know (the protocol allows new ones). */
  strict?: boolean;
}

/** Problems found in `value` by `guard`, as readable lines; empty when it conforms. */
export function problems<T>(guard: Guard<T>, value: unknown, options: CheckOptions = {}): string[] {
  const ctx: Context = { strict: options.strict ?? false, problems: [] };
  guard.check(value, "$", ctx);
  return ctx.problems;
}

/** Problems found in a server frame (an unknown `type` is one); empty when it conforms. */
export function checkServerFrame(value: unknown, options: CheckOptions = {}): string[] {
  const type = (value as { type?: unknown } | null)?.type;
  if (typeof type !== "string" || !Object.hasOwn(SERVER_FRAMES, type)) {
    return [`$.type: not a server frame type: ${JSON.stringify(type)}`];
  }
  return problems(SERVER_FRAMES[type as ServerFrameType] as Guard<unknown>, value, options);
}

export function isServerFrame(value: unknown): value is ServerFrame {
  return checkServerFrame(value).length === 0;
}
