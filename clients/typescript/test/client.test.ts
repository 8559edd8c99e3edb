/**
 * The client against the real Python sidecar (started once, emulated
 * backends), plus unit tests of what needs no server: metadata merging on
 * an in-memory transport and the decoding of error details.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { ConnectError, createRouterTransport } from "@connectrpc/connect";

import {
  Code,
  create,
  toJson,
  createRouterClient,
  baseUrlOf,
  ExecuteResponseSchema,
  Priority,
  RouterError,
  RouterService,
  SkillStatus,
  StatsResponseSchema,
  toRouterError,
} from "../src/index.js";
import { CERTS_SCRIPT, freePort, PYTHON, startSidecar, type Sidecar } from "./sidecar.js";

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT = `00-${TRACE_ID}-00f067aa0ba902b7-01`;

async function rejectsWith(promise: Promise<unknown>): Promise<RouterError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof RouterError, `expected a RouterError, got ${String(err)}`);
    return err;
  }
  assert.fail("expected the call to fail");
}

describe("against the real sidecar", { timeout: 60_000 }, () => {
  let sidecar: Sidecar;

  before(async () => {
    sidecar = await startSidecar();
  });

  after(async () => {
    await sidecar?.stop();
  });

  it("route chooses skills without calling them", async () => {
    const res = await sidecar.client.route("Review this contract clause for liability", {
      domain: "legal",
      complexity: 7,
    });
    assert.match(res.queryId, /^\S+$/);
    assert.ok(res.k >= 1, `k = ${res.k}`);
    assert.ok(res.selections.length >= 1 && res.selections.length <= res.k);
    assert.equal(res.selections[0]?.skill, "legal", "the legal skill ranks first for a legal query");
    assert.ok(res.selections[0]?.implementation?.implementation?.name);
    assert.equal(typeof res.selectionTimeUs, "bigint");
    // Every skill is either chosen, listed as rejected, or counted as omitted.
    const all = await sidecar.client.route("Review this contract clause", { domain: "legal" }, { explainAll: true });
    assert.equal(all.rejectionsOmitted, 0);
    assert.equal(all.selections.length + all.rejections.length,
      res.selections.length + res.rejections.length + res.rejectionsOmitted);
  });

  it("execute calls the chosen skills and synthesizes", async () => {
    const res = await sidecar.client.execute(
      "Write a python function that parses ISO dates",
      { domain: "code", complexity: 5, priority: Priority.HIGH, metadata: { tenant: "test" } },
      { timeoutMs: 15_000 },
    );
    assert.ok(res.text.length > 0);
    assert.equal(res.results.length, res.selections.length);
    assert.ok(res.results.some((r) => r.status === SkillStatus.OK));
    assert.ok(res.cost && res.cost.baselineUsd >= res.cost.actualUsd);
    // The web app's JSON: int64 fields become strings, no bigint left.
    const json = toJson(ExecuteResponseSchema, res) as { queryId: string; results: unknown[] };
    assert.equal(json.queryId, res.queryId);
    assert.doesNotThrow(() => JSON.stringify(json));
  });

  it("executeStream yields the routing first, deltas and results as they come, and done last", async () => {
    const events = [];
    for await (const ev of sidecar.client.executeStream(
      "Explain how a transformer attends to tokens, step by step",
      { domain: "research", complexity: 7 },
      { timeoutMs: 15_000 },
    )) {
      events.push(ev);
    }
    const kinds = events.map((e) => e.event.case);
    assert.equal(kinds[0], "routed");
    assert.equal(kinds.at(-1), "done");
    const first = events[0]?.event;
    const last = events.at(-1)?.event;
    assert.ok(first?.case === "routed" && last?.case === "done");
    assert.equal(last.value.queryId, first.value.queryId);
    // An openai skill's deltas add up to its answer.
    const deltas = new Map<string, string>();
    for (const e of events) {
      if (e.event.case === "delta") deltas.set(e.event.value.skill, (deltas.get(e.event.value.skill) ?? "") + e.event.value.text);
    }
    assert.ok(deltas.size >= 1, `no deltas in ${kinds.join(",")}`);
    for (const [skill, text] of deltas) {
      assert.equal(last.value.results.find((r) => r.skill === skill)?.output, text);
    }
  });

  it("leaving an executeStream loop early cancels the call", async () => {
    let seen = 0;
    for await (const ev of sidecar.client.executeStream("Summarize the history of Rome", { domain: "research", complexity: 7 })) {
      seen += 1;
      assert.equal(ev.event.case, "routed");
      break;
    }
    assert.equal(seen, 1);
    const err = await rejectsWith(
      (async () => {
        for await (const _ of sidecar.client.executeStream("", {})) void _;
      })(),
    );
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.method, "ExecuteStream");
  });

  it("feedback rates an executed query once", async () => {
    const res = await sidecar.client.execute("Write a python function that sorts a list", { domain: "code" });
    const ok = res.results.filter((r) => r.status === SkillStatus.OK);
    const rated = await sidecar.client.feedback(res.queryId, 1);
    assert.equal(rated.queryId, res.queryId);
    assert.equal(rated.queryScore, 1);
    assert.deepEqual(rated.rated.map((r) => r.skill).sort(), ok.map((r) => r.skill).sort());
    assert.ok(rated.rated.every((r) => r.ratings >= 1n && r.measuredQuality > 0));
    const again = await rejectsWith(sidecar.client.feedback(res.queryId, 0));
    assert.equal(again.codeName, "ALREADY_EXISTS");
    assert.equal(again.field, "query_id");
    assert.equal(again.method, "Feedback");
    const bad = await rejectsWith(sidecar.client.feedback("no-such-query", 1));
    assert.equal(bad.codeName, "NOT_FOUND");
    assert.equal(bad.field, "query_id");
  });

  it("stats counts what was routed and executed", async () => {
    await sidecar.client.route("What is 2 + 2?", { domain: "math", complexity: 1 });
    const res = await sidecar.client.stats({ windowMs: 3_600_000 });
    assert.ok(res.skills.length >= 1);
    assert.ok(res.totals && res.totals.routes >= 1n, "routes counted");
    assert.ok(res.uptimeSeconds > 0);
    assert.doesNotThrow(() => JSON.stringify(toJson(StatsResponseSchema, res)));
  });

  it("a stats window over 90 days is INVALID_ARGUMENT naming window", async () => {
    const err = await rejectsWith(sidecar.client.stats({ windowMs: 91 * 86_400_000 }));
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.field, "window");
    assert.equal(err.method, "Stats");
  });

  it("complexity 11 is INVALID_ARGUMENT naming context.complexity", async () => {
    const err = await rejectsWith(sidecar.client.execute("hello", { complexity: 11 }));
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.field, "context.complexity");
    assert.equal(err.method, "Execute");
    assert.equal(err.httpStatus, 400);
    assert.match(err.message, /^Execute: INVALID_ARGUMENT: .*context\.complexity/);
    assert.deepEqual(Object.keys(err.toJSON()).sort(), ["code", "field", "fieldViolations", "message"]);
  });

  it("an unknown forced skill is NOT_FOUND naming the field", async () => {
    const err = await rejectsWith(sidecar.client.route("hello", { forceSkills: ["no-such-skill"] }));
    assert.equal(err.codeName, "NOT_FOUND");
    assert.equal(err.field, "context.force_skills[0]");
    assert.equal(err.httpStatus, 404);
  });

  it("an empty query is INVALID_ARGUMENT naming query", async () => {
    const err = await rejectsWith(sidecar.client.route(""));
    assert.equal(err.codeName, "INVALID_ARGUMENT");
    assert.equal(err.field, "query");
  });

  it("the caller's deadline is enforced (DEADLINE_EXCEEDED)", async () => {
    const err = await rejectsWith(
      sidecar.client.execute("Explain quantum tunnelling in depth", { complexity: 9 }, { timeoutMs: 1 }),
    );
    assert.equal(err.codeName, "DEADLINE_EXCEEDED");
    assert.equal(err.httpStatus, 504);
  });

  it("the caller's traceparent is kept", async (t) => {
    const res = await sidecar.client.execute(
      "Summarize the history of the printing press",
      { domain: "general", complexity: 3 },
      { traceparent: TRACEPARENT, tracestate: "vendor=1" },
    );
    assert.ok(res.queryId);
    if (res.traceId === "") {
      t.skip("ExecuteResponse.trace_id is empty: the sidecar's tracing is not wired (yet), nothing to compare");
      return;
    }
    assert.equal(res.traceId, TRACE_ID);
  });
});

describe("without a sidecar", () => {
  it("a port nobody listens on is UNAVAILABLE", async () => {
    const client = createRouterClient({ target: `127.0.0.1:${await freePort()}`, timeoutMs: 2_000 });
    try {
      const err = await rejectsWith(client.stats());
      assert.equal(err.codeName, "UNAVAILABLE");
      assert.equal(err.httpStatus, 503);
      assert.equal(err.method, "Stats");
    } finally {
      client.close();
    }
  });

  it("sends the client's metadata, the call's headers, traceparent and the deadline", async () => {
    const seen: { header: Headers; timeoutMs: number | undefined }[] = [];
    const transport = createRouterTransport(({ service }) => {
      service(RouterService, {
        stats(_req, ctx) {
          seen.push({ header: ctx.requestHeader, timeoutMs: ctx.timeoutMs() });
          return create(StatsResponseSchema, { moeEnabled: true });
        },
      });
    });
    let n = 0;
    const client = createRouterClient({
      transport,
      timeoutMs: 4_000,
      metadata: () => ({ "x-app": "web", "x-call": String(++n), traceparent: "00-overridden" }),
    });
    await client.stats({ traceparent: TRACEPARENT, tracestate: "a=1", headers: { "x-user": "u1" } });
    await client.stats({ timeoutMs: 0 });
    assert.equal(seen.length, 2);
    const [first, second] = seen;
    assert.equal(first?.header.get("x-app"), "web");
    assert.equal(first?.header.get("x-call"), "1");
    assert.equal(first?.header.get("x-user"), "u1");
    assert.equal(first?.header.get("traceparent"), TRACEPARENT, "the call's traceparent wins");
    assert.equal(first?.header.get("tracestate"), "a=1");
    assert.ok(first?.timeoutMs !== undefined && first.timeoutMs > 3_000 && first.timeoutMs <= 4_000);
    assert.equal(second?.header.get("x-call"), "2", "the metadata function runs per call");
    assert.equal(second?.timeoutMs, undefined, "timeoutMs 0: no deadline");
  });

  it("decodes BadRequest and RetryInfo from the status details", () => {
    const badRequest = new BinaryWriter()
      .tag(1, 2)
      .bytes(new BinaryWriter().tag(1, 2).string("context.top_k").tag(2, 2).string("must be 1 to 32").finish())
      .finish();
    const retryInfo = new BinaryWriter()
      .tag(1, 2)
      .bytes(new BinaryWriter().tag(1, 0).int64(1).tag(2, 0).int32(250_000_000).finish())
      .finish();
    const cause = new ConnectError("every candidate skill is saturated", Code.ResourceExhausted);
    cause.details = [
      { type: "google.rpc.BadRequest", value: badRequest },
      { type: "google.rpc.RetryInfo", value: retryInfo },
      { type: "google.rpc.DebugInfo", value: new Uint8Array([0xff]) },
    ];
    const err = toRouterError(cause, "Execute");
    assert.equal(err.codeName, "RESOURCE_EXHAUSTED");
    assert.deepEqual(err.fieldViolations, [{ field: "context.top_k", description: "must be 1 to 32" }]);
    assert.equal(err.field, "context.top_k");
    assert.equal(err.retryDelayMs, 1250);
    assert.equal(err.httpStatus, 429);
    assert.equal(err.cause, cause);
    assert.equal(
      err.message,
      "Execute: RESOURCE_EXHAUSTED: every candidate skill is saturated (field context.top_k) (retry in 1250 ms)",
    );
    assert.deepEqual(err.toJSON(), {
      code: "RESOURCE_EXHAUSTED",
      message: "every candidate skill is saturated",
      field: "context.top_k",
      fieldViolations: [{ field: "context.top_k", description: "must be 1 to 32" }],
      retryDelayMs: 1250,
    });
  });

  it("turns a target into a base URL", () => {
    assert.equal(baseUrlOf("127.0.0.1:50051"), "http://127.0.0.1:50051");
    assert.equal(baseUrlOf("[::1]:50051"), "http://[::1]:50051");
    assert.equal(baseUrlOf("dns:///router.internal:50051"), "http://router.internal:50051");
    assert.equal(baseUrlOf("https://router.example.com/"), "https://router.example.com");
    assert.throws(() => baseUrlOf("unix:///tmp/router.sock"), TypeError);
    assert.throws(() => baseUrlOf(" "), TypeError);
  });
});

describe("against a sidecar with mTLS and a bearer token", { timeout: 60_000 }, () => {
  const TOKEN = "ts-test-token-6a5b4c3d2e1f";
  let dir: string;
  let sidecar: Sidecar;
  let pem: (name: string) => Buffer;

  before(async () => {
    // A throw-away CA and certificates, made now; nothing secret is committed.
    dir = mkdtempSync(join(tmpdir(), "skill-router-pki-"));
    const made = spawnSync(PYTHON, [CERTS_SCRIPT, dir], { encoding: "utf8" });
    assert.equal(made.status, 0, `making the test certificates failed: ${made.stderr}`);
    pem = (name) => readFileSync(join(dir, name));
    const config = join(dir, "router.yaml");
    writeFileSync(
      config,
      JSON.stringify({
        server: {
          tls: { cert_file: join(dir, "server.crt"), key_file: join(dir, "server.key"), client_ca_file: join(dir, "ca.crt") },
          auth: { token_env: "SKILL_ROUTER_TS_TEST_TOKEN" },
        },
        storage: { sqlite_path: null },
        skills: {
          trm: {
            implementations: [
              { name: "trm-http", backend: "http", url: "http://127.0.0.1:1", model: "trm", quality: 0.9,
                cost_per_query: 0.01, expected_latency_ms: 50 },
            ],
          },
        },
      }),
    );
    sidecar = await startSidecar({
      args: ["--config", config],
      env: { SKILL_ROUTER_TS_TEST_TOKEN: TOKEN },
      client: { tls: { ca: pem("ca.crt"), cert: pem("client.crt"), key: pem("client.key") }, token: TOKEN },
    });
  });

  after(async () => {
    await sidecar?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("calls over mTLS with the token", async () => {
    assert.match(sidecar.client.baseUrl, /^https:\/\//);
    const res = await sidecar.client.execute("hello there", { complexity: 3 });
    assert.ok(res.text.length > 0);
    assert.equal(res.results[0]?.skill, "trm");
  });

  it("is refused without the token or with a wrong one", async () => {
    for (const token of [undefined, "wrong"]) {
      const client = createRouterClient({
        target: sidecar.target,
        tls: { ca: pem("ca.crt"), cert: pem("client.crt"), key: pem("client.key") },
        token,
      });
      try {
        const err = await rejectsWith(client.route("hello"));
        assert.equal(err.codeName, "UNAUTHENTICATED");
        assert.ok(!err.message.includes(TOKEN));
      } finally {
        client.close();
      }
    }
  });

  it("is refused without a client certificate", async () => {
    const client = createRouterClient({ target: sidecar.target, tls: { ca: pem("ca.crt") }, token: TOKEN, timeoutMs: 5_000 });
    try {
      const err = await rejectsWith(client.route("hello"));
      assert.notEqual(err.codeName, "OK");
    } finally {
      client.close();
    }
  });

  it("checks the tls options", () => {
    assert.throws(() => createRouterClient({ tls: { cert: "x" } }), TypeError);
    assert.throws(() => createRouterClient({ token: "a\nb" }), TypeError);
  });
});
