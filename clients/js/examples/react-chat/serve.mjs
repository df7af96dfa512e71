// The example's development server: serves dist/ and passes /api, /ws and /healthz on to a gateway,
// so the page and the gateway share an origin (no CORS, and the gateway's origin check passes).
//   node examples/react-chat/serve.mjs [--gateway http://127.0.0.1:4000] [--port 5173]
// Prints "listening on http://127.0.0.1:<port>/" once ready. Plain node, no dependencies.
import { createServer, request } from "node:http";
import { connect } from "node:net";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1] : fallback;
};
const gateway = new URL(option("--gateway", process.env.GATEWAY_URL ?? "http://127.0.0.1:4000"));
const port = Number(option("--port", "5173"));
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), "dist");
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".map": "application/json" };
const PROXIED = /^\/(api\/|ws(\?|$)|healthz)/;

// The Host header is kept as the browser sent it: the gateway allows a browser origin whose
// host:port equals Host, which is this server's.
function proxy(req, res) {
  const upstream = request(
    { host: gateway.hostname, port: gateway.port || 80, method: req.method, path: req.url, headers: req.headers },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  upstream.on("error", () => {
    res.writeHead(502, { "Content-Type": "text/plain" });
    res.end("gateway unreachable\n");
  });
  req.pipe(upstream);
}

async function serveFile(req, res) {
  const url = new URL(req.url ?? "/", "http://x");
  const name = url.pathname === "/" ? "index.html" : path.normalize(url.pathname).replace(/^([/\\])+/, "");
  const file = path.join(root, name);
  if (!file.startsWith(root)) return res.writeHead(403).end();
  try {
    const body = await readFile(file);
    res.writeHead(200, { "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream", "Cache-Control": "no-cache" });
    res.end(body);
  } catch {
    res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
  }
}

const server = createServer((req, res) => (PROXIED.test(req.url ?? "") ? proxy(req, res) : void serveFile(req, res)));

// WebSocket upgrades: replay the request head to the gateway and splice the two sockets.
server.on("upgrade", (req, socket, head) => {
  const upstream = connect(Number(gateway.port || 80), gateway.hostname, () => {
    const lines = [`${req.method} ${req.url} HTTP/1.1`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
    if (head.length) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  const end = () => {
    upstream.destroy();
    socket.destroy();
  };
  upstream.on("error", end);
  socket.on("error", end);
  upstream.on("close", end);
  socket.on("close", end);
});

server.listen(port, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}/ (gateway ${gateway.origin})`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
