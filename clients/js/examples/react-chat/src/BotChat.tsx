// BotChat: a chat with one bot, on useChat(). Copy it into your app and style it as you like.
//
// It shows the messages (yours, other people's, the bot's), the bot's reply growing while it is
// written with a Stop button, who is typing, who is here, the bot's status with start and stop
// buttons, the connection state, and messages still waiting to be stored.

import { type FormEvent, type KeyboardEvent, useEffect, useRef, useState } from "react";
import { decodeJwtPayload, type MessageFrame, type ReplyStream } from "@chat-gateway/client";
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
  const [owner, setOwner] = useState<string | null>(null);
  const [stopping, setStopping] = useState<ReadonlySet<string>>(new Set());
  useEffect(() => {
    let current = true;
    chat.client.getBot(bot).then(
      (b) => current && setOwner(b.owner),
      () => undefined,
    );
    return () => {
      current = false;
    };
  }, [chat.client, bot]);
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

  // Stop is offered to the user who asked, the bot's owner and admins, while the reply streams.
  const roles = decodeJwtPayload(chat.client.token)?.["roles"];
  const mayCancelAll = (chat.me !== null && chat.me === owner) || (Array.isArray(roles) && roles.includes("admin"));
  const canCancel = (replyTo: string) =>
    mayCancelAll || chat.messages.some((m) => m.id === replyTo && m.from.kind === "user" && m.from.id === chat.me);
  const stop = (replyTo: string) => {
    setStopping((s) => new Set(s).add(replyTo));
    chat.cancel(replyTo).catch(() => {
      // `conflict`: it ended meanwhile and its final message is on the way; otherwise offer Stop again
      setStopping((s) => {
        const next = new Set(s);
        next.delete(replyTo);
        return next;
      });
    });
  };

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
          <Streaming
            key={r.replyTo}
            reply={r}
            name={chat.bot?.name ?? "bot"}
            stopping={stopping.has(r.replyTo)}
            onStop={canCancel(r.replyTo) ? () => stop(r.replyTo) : undefined}
          />
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
      data-state={message.state}
    >
      {!own ? <small className="author">{message.from.name ?? message.from.id}</small> : null}
      <span className="bubble" data-testid="message-text">
        {message.text}
      </span>
      {message.state === "cancelled" ? <small data-testid="message-note">stopped</small> : null}
      {own && progress ? (
        <small className="progress" data-testid="message-progress" data-state={progress} title={detail}>
          {progress === "failed" && detail ? `failed: ${detail}` : progress}
        </small>
      ) : null}
    </li>
  );
}

interface StreamingProps {
  reply: ReplyStream;
  name: string;
  /** A cancel was asked for and has not been answered yet. */
  stopping: boolean;
  /** Given when this user may stop the reply. */
  onStop: (() => void) | undefined;
}

function Streaming({ reply, name, stopping, onStop }: StreamingProps) {
  const streaming = reply.state === "streaming";
  return (
    <li
      className="message bot"
      data-testid="message"
      data-kind="bot"
      data-own="false"
      data-streaming={reply.state}
      data-reply-to={reply.replyTo}
    >
      <small className="author">{name}</small>
      <span className="bubble" data-testid="message-text">
        {reply.text}
        {streaming ? <span className="cursor" aria-hidden="true" /> : null}
      </span>
      {streaming && onStop ? (
        <button type="button" className="reply-stop" data-testid="reply-stop" disabled={stopping} onClick={onStop}>
          {stopping ? "Stopping…" : "Stop"}
        </button>
      ) : null}
      {!streaming ? <small data-testid="message-note">{reply.state === "cancelled" ? "stopped" : reply.state}</small> : null}
    </li>
  );
}
