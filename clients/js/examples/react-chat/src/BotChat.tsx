// BotChat: a chat with one bot, on useChat(). Copy it into your app and style it as you like.
//
// It shows the messages (yours, other people's, the bot's), the bot's reply growing while it is
// written, who is typing, who is here, the bot's status with start and stop buttons, the
// connection state, and messages still waiting to be stored.

import { type FormEvent, type KeyboardEvent, useEffect, useRef, useState } from "react";
import type { MessageFrame, ReplyStream } from "@chat-gateway/client";
import { useChat } from "@chat-gateway/client/react";

export interface BotChatProps {
  /** The bot's id, which is also its room's id. */
  bot: string;
}

const CONNECTION_LABELS: Record<string, string> = {
  connecting: "connecting",
  open: "online",
  reconnecting: "reconnecting",
  fallback: "online (HTTP)",
  closed: "offline",
};

export function BotChat({ bot }: BotChatProps) {
  const chat = useChat(bot);
  const [draft, setDraft] = useState("");
  const end = useRef<HTMLLIElement>(null);
  const count = chat.messages.length + chat.replies.length + chat.pending.length;
  useEffect(() => {
    end.current?.scrollIntoView?.({ block: "end" });
  }, [count]);

  const submit = (event?: FormEvent) => {
    event?.preventDefault();
    const text = draft.trim();
    if (!text) return;
    setDraft("");
    void chat.send(text);
  };
  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === "Enter" && !event.shiftKey) submit(event);
  };
  const status = chat.bot?.status ?? "unknown";
  const canStart = status === "stopped" || status === "error";
  const canStop = status === "running" || status === "starting";
  const typingNames = chat.typing.map((s) => s.name ?? s.id);

  return (
    <section className="bot-chat" data-testid="bot-chat" data-room-status={chat.status}>
      <header className="bot-chat-head">
        <h1 data-testid="room-title">{chat.bot?.name ?? bot}</h1>
        <span className="badge" data-testid="bot-status" data-status={status}>
          {status}
        </span>
        <span className="conn" data-testid="conn-state" data-state={chat.connection.state}>
          <i aria-hidden="true" /> {CONNECTION_LABELS[chat.connection.state]}
        </span>
        <span className="presence" title={chat.members.join(", ")}>
          <span data-testid="presence-count">{chat.memberCount ?? chat.members.length}</span> here
        </span>
        <button type="button" data-testid="bot-start" disabled={!canStart} onClick={() => void chat.startBot()}>
          Start
        </button>
        <button type="button" data-testid="bot-stop" disabled={!canStop} onClick={() => void chat.stopBot()}>
          Stop
        </button>
      </header>
      {chat.bot?.error ? <p className="bot-error">{chat.bot.error}</p> : null}
      {chat.error ? <p className="bot-error">{chat.error.message}</p> : null}

      <ol className="messages" data-testid="messages" aria-live="polite">
        {chat.messages.map((m) => (
          <Message
            key={m.id}
            message={m}
            own={m.from.kind === "user" && m.from.id === chat.me}
            progress={chat.progress[m.id]?.state}
            detail={chat.progress[m.id]?.detail}
          />
        ))}
        {chat.replies.map((r) => (
          <Streaming key={r.replyTo} reply={r} name={chat.bot?.name ?? "bot"} />
        ))}
        {chat.pending.map((p) => (
          <li key={p.key} className="message own" data-testid="message" data-kind="user" data-own="true" data-pending={p.state}>
            <span className="bubble" data-testid="message-text">
              {p.text}
            </span>
            <small>{p.state === "failed" ? `not sent: ${p.error?.message ?? "error"}` : "sending…"}</small>
          </li>
        ))}
        <li ref={end} aria-hidden="true" />
      </ol>

      <div className="typing" data-testid="typing" hidden={!typingNames.length} data-bot={String(chat.typing.some((s) => s.kind === "bot"))}>
        <span className="dots" aria-hidden="true">
          <i />
          <i />
          <i />
        </span>
        <span data-testid="typing-text">
          {typingNames.join(", ")} {typingNames.length === 1 ? "is" : "are"} typing
        </span>
      </div>

      <form className="composer" onSubmit={submit}>
        <textarea
          data-testid="composer-input"
          rows={1}
          placeholder="Write a message"
          maxLength={4000}
          value={draft}
          onChange={(e) => {
            setDraft(e.target.value);
            chat.reportTyping(e.target.value !== "");
          }}
          onKeyDown={onKeyDown}
        />
        <button type="submit" className="primary" data-testid="composer-send">
          Send
        </button>
      </form>
    </section>
  );
}

interface MessageProps {
  message: MessageFrame;
  own: boolean;
  progress: string | undefined;
  detail: string | undefined;
}

function Message({ message, own, progress, detail }: MessageProps) {
  const kind = message.from.kind;
  return (
    <li
      className={`message ${kind} ${own ? "own" : ""}`}
      data-testid="message"
      data-kind={kind}
      data-own={String(own)}
      data-id={message.id}
    >
      {!own ? <small className="author">{message.from.name ?? message.from.id}</small> : null}
      <span className="bubble" data-testid="message-text">
        {message.text}
      </span>
      {message.state === "cancelled" ? <small>stopped</small> : null}
      {own && progress ? (
        <small className="progress" data-testid="message-progress" data-state={progress} title={detail}>
          {progress === "failed" && detail ? `failed: ${detail}` : progress}
        </small>
      ) : null}
    </li>
  );
}

function Streaming({ reply, name }: { reply: ReplyStream; name: string }) {
  return (
    <li className="message bot" data-testid="message" data-kind="bot" data-own="false" data-streaming={reply.state}>
      <small className="author">{name}</small>
      <span className="bubble" data-testid="message-text">
        {reply.text}
      </span>
      {reply.state === "streaming" ? <span className="cursor" aria-hidden="true" /> : <small>{reply.state}</small>}
    </li>
  );
}
