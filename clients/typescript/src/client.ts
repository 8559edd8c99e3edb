/**
 * A typed client for the skill-router sidecar: router.v1.RouterService over
 * real gRPC (HTTP/2, Node's `http2` module), for Next.js server code on the
 * Node runtime (not the Edge runtime: it has no `http2`).
 *
 * One client holds one HTTP/2 connection, opened on the first call and
 * multiplexing every call after it; create it once per process.
 */
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";

import {
  RouterService,
  type ExecuteEvent,
  type ExecuteResponse,
  type QueryContextSchema,
  type RouteResponse,
  type StatsResponse,
  type FeedbackResponse,
} from "./gen/router/v1/router_pb.js";
import { RouterError, toRouterError } from "./errors.js";

/** The sidecar's default address (the bundled config's `server.listen`). */
export const DEFAULT_TARGET = "127.0.0.1:50051";
/** The default deadline of a call, as in the Python client. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * What the web app knows about a query, as a plain object:
 * `{ domain: "code", complexity: 7, priority: Priority.HIGH, topK: 2 }`.
 * Every field is optional; see QueryContext in router.proto.
 */
export type QueryContextInit = MessageInitShape<typeof QueryContextSchema>;

/** Headers (gRPC metadata) as a `Headers`, a record or `[key, value]` pairs. */
export type MetadataInit = Headers | Record<string, string> | [string, string][];

export interface RouterClientOptions {
  /**
   * The sidecar's address: `host:port` (`127.0.0.1:50051`, `[::1]:50051`),
   * `dns:///host:port`, or a URL (`http://host:port`; `https://` for TLS).
   * Default: `127.0.0.1:50051`.
   */
  target?: string;
  /**
   * Default deadline of each call in milliseconds, sent to the sidecar as
   * `grpc-timeout` and enforced here too. `0` or `Infinity`: no deadline.
   * Default: 30000.
   */
  timeoutMs?: number;
  /**
   * Metadata sent with every call. A function is called once per call, so it
   * can read per-request state, e.g. inject the active OpenTelemetry context:
   * `metadata: () => { const h = {}; propagation.inject(context.active(), h); return h; }`.
   */
  metadata?: MetadataInit | (() => MetadataInit | undefined);
  /** Connect interceptors for every call (logging, instrumentation). */
  interceptors?: Interceptor[];
  /** Use this transport instead of creating one (`target` is then ignored). */
  transport?: Transport;
  /**
   * TLS to a sidecar with `server.tls` (the target becomes `https://`).
   * `true`: the system's CAs. With `cert` and `key`: mTLS (a sidecar with
   * `server.tls.client_ca_file` refuses a client without them).
   */
  tls?: boolean | TlsOptions;
  /**
   * The bearer token of a sidecar with `server.auth.token_env`, sent as
   * `authorization: Bearer <token>` with every call.
   */
  token?: string;
}

/** PEM contents (not file paths): read them with `fs.readFileSync`. */
export interface TlsOptions {
  /** The CA that signed the sidecar's certificate (default: the system's). */
  ca?: string | Buffer;
  /** This client's certificate chain, for mTLS. */
  cert?: string | Buffer;
  /** This client's private key, for mTLS. */
  key?: string | Buffer;
  /** The name to check the sidecar's certificate against, when not the target's host. */
  serverName?: string;
}

export interface CallOptions {
  /** Deadline of this call in milliseconds; overrides the client's. */
  timeoutMs?: number;
  /**
   * The caller's W3C trace context (`00-<trace-id>-<span-id>-<flags>`), sent
   * as the `traceparent` metadata so the sidecar's spans join the caller's
   * trace.
   */
  traceparent?: string;
  /** The W3C `tracestate` that goes with `traceparent`. */
  tracestate?: string;
  /** Extra metadata for this call (merged over the client's). */
  headers?: MetadataInit;
  /** Cancels the call (status CANCELLED). */
  signal?: AbortSignal;
}

