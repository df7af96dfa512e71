// @chat-gateway/client: the chat gateway's browser client (wire protocol v1).

export { ChatClient, DEFAULTS } from "./client.js";
export type { BotCommandResult, ChatClientOptions, ChatClientTuning } from "./client.js";
export { ChatError } from "./errors.js";
export type { ChatErrorCode, ChatErrorDetails } from "./errors.js";
export { ChatEvents, STATES } from "./events.js";
export type {
  ChatEventMap,
  ChatEventType,
  CloseReason,
  ConnectionState,
  ErrorEvent,
  FallbackJoined,
  ResyncEvent,
  StateChange,
} from "./events.js";
export type * from "./frames.js";
export { devToken, HttpApi } from "./http.js";
export type { FetchLike, HistoryQuery } from "./http.js";
export type { Joined } from "./rooms.js";
export { ChatStore, nextReply } from "./store.js";
export type { ConnectionView, OpenOptions, PendingMessage, Progress, ReplyChange, ReplyStream, RoomView } from "./store.js";
export type { TokenSource } from "./tokens.js";
export type { SocketLike, WebSocketConstructor } from "./transport.js";
export { backoffDelay, decodeJwtPayload } from "./util.js";
export { checkServerFrame, isServerFrame, problems, SERVER_FRAME_TYPES, SERVER_FRAMES } from "./validate.js";
export * as guards from "./validate.js";
