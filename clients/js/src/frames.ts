// Every frame of wire protocol v1 (docs/protocol.md), as TypeScript types.
//
// Server frames form one discriminated union on `type`. Frames may gain fields in later versions of
// protocol 1; the types list what this version of the client knows. `validate.ts` keeps a runtime
// check beside each type, tied to it by the compiler, and the package's tests hold that check
// against frames recorded from a real gateway.

/** A client frame's `ref`: copied by the server into every direct answer to that frame. */
export type Ref = string | number;

export type ErrorCode =
  | "bad_request"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "rate_limited"
  | "too_large"
  | "token_expired"
  | "unavailable"
  | "internal";

export type BotStatus = "starting" | "running" | "stopping" | "stopped" | "error";

/** Progress of the bot's work on one user message (`status` frames). */
export type ProgressState = "processing" | "thinking" | "executing" | "done" | "failed" | "cancelled";

/** Who wrote a message or is typing. `name` is present when the token (or the bot) has one. */
export interface Sender {
  kind: "user" | "bot";
  id: string;
  name?: string;
}

/** The room's bot as `joined` describes it. */
export interface BotInfo {
  id: string;
  name: string;
  kind: string;
  status: BotStatus;
  error: string | null;
}

// ---- server frames ------------------------------------------------------------------------------

export interface WelcomeFrame {
  type: "welcome";
  protocol: number;
  session: string;
  user: string;
  node: string;
  /** Seconds between the server's WebSocket pings. */
  heartbeat: number;
}

export interface JoinedFrame {
  type: "joined";
  room: string;
  bot: BotInfo;
  members: string[];
  member_count: number;
  last_id: string | null;
  recovered: boolean;
  ref?: Ref;
}

export interface LeftFrame {
  type: "left";
  room: string;
  /** `"removed"` when an owner or an admin took the user out of the room. */
  reason?: string;
  ref?: Ref;
}

export interface AckFrame {
  type: "ack";
  id: string;
  ts: number;
  /** The bot is not running: the request waits for it. */
  queued?: boolean;
  ref?: Ref;
}

export interface PongFrame {
  type: "pong";
  ref?: Ref;
}

export interface AuthOkFrame {
  type: "auth_ok";
  /** The new token's expiry, Unix seconds. */
  exp: number;
  ref?: Ref;
}

/** The answer to `bot.start` / `bot.stop` (with `ref`), or a change announced to the room (with `ts`). */
export interface BotStatusFrame {
  type: "bot_status";
  bot: string;
  status: BotStatus;
  ts?: number;
  error?: string | null;
  ref?: Ref;
}

export interface ErrorFrame {
  type: "error";
  code: ErrorCode;
  message: string;
  ref?: Ref;
}

export interface ReconnectFrame {
  type: "reconnect";
  delay_ms: number;
}

/** A stored message, live or replayed; also what `GET /api/bots/{bot}/messages` returns. */
export interface MessageFrame {
  type: "message";
  id: string;
  /** Unix milliseconds, taken from the id. */
  ts: number;
  room: string;
  from: Sender;
  text: string;
  /** On a bot's reply: the id of the user message it answers. */
  reply_to?: string;
  /** On the live copy of a message stored while the bot is not running. */
  queued?: boolean;
  /** The sender's own id of the message, when it sent one. */
  client_id?: string;
  /** On a bot reply stopped by `cancel`: it holds the text written until then. */
  state?: "cancelled";
}

export interface PresenceFrame {
  type: "presence";
  room: string;
  user: string;
  event: "join" | "leave";
}

export interface TypingFrame {
  type: "typing";
  room: string;
  from: Sender;
  state: boolean;
}

export interface StatusFrame {
  type: "status";
  room: string;
  message_id: string;
  state: ProgressState;
  detail?: string;
}

/** The next piece of a bot's reply while it is being written: piece `seq` of try `attempt`. */
export interface DeltaFrame {
  type: "delta";
  room: string;
  reply_to: string;
  text: string;
  attempt: number;
  seq: number;
}

/**
 * A reply in progress as it stands (its text through piece `seq`): sent after `joined` for every
 * reply in flight, and with `seq` 0 and no text when a new attempt starts the reply again.
 */
export interface StreamFrame {
  type: "stream";
  room: string;
  reply_to: string;
  text: string;
  attempt: number;
  seq: number;
}

/** The answer to an accepted `cancel`; the reply then ends with `status cancelled`. */
export interface CancelOkFrame {
  type: "cancel_ok";
  room: string;
  /** The id of the user message whose reply was cancelled. */
  message: string;
  ref?: Ref;
}

export type ServerFrame =
  | WelcomeFrame
  | JoinedFrame
  | LeftFrame
  | AckFrame
  | PongFrame
  | AuthOkFrame
  | BotStatusFrame
  | ErrorFrame
  | ReconnectFrame
  | MessageFrame
  | PresenceFrame
  | TypingFrame
  | StatusFrame
  | DeltaFrame
  | StreamFrame
  | CancelOkFrame;

export type ServerFrameType = ServerFrame["type"];

/** The server frame of a given `type`. */
export type FrameOf<T extends ServerFrameType> = Extract<ServerFrame, { type: T }>;

// ---- client frames ------------------------------------------------------------------------------

export type ClientFrame =
  | { type: "join"; room: string; since?: string; ref?: Ref }
  | { type: "leave"; room: string; ref?: Ref }
  | { type: "message"; room: string; text: string; client_id?: string; ref?: Ref }
  | { type: "cancel"; room: string; message: string; ref?: Ref }
  | { type: "typing"; room: string; state: boolean; ref?: Ref }
  | { type: "bot.start"; bot: string; ref?: Ref }
  | { type: "bot.stop"; bot: string; ref?: Ref }
  | { type: "ping"; ref?: Ref }
  | { type: "auth"; token: string; ref?: Ref };

// ---- HTTP API -----------------------------------------------------------------------------------

/** The bot object of the HTTP API. */
export interface Bot extends BotInfo {
  owner: string;
  config: Record<string, unknown>;
  /** Unix milliseconds. */
  created: number;
}

export interface NewBot {
  name: string;
  kind?: string;
  config?: Record<string, unknown>;
}

export interface HistoryPage {
  messages: MessageFrame[];
  last_id: string | null;
}

export interface Stored {
  id: string;
  ts: number;
}

export interface DevToken {
  token: string;
  exp: number;
}
