/**
 * Start the real Python sidecar (`skill-router serve --demo`, emulated
 * backends) on a free loopback port, and stop it.
 *
 * The binary is SKILL_ROUTER_BIN, else the repo's .venv/bin/skill-router.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { createRouterClient, RouterError, type RouterClient, type RouterClientOptions } from "../src/index.js";

/** How to start the sidecar beyond `serve --demo --listen`. */
export interface SidecarOptions {
  /** Extra `serve` arguments, e.g. `["--config", path]`. */
  args?: string[];
  /** Extra environment variables for the sidecar. */
  env?: Record<string, string>;
  /** Options of the test's client (tls, token). */
  client?: Partial<RouterClientOptions>;
}

// This file runs from clients/typescript/.test-build/test/.
const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
export const SIDECAR_BIN = process.env.SKILL_ROUTER_BIN ?? `${REPO_ROOT}.venv/bin/skill-router`;
/** The repo's Python (it makes the test PKI: tests/support/certs.py). */
export const PYTHON = process.env.SKILL_ROUTER_PYTHON ?? `${REPO_ROOT}.venv/bin/python`;
export const CERTS_SCRIPT = `${REPO_ROOT}tests/support/certs.py`;

export interface Sidecar {
  readonly target: string;
  readonly client: RouterClient;
  /** The sidecar's stdout and stderr so far (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

/** A port nothing listens on right now (the kernel's pick for port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once("exit", (code) => resolve(code)));
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM"); // graceful: health NOT_SERVING, drain, close pools
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited(child);
  clearTimeout(timer);
}

async function startOnce(port: number, opts: SidecarOptions): Promise<Sidecar> {
  const target = `127.0.0.1:${port}`;
  // Its own working directory: the sidecar writes its metrics store there.
  const cwd = mkdtempSync(join(tmpdir(), "skill-router-ts-"));
  const child = spawn(SIDECAR_BIN, ["serve", "--demo", "--listen", target, ...(opts.args ?? [])], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    // Tracing on (spans to the piped stdout, not exported anywhere) so that
    // ExecuteResponse.trace_id is set once the sidecar wires telemetry.
    env: {
      OTEL_TRACES_EXPORTER: "console",
      OTEL_METRICS_EXPORTER: "none",
      ...process.env,
      ...opts.env,
      PYTHONUNBUFFERED: "1",
    },
  });
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);

  const client = createRouterClient({ target, timeoutMs: 10_000, ...opts.client });
  const sidecar: Sidecar = {
    target,
    client,
    log: () => output,
    async stop() {
      client.close();
      await stopChild(child);
      process.removeListener("exit", killOnExit);
      rmSync(cwd, { recursive: true, force: true });
    },
  };
  // Ready when a call succeeds; give up at once if the process dies.
  const died = exited(child).then((code) => {
    throw new Error(`skill-router exited (code ${code}) before serving on ${target}:\n${output}`);
  });
  try {
    await Promise.race([client.waitForReady(30_000), died]);
  } catch (err) {
    await sidecar.stop();
    throw err instanceof RouterError ? new Error(`${err.message}\nsidecar log:\n${output}`, { cause: err }) : err;
  }
  died.catch(() => {}); // it will exit when stopped
  return sidecar;
}

/** Start the sidecar; retry on another port if the chosen one was taken meanwhile. */
export async function startSidecar(opts: SidecarOptions = {}): Promise<Sidecar> {
  if (!existsSync(SIDECAR_BIN)) {
    throw new Error(
      `${SIDECAR_BIN} not found: create the Python venv first (make setup in the repo root), ` +
        "or point SKILL_ROUTER_BIN at a skill-router executable",
    );
  }
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(await freePort(), opts);
    } catch (err) {
      last = err;
      if (!/address already in use|Failed to bind|bind/i.test(String(err))) break;
    }
  }
  throw last;
}
