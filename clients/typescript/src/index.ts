/**
 * @skill-router/client: call the skill-router sidecar from Node.js.
 *
 *   const router = createRouterClient({ target: "127.0.0.1:50051", timeoutMs: 5000 });
 *   const res = await router.execute("Summarize this contract", { domain: "legal", complexity: 7 },
 *                                    { traceparent });
 *
 * Responses are the generated protobuf-es messages (int64 fields are
 * bigint); turn one into JSON with `toJson(ExecuteResponseSchema, res)`.
 */
export {
  createRouterClient,
  baseUrlOf,
  DEFAULT_TARGET,
  DEFAULT_TIMEOUT_MS,
  type CallOptions,
  type MetadataInit,
  type QueryContextInit,
  type RouterClient,
  type RouterClientOptions,
  type RoutingOptions,
  type StatsOptions,
  type TlsOptions,
} from "./client.js";
export { RouterError, codeName, toRouterError, type FieldViolation, type GrpcCodeName } from "./errors.js";
export * from "./gen/router/v1/router_pb.js";
export { Code } from "@connectrpc/connect";
export { create, toJson, toJsonString, type JsonValue } from "@bufbuild/protobuf";
export { durationFromMs, durationMs, timestampDate, timestampMs } from "@bufbuild/protobuf/wkt";
