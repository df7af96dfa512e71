// The events a ChatClient fires, and a typed EventTarget to fire them.

import type {
  AckFrame,
  AuthOkFrame,
  CancelOkFrame,
  BotInfo,
  BotStatusFrame,
  DeltaFrame,
  ErrorFrame,
  JoinedFrame,
  LeftFrame,
  MessageFrame,
  PongFrame,
  PresenceFrame,
  ReconnectFrame,
  StatusFrame,
  StreamFrame,
  TypingFrame,
  WelcomeFrame,
} from "./frames.js";

/** The connection's state; see docs/client.md for the diagram. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "fallback" | "closed";

export const STATES: readonly ConnectionState[] = Object.freeze([
  "connecting",
  "open",
  "reconnecting",
  "fallback",
  "closed",
]);

/** Why the client stopped for good. */
export type CloseReason = "closed" | "unauthorized" | "forbidden";

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  reason: CloseReason | null;
}

/** What `join()` resolves with in the HTTP fallback: no presence, and `fallback: true`. */
export interface FallbackJoined {
  type: "joined";
  room: string;
  bot: BotInfo;
  members: string[];
  member_count: null;
  last_id: string | null;
  recovered: boolean;
  fallback: true;
}

/** A rejoin reported `recovered: false`: the application should reload the room's history. */
export interface ResyncEvent {
  room: string;
  since: string;
  last_id: string | null;
}

/** An `error` frame, or one of the client's own failures (then without `ref`, maybe with `room`). */
export interface ErrorEvent extends Omit<ErrorFrame, "code"> {
  code: ErrorFrame["code"] | "closed" | `http_${number}`;
  room?: string;
}

export interface ChatEventMap {
  state: StateChange;
  welcome: WelcomeFrame;
  joined: JoinedFrame | FallbackJoined;
  left: LeftFrame;
  message: MessageFrame;
  ack: AckFrame;
  typing: TypingFrame;
  presence: PresenceFrame;
  status: StatusFrame;
  delta: DeltaFrame;
  stream: StreamFrame;
  cancel_ok: CancelOkFrame;
  bot_status: BotStatusFrame;
  auth_ok: AuthOkFrame;
  reconnect: ReconnectFrame;
  pong: PongFrame;
  error: ErrorEvent;
  resync: ResyncEvent;
}

export type ChatEventType = keyof ChatEventMap;

/** An EventTarget whose events carry their payload in `detail`, with a typed `on()`. */
export class ChatEvents extends EventTarget {
  /** Subscribe to an event; returns a function that unsubscribes. Handlers get the payload itself. */
  on<K extends ChatEventType>(type: K, handler: (detail: ChatEventMap[K]) => void): () => void {
    const listener = (event: Event) => handler((event as CustomEvent<ChatEventMap[K]>).detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  protected emit<K extends ChatEventType>(type: K, detail: ChatEventMap[K]): void {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
