// Socket.IO on Node.js as a chat node; nodes are joined by @socket.io/redis-adapter.
// Events: "join" (room name, acknowledged once the socket is in the room) and "message"
// ({room, text}), emitted as "message" to every member of the room on every node, sender included.
//
//   node server.js --port P --redis-url redis://127.0.0.1:6379/0
"use strict";

const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function option(name) {
  const at = process.argv.indexOf(name);
  if (at < 0 || at + 1 >= process.argv.length) {
    console.error(`missing ${name}`);
    process.exit(2);
  }
  return process.argv[at + 1];
}

async function main() {
  const port = Number(option("--port"));
  const pub = createClient({ url: option("--redis-url") });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const http = createServer();
  const io = new Server(http, { adapter: createAdapter(pub, sub), perMessageDeflate: false });
  io.on("connection", (socket) => {
    const user = socket.handshake.query.user || "anonymous";
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack(true);
    });
    socket.on("message", (data) => {
      io.to(data.room).emit("message", { room: data.room, from: user, text: data.text });
    });
  });
  http.listen({ port, host: "127.0.0.1", backlog: 4096 });
  const stop = () => io.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
