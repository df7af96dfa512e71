// Bundles the package for the places that take one file:
//   node scripts/build.mjs            gateway/static/chat-client.js (served by the gateway, no build step there)
//   node scripts/build.mjs --check    fails when that file differs from what the sources build to
//   node scripts/build.mjs --example  examples/react-chat/dist (the React example app)
// The npm package itself is dist/, emitted by tsc (see the "build" script).
import { readFile, writeFile, mkdir, copyFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
export const GATEWAY_FILE = path.resolve(root, "../../gateway/static/chat-client.js");

const BANNER = `// ChatClient for the chat gateway (wire protocol v1): plain ES module, no dependencies.
// GENERATED FILE: built from clients/js/src by \`npm run build\` in clients/js; do not edit by hand.
// Types, the React hook and the docs: clients/js and docs/client.md.`;

/** The bundled client as the gateway serves it. */
export async function bundleClient() {
  const result = await esbuild.build({
    entryPoints: [path.join(root, "src/index.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    minify: false,
    legalComments: "none",
    banner: { js: BANNER },
    logLevel: "warning",
  });
  return result.outputFiles[0].text;
}

async function buildExample() {
  const dir = path.join(root, "examples/react-chat");
  const out = path.join(dir, "dist");
  await mkdir(out, { recursive: true });
  await esbuild.build({
    entryPoints: [path.join(dir, "src/main.tsx")],
    outfile: path.join(out, "app.js"),
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    jsx: "automatic",
    minify: process.env.EXAMPLE_MINIFY !== "0",
    sourcemap: true,
    define: { "process.env.NODE_ENV": '"production"' },
    logLevel: "warning",
  });
  await copyFile(path.join(dir, "index.html"), path.join(out, "index.html"));
  await copyFile(path.join(dir, "src/style.css"), path.join(out, "style.css"));
  console.log(`example built in ${path.relative(process.cwd(), out) || "."}`);
}

async function main(args) {
  if (args.includes("--example")) return buildExample();
  const text = await bundleClient();
  if (args.includes("--check")) {
    const committed = await readFile(GATEWAY_FILE, "utf8").catch(() => "");
    if (committed !== text) {
      console.error(`${GATEWAY_FILE} is not what clients/js/src builds to: run npm run build in clients/js`);
      process.exitCode = 1;
    }
    return;
  }
  await writeFile(GATEWAY_FILE, text);
  console.log(`wrote ${path.relative(process.cwd(), GATEWAY_FILE)} (${text.length} bytes)`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main(process.argv.slice(2));
