// React bindings: ChatProvider shares one client per token; useChat(room) reads a room's view
// through useSyncExternalStore. React is an optional peer dependency of this entry point only.

import {
  createContext,
  type ReactNode,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useSyncExternalStore,
} from "react";

import { type BotCommandResult, ChatClient, type ChatClientOptions } from "../client.js";
import type { CancelOkFrame, Stored } from "../frames.js";
import { type ConnectionView, ChatStore, type RoomView } from "../store.js";

export interface ChatConnectionOptions extends ChatClientOptions {
  /** Clients are shared by url, httpBase and token; give a key to share one made with `getToken`. */
  clientKey?: string;
}

interface Shared {
  readonly key: string;
  readonly client: ChatClient;
  readonly store: ChatStore;
  refs: number;
}

const shared = new Map<string, Shared>();

function keyOf(o: ChatConnectionOptions): string {
  return JSON.stringify([o.url ?? "", o.httpBase ?? "", o.clientKey ?? o.token ?? ""]);
}

// Made during render (React may discard that render), so an entry nobody retains is closed soon.
function peek(key: string, options: ChatConnectionOptions): Shared {
  let entry = shared.get(key);
  if (!entry) {
    const { clientKey: _, ...clientOptions } = options;
    const client = new ChatClient(clientOptions);
    entry = { key, client, store: new ChatStore(client), refs: 0 };
    shared.set(key, entry);
    client.connect();
    setTimeout(() => closeIfUnused(key), 1_000);
  }
  return entry;
}

function closeIfUnused(key: string): void {
  const entry = shared.get(key);
  if (!entry || entry.refs > 0) return;
  shared.delete(key);
  entry.store.dispose();
  entry.client.close();
}

function useSharedStore(options: ChatConnectionOptions | null): ChatStore | null {
  const key = options ? keyOf(options) : null;
  // The options of the first render with this key make the client; later changes to callbacks are ignored.
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const entry = useMemo(() => (key !== null && options ? peek(key, options) : null), [key]);
  useEffect(() => {
    if (!entry) return;
    entry.refs++;
    return () => {
      entry.refs--;
      setTimeout(() => closeIfUnused(entry.key), 0);
    };
  }, [entry]);
  return entry?.store ?? null;
}

const StoreContext = createContext<ChatStore | null>(null);

export interface ChatProviderProps extends ChatConnectionOptions {
  /** Use this client instead of a shared one made from the options (the caller connects and closes it). */
  client?: ChatClient;
  children?: ReactNode;
}

/** Makes (or reuses) the client for the token and gives it to every useChat() below. */
export function ChatProvider({ client, children, ...options }: ChatProviderProps) {
  const own = useMemo(() => (client ? new ChatStore(client) : null), [client]);
  useEffect(() => (own ? () => own.dispose() : undefined), [own]);
  const sharedStore = useSharedStore(client ? null : options);
  const store = own ?? sharedStore;
  return <StoreContext.Provider value={store}>{children}</StoreContext.Provider>;
}

/** The store of the nearest ChatProvider. */
export function useChatStore(): ChatStore {
  const store = useContext(StoreContext);
  if (!store) throw new Error("useChatStore needs a <ChatProvider> above it");
  return store;
}

/** The client of the nearest ChatProvider (for the HTTP API: listBots, createBot, ...). */
export function useChatClient(): ChatClient {
  return useChatStore().client;
}

/** The connection's state, user and close reason. */
export function useConnection(): ConnectionView {
  return useConnectionOf(useChatStore());
}

function useConnectionOf(store: ChatStore): ConnectionView {
  return useSyncExternalStore(store.subscribe, store.connection, store.connection);
}

export interface UseChatOptions extends Partial<ChatConnectionOptions> {
  /** Messages of history loaded before joining (default 50). */
  historyLimit?: number;
}

export interface UseChat extends RoomView {
  connection: ConnectionView;
  /** The signed-in user's id, once the server said it. */
  me: string | null;
  client: ChatClient;
  /** Send a text; resolves with its id once stored, or null when it failed (see `pending`). */
  send(text: string): Promise<Stored | null>;
  /** Call with true on each keystroke and false when the input is cleared; the client throttles. */
  reportTyping(state: boolean): void;
  startBot(): Promise<BotCommandResult>;
  stopBot(): Promise<BotCommandResult>;
  /**
   * Stop the bot's reply to one of the room's user messages (by its id): over the socket, or over
   * HTTP when it is down. Resolves with `cancel_ok`; the reply in `replies` then ends `cancelled`
   * and its text so far arrives in `messages` with `state: "cancelled"`.
   */
  cancel(messageId: string): Promise<CancelOkFrame>;
  /** Forget a failed pending message. */
  discard(key: string): void;
}

const NO_ROOM = "";

/**
 * A room's live view and its actions. Uses the nearest ChatProvider, or, without one, a client
 * shared by the `token` (and `url`) in the options. `room` null renders an empty view.
 */
export function useChat(room: string | null, options: UseChatOptions = {}): UseChat {
  const { historyLimit = 50, ...connection } = options;
  const fromContext = useContext(StoreContext);
  const standalone = fromContext || (!connection.token && !connection.getToken) ? null : connection;
  const fromOptions = useSharedStore(standalone);
  const store = fromContext ?? fromOptions;
  if (!store) throw new Error("useChat needs a <ChatProvider> above it, or a token in its options");

  useEffect(() => (room ? store.open(room, { historyLimit }) : undefined), [store, room, historyLimit]);
  const view = useSyncExternalStore(
    store.subscribe,
    () => store.room(room ?? NO_ROOM),
    () => store.room(room ?? NO_ROOM),
  );
  const conn = useConnectionOf(store);

  const send = useCallback(
    (text: string) => (room ? store.send(room, text).catch(() => null) : Promise.resolve(null)),
    [store, room],
  );
  const reportTyping = useCallback(
    (state: boolean) => {
      if (room) store.client.typing(room, state);
    },
    [store, room],
  );
  const startBot = useCallback(() => store.botCommand(room ?? NO_ROOM, "start"), [store, room]);
  const stopBot = useCallback(() => store.botCommand(room ?? NO_ROOM, "stop"), [store, room]);
  const cancel = useCallback((messageId: string) => store.cancel(room ?? NO_ROOM, messageId), [store, room]);
  const discard = useCallback(
    (key: string) => {
      if (room) store.discard(room, key);
    },
    [store, room],
  );

  return useMemo(
    () => ({
      ...view,
      connection: conn,
      me: conn.user,
      client: store.client,
      send,
      reportTyping,
      startBot,
      stopBot,
      cancel,
      discard,
    }),
    [view, conn, store, send, reportTyping, startBot, stopBot, cancel, discard],
  );
}
