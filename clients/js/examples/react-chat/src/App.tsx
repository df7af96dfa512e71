// The example app: sign in, pick or create a bot, chat with it in <BotChat>.

import { type FormEvent, useEffect, useState } from "react";
import { devToken } from "@chat-gateway/client";
import { ChatProvider, useChatClient, useConnection } from "@chat-gateway/client/react";
import type { Bot } from "@chat-gateway/client";
import { BotChat } from "./BotChat.js";

const TOKEN_KEY = "react-chat.token";

/** A token from the URL fragment (`#token=...`, never sent to a server), kept for this tab only. */
function initialToken(): string | null {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
    return fromHash;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

export function App() {
  const [token, setToken] = useState(initialToken);
  if (!token) return <SignIn onToken={setToken} />;
  return (
    <ChatProvider token={token}>
      <Rooms />
    </ChatProvider>
  );
}

function SignIn({ onToken }: { onToken: (token: string) => void }) {
  const [name, setName] = useState("");
  const [error, setError] = useState<string | null>(null);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    try {
      const { token } = await devToken(location.origin, name.trim());
      sessionStorage.setItem(TOKEN_KEY, token);
      onToken(token);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  return (
    <form className="signin" data-testid="signin" onSubmit={submit}>
      <h1>Sign in</h1>
      <input data-testid="dev-name" placeholder="Your name" value={name} onChange={(e) => setName(e.target.value)} required />
      <button type="submit" className="primary">
        Sign in
      </button>
      <p className="hint">Development sign-in: needs a gateway started with --dev-login, or open a URL with #token=…</p>
      {error ? <p className="bot-error">{error}</p> : null}
    </form>
  );
}

function Rooms() {
  const client = useChatClient();
  const connection = useConnection();
  const [bots, setBots] = useState<Bot[]>([]);
  const [room, setRoom] = useState<string | null>(null);
  const [name, setName] = useState("");

  useEffect(() => {
    client.listBots().then(({ bots }) => setBots(bots), () => setBots([]));
  }, [client]);

  const create = async (event: FormEvent) => {
    event.preventDefault();
    const bot = await client.createBot({ name: name.trim() || "Echo", kind: "echo", config: { delay: 0.5 } });
    setName("");
    setBots((list) => [...list, bot]);
    setRoom(bot.id);
  };

  return (
    <main className="layout">
      <aside className="sidebar">
        <p className="me" data-testid="me-name">
          {connection.user ?? "…"}
        </p>
        <ul className="bot-list" data-testid="bot-list">
          {bots.map((b) => (
            <li key={b.id}>
              <button type="button" data-testid="bot-item" data-bot-id={b.id} aria-pressed={b.id === room} onClick={() => setRoom(b.id)}>
                {b.name}
              </button>
            </li>
          ))}
        </ul>
        <form className="create" onSubmit={create}>
          <input data-testid="bot-name" placeholder="New echo bot" value={name} onChange={(e) => setName(e.target.value)} />
          <button type="submit" data-testid="bot-create">
            Create
          </button>
        </form>
      </aside>
      {room ? <BotChat key={room} bot={room} /> : <p className="placeholder">Pick a bot, or create one.</p>}
    </main>
  );
}
