// Test helpers: a real `python -m gateway` on a free loopback port, tokens, sockets the tests can
// kill or refuse, a streaming webhook, and waits with deadlines (never fixed sleeps).
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const SECRET = "test-secret-that-is-long-enough-0123456789";
const FACTOR = Number(process.env.CHAT_TESTS_TIMEOUT_FACTOR ?? "1");

/** A timeout scaled for slow machines (CHAT_TESTS_TIMEOUT_FACTOR). */
export const scaled = (ms) => ms * FACTOR;

export async function freePort() {
  const server = createTcpServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 token for `sub`, valid for `ttl` seconds. */
export function makeToken(sub, { ttl = 3600, ...claims } = {}) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, exp: Math.floor(Date.now() / 1000) + ttl, ...claims }));
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

/** Resolves when `predicate()` is true, re-checked whenever `subscribe` reports a change. */
export function until(subscribe, predicate, what, timeoutMs = scaled(10_000)) {
  return new Promise((resolve, reject) => {
    let off = () => {};
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    const check = () => {
      let value;
      try {
        value = predicate();
      } catch (err) {
        clearTimeout(timer);
        off();
        reject(err);
        return;
      }
      if (value) {
        clearTimeout(timer);
        off();
        resolve(value);
      }
    };
    off = subscribe(check);
    check();
  });
}

/** The next `type` event of a ChatClient whose payload satisfies `predicate`. */
export function nextEvent(client, type, predicate = () => true, timeoutMs = scaled(10_000)) {
  let found;
  return until(
    (changed) => client.on(type, (detail) => predicate(detail) && ((found = detail), changed())),
    () => found,
    `a ${type} event`,
    timeoutMs,
  );
}

/** Changes of a ChatStore, for until(). */
export const storeChanges = (store) => (changed) => store.subscribe(changed);

/**
 * A WebSocket class for ChatClient whose sockets the test can see, kill and refuse.
 * `frames` holds every frame the client received, parsed, in order.
 */
export function socketControl() {
  const control = {
    sockets: [],
    frames: [],
    refuse: false,
    listeners: new Set(),
    changed: (fn) => (control.listeners.add(fn), () => control.listeners.delete(fn)),
    kill() {
      for (const ws of control.sockets) ws.terminate();
    },
  };
  const notify = () => {
    for (const fn of [...control.listeners]) fn();
  };
  control.WebSocket = class extends WebSocket {
    constructor(url) {
      // Refused: a port nobody listens on, so the attempt fails like a blocked network.
      super(control.refuse ? "ws://127.0.0.1:9/ws" : url);
      control.sockets.push(this);
      this.addEventListener("message", (event) => {
        control.frames.push(JSON.parse(String(event.data)));
        notify();
      });
      this.addEventListener("close", notify);
      this.addEventListener("error", () => {}); // a refused connection is expected here
    }
  };
  return control;
}

/** `python -m gateway` in the single-process mode (in-memory broker, built-in bot workers). */
export async function startGateway(env = {}) {
  const port = await freePort();
  const cleanEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CHAT_")));
  const args = ["-m", "gateway", "--port", String(port), "--node-id", `js-${port}`];
  const proc = spawn(process.env.PYTHON ?? "python3", args, {
    cwd: ROOT,
    env: { ...cleanEnv, CHAT_JWT_SECRET: SECRET, CHAT_DEV_LOGIN: "true", PYTHONUNBUFFERED: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + scaled(20_000);
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`the gateway exited:\n${log}`);
    const ok = await fetch(`${url}/healthz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`the gateway did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 50)); // polling the port, as tests/procs.py does
  }
  return {
    url,
    port,
    proc,
    log: () => log,
    async stop() {
      if (proc.exitCode !== null) return;
      proc.kill("SIGTERM");
      await once(proc, "exit");
    },
  };
}

/** Call the HTTP API as the token's user. */
export async function api(gateway, token, method, route, body) {
  const res = await fetch(gateway.url + route, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status >= 300) throw new Error(`${method} ${route} -> ${res.status}: ${await res.text()}`);
  return res.status === 204 ? null : res.json();
}

/**
 * A webhook endpoint on loopback that streams `{"delta"}` lines and ends with the whole text once
 * `release()` is called. Yields {url, requests, release, close}.
 */
export async function streamingWebhook(pieces = ["Hel", "lo"]) {
  let release;
  let released = new Promise((r) => (release = r));
  const requests = [];
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    requests.push(JSON.parse(body));
    res.writeHead(200, { "Content-Type": "application/x-ndjson" });
    res.write(`${JSON.stringify({ delta: pieces[0] })}\n`);
    await released;
    for (const piece of pieces.slice(1)) res.write(`${JSON.stringify({ delta: piece })}\n`);
    res.end(`${JSON.stringify({ text: pieces.join("") })}\n`);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    requests,
    release() {
      release();
      released = Promise.resolve();
    },
    close: () => new Promise((r) => server.close(r)),
  };
}