export interface RoutingOptions extends CallOptions {
  /**
   * List every skill that was not chosen in `rejections`. By default at most
   * 20 are listed (the best-ranked first) and the rest are counted in
   * `rejectionsOmitted`.
   */
  explainAll?: boolean;
}

export interface StatsOptions extends CallOptions {
  /**
   * Window of the metrics-store aggregates (`StatsResponse.window`), in
   * milliseconds, ending now. Unset: the sidecar's default (24 hours).
   */
  windowMs?: number;
}

export interface RouterClient {
  /** The base URL calls go to, e.g. `http://127.0.0.1:50051`. */
  readonly baseUrl: string;
  /** Which skills would answer the query, without calling any (dry run). */
  route(query: string, context?: QueryContextInit, options?: RoutingOptions): Promise<RouteResponse>;
  /** Route the query, call the chosen skills, return their synthesis. */
  execute(query: string, context?: QueryContextInit, options?: RoutingOptions): Promise<ExecuteResponse>;
  /**
   * Execute, streamed: an async iterable of `ExecuteEvent`s. `event.event.case`
   * is `"routed"` first, then per skill `"delta"` (token deltas of openai
   * skills), `"skillResult"` (its whole result) and `"shed"`, and `"done"`
   * last (exactly what `execute` would have returned). Leaving the loop early
   * (`break`) or aborting `options.signal` cancels the call, and the sidecar
   * cancels its backend requests. Errors are thrown as `RouterError`.
   */
  executeStream(query: string, context?: QueryContextInit, options?: CallOptions): AsyncIterable<ExecuteEvent>;
  /**
   * The live state of every skill, the totals since the sidecar started and
   * the aggregates over `options.windowMs` from its metrics store.
   */
  stats(options?: StatsOptions): Promise<StatsResponse>;
  /**
   * Rate the answer to an executed query: `score` 0 to 1 for the whole
   * answer (thumbs up 1, down 0), `skillScores` per skill that answered.
   * A query is rated once (a second rating fails with ALREADY_EXISTS).
   */
  feedback(
    queryId: string,
    score?: number,
    skillScores?: Record<string, number>,
    options?: CallOptions,
  ): Promise<FeedbackResponse>;
  /**
   * Resolves once the sidecar answers a call (retrying while it is
   * UNAVAILABLE, e.g. still starting); rejects with the last error after
   * `timeoutMs` (default 10000).
   */
  waitForReady(timeoutMs?: number): Promise<void>;
  /** The generated Connect client, for anything the wrapper does not cover. */
  readonly raw: Client<typeof RouterService>;
  /** Close the HTTP/2 connection; calls in flight fail with CANCELLED. */
  close(): void;
}

/** `127.0.0.1:50051` → `http://127.0.0.1:50051`; URLs are kept. */
export function baseUrlOf(target: string): string {
  const t = target.trim();
  if (t === "") throw new TypeError("skill-router target is empty");
  if (/^https?:\/\//i.test(t)) return t.replace(/\/+$/, "");
  const hostPort = t.startsWith("dns:///") ? t.slice("dns:///".length) : t;
  if (hostPort.includes("://") || hostPort.startsWith("unix:")) {
    throw new TypeError(`skill-router target ${JSON.stringify(target)}: use host:port or an http(s):// URL`);
  }
  return `http://${hostPort}`;
}

function deadline(ms: number | undefined): number | undefined {
  return ms === undefined || !Number.isFinite(ms) || ms <= 0 ? undefined : ms;
}

function mergeHeaders(...inits: (MetadataInit | undefined)[]): Headers {
  const out = new Headers();
  for (const init of inits) {
    if (init === undefined) continue;
    new Headers(init).forEach((value, key) => out.set(key, value));
  }
  return out;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function tlsSessionOptions(tls: boolean | TlsOptions | undefined) {
  if (!tls) return undefined;
  if (tls === true) return {};
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("skill-router tls: cert and key go together (mTLS)");
  }
  return { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.serverName };
}

function authHeader(token: string | undefined): Record<string, string> | undefined {
  if (token === undefined) return undefined;
  if (token === "" || /[\r\n]/.test(token)) throw new TypeError("skill-router token must be a non-empty single line");
  return { authorization: `Bearer ${token}` };
}

/** Create a client for the sidecar at `options.target`. */
export function createRouterClient(options: RouterClientOptions = {}): RouterClient {
  let baseUrl = baseUrlOf(options.target ?? DEFAULT_TARGET);
  const secure = tlsSessionOptions(options.tls);
  if (secure) baseUrl = baseUrl.replace(/^http:\/\//i, "https://");
  const auth = authHeader(options.token);
  const defaultTimeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  // Our own session manager, so close() can end the connection. It unrefs
  // the socket while idle: an idle client never keeps the process alive.
  const session = options.transport ? undefined : new Http2SessionManager(baseUrl, undefined, secure);
  const transport =
    options.transport ??
    createGrpcTransport({ baseUrl, sessionManager: session, interceptors: options.interceptors });
  const raw = createClient(RouterService, transport);

  function callOptions(o: CallOptions | undefined) {
    const clientMetadata = typeof options.metadata === "function" ? options.metadata() : options.metadata;
    const trace: Record<string, string> = {};
    if (o?.traceparent) trace.traceparent = o.traceparent;
    if (o?.tracestate) trace.tracestate = o.tracestate;
    return {
      timeoutMs: deadline(o?.timeoutMs ?? defaultTimeoutMs),
      headers: mergeHeaders(clientMetadata, o?.headers, trace, auth),
      signal: o?.signal,
    };
  }

  async function call<T>(method: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (reason) {
      throw toRouterError(reason, method);
    }
  }

  const client: RouterClient = {
    baseUrl,
    raw,
    route: (query, context, o) =>
      call("Route", () => raw.route({ query, context, explainAll: o?.explainAll ?? false }, callOptions(o))),
    execute: (query, context, o) =>
      call("Execute", () => raw.execute({ query, context, explainAll: o?.explainAll ?? false }, callOptions(o))),
    executeStream(query, context, o) {
      return {
        async *[Symbol.asyncIterator]() {
          // Our own controller: breaking out of the loop cancels the call.
          const abort = new AbortController();
          const outer = o?.signal;
          const forward = () => abort.abort(outer?.reason);
          if (outer?.aborted) forward();
          outer?.addEventListener("abort", forward, { once: true });
          try {
            for await (const event of raw.executeStream({ query, context }, { ...callOptions(o), signal: abort.signal })) {
              yield event;
            }
          } catch (reason) {
            throw toRouterError(reason, "ExecuteStream");
          } finally {
            outer?.removeEventListener("abort", forward);
            abort.abort();
          }
        },
      };
    },
    stats: (o) =>
      call("Stats", () =>
        raw.stats({ window: o?.windowMs === undefined ? undefined : durationFromMs(o.windowMs) }, callOptions(o)),
      ),
    feedback: (queryId, score, skillScores, o) =>
      call("Feedback", () => raw.feedback({ queryId, score, skillScores: skillScores ?? {} }, callOptions(o))),
    async waitForReady(timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      for (let pause = 25; ; pause = Math.min(pause * 2, 500)) {
        const left = until - Date.now();
        try {
          await client.stats({ timeoutMs: Math.max(1, Math.min(left, 2_000)) });
          return;
        } catch (err) {
          const retryable = err instanceof RouterError && (err.codeName === "UNAVAILABLE" || err.codeName === "DEADLINE_EXCEEDED");
          if (!retryable || Date.now() + pause >= until) throw err;
        }
        await sleep(pause);
      }
    },
    close() {
      session?.abort();
    },
  };
  return client;
}
