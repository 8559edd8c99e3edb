/**
 * The client's one error type, and the decoding of the sidecar's error
 * details (the `grpc-status-details-bin` trailer: a google.rpc.Status whose
 * details carry google.rpc.BadRequest or google.rpc.RetryInfo).
 *
 *   ConnectError (any failure of a call)  →  RouterError
 *     .code / .codeName      the gRPC status: INVALID_ARGUMENT, NOT_FOUND,
 *                            RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED, ...
 *     .field                 the request field at fault (BadRequest)
 *     .retryDelayMs          when to retry (RetryInfo, RESOURCE_EXHAUSTED)
 *     .httpStatus            the status a web handler should answer with
 *
 * The two google.rpc messages are decoded by hand (a few fields of the wire
 * format) so that the package needs no copy of googleapis' protos.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";

/** gRPC status code names, as the gRPC spec spells them. */
export type GrpcCodeName =
  | "OK"
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

// Index = gRPC code number (Connect's Code enum uses the same numbers).
const CODE_NAMES: readonly GrpcCodeName[] = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
];

/** The gRPC name of a status code number (`3` → `"INVALID_ARGUMENT"`). */
export function codeName(code: number): GrpcCodeName {
  return CODE_NAMES[code] ?? "UNKNOWN";
}

// The usual gRPC → HTTP mapping (google.rpc.Code's documented equivalents).
const HTTP_STATUS: Partial<Record<GrpcCodeName, number>> = {
  CANCELLED: 499,
  INVALID_ARGUMENT: 400,
  DEADLINE_EXCEEDED: 504,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  PERMISSION_DENIED: 403,
  RESOURCE_EXHAUSTED: 429,
  FAILED_PRECONDITION: 400,
  ABORTED: 409,
  OUT_OF_RANGE: 400,
  UNIMPLEMENTED: 501,
  UNAVAILABLE: 503,
  UNAUTHENTICATED: 401,
};

/** One google.rpc.BadRequest.FieldViolation. */
export interface FieldViolation {
  /** Path of the request field at fault, e.g. `context.complexity`. */
  field: string;
  /** What is wrong with it. */
  description: string;
}

/** A failed call to the sidecar. */
export class RouterError extends Error {
  override name = "RouterError";
  /** The gRPC status code number (same numbering as Connect's `Code`). */
  readonly code: Code;
  /** The gRPC status code name, e.g. `INVALID_ARGUMENT`. */
  readonly codeName: GrpcCodeName;
  /** The RPC that failed: `Route`, `Execute`, `Stats` or `Feedback`. */
  readonly method: string;
  /** The status message as the sidecar (or the transport) wrote it. */
  readonly rawMessage: string;
  /** Every field violation from google.rpc.BadRequest (may be empty). */
  readonly fieldViolations: readonly FieldViolation[];
  /** The first violation's field: the request field at fault. */
  readonly field: string | undefined;
  /** google.rpc.RetryInfo's retry delay, in milliseconds. */
  readonly retryDelayMs: number | undefined;
  /** Response headers and trailers of the failed call. */
  readonly metadata: Headers;

  constructor(init: {
    code: Code;
    method: string;
    rawMessage: string;
    fieldViolations?: readonly FieldViolation[];
    retryDelayMs?: number;
    metadata?: Headers;
    cause?: unknown;
  }) {
    const name = codeName(init.code);
    const violations = init.fieldViolations ?? [];
    let message = `${init.method}: ${name}: ${init.rawMessage}`;
    // The sidecar's messages usually start with the field; name it only when not.
    const unnamed = violations.filter((v) => v.field !== "" && !init.rawMessage.includes(v.field));
    if (unnamed.length > 0) message += ` (field ${unnamed.map((v) => v.field).join(", ")})`;
    if (init.retryDelayMs !== undefined) message += ` (retry in ${init.retryDelayMs} ms)`;
    super(message, { cause: init.cause });
    this.code = init.code;
    this.codeName = name;
    this.method = init.method;
    this.rawMessage = init.rawMessage;
    this.fieldViolations = violations;
    this.field = violations[0]?.field;
    this.retryDelayMs = init.retryDelayMs;
    this.metadata = init.metadata ?? new Headers();
  }

  /** The HTTP status a web handler should answer with (500 for the rest). */
  get httpStatus(): number {
    return HTTP_STATUS[this.codeName] ?? 500;
  }

  /** A JSON body for a web response: no stack, no headers. */
  toJSON(): {
    code: GrpcCodeName;
    message: string;
    field?: string;
    fieldViolations?: FieldViolation[];
    retryDelayMs?: number;
  } {
    return {
      code: this.codeName,
      message: this.rawMessage,
      ...(this.field !== undefined && { field: this.field, fieldViolations: [...this.fieldViolations] }),
      ...(this.retryDelayMs !== undefined && { retryDelayMs: this.retryDelayMs }),
    };
  }
}

const BAD_REQUEST = "google.rpc.BadRequest";
const RETRY_INFO = "google.rpc.RetryInfo";

/** Wrap whatever a call threw (a ConnectError, normally) in a RouterError. */
export function toRouterError(reason: unknown, method: string): RouterError {
  if (reason instanceof RouterError) return reason;
  const err = ConnectError.from(reason);
  const violations: FieldViolation[] = [];
  let retryDelayMs: number | undefined;
  for (const detail of err.details) {
    // Incoming details are {type, value}; outgoing ones (a client-side
    // error built with details) have a desc and are not ours to decode.
    if (!("type" in detail) || !(detail.value instanceof Uint8Array)) continue;
    try {
      if (detail.type === BAD_REQUEST) violations.push(...decodeBadRequest(detail.value));
      else if (detail.type === RETRY_INFO) retryDelayMs = decodeRetryInfo(detail.value);
    } catch {
      // A malformed detail must not hide the status itself.
    }
  }
  return new RouterError({
    code: err.code,
    method,
    rawMessage: err.rawMessage,
    fieldViolations: violations,
    retryDelayMs,
    metadata: err.metadata,
    cause: reason,
  });
}

// message BadRequest { repeated FieldViolation field_violations = 1; }
// message FieldViolation { string field = 1; string description = 2; ... }
function decodeBadRequest(bytes: Uint8Array): FieldViolation[] {
  const out: FieldViolation[] = [];
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 1 && wt === WireType.LengthDelimited) out.push(decodeFieldViolation(r.bytes()));
    else r.skip(wt);
  }
  return out;
}

function decodeFieldViolation(bytes: Uint8Array): FieldViolation {
  const v: FieldViolation = { field: "", description: "" };
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 1 && wt === WireType.LengthDelimited) v.field = r.string();
    else if (no === 2 && wt === WireType.LengthDelimited) v.description = r.string();
    else r.skip(wt);
  }
  return v;
}

// message RetryInfo { google.protobuf.Duration retry_delay = 1; }
// message Duration { int64 seconds = 1; int32 nanos = 2; }
function decodeRetryInfo(bytes: Uint8Array): number | undefined {
  let delayMs: number | undefined;
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 1 && wt === WireType.LengthDelimited) {
      let seconds = 0;
      let nanos = 0;
      const d = new BinaryReader(r.bytes());
      while (d.pos < d.len) {
        const [dno, dwt] = d.tag();
        if (dno === 1 && dwt === WireType.Varint) seconds = Number(d.int64());
        else if (dno === 2 && dwt === WireType.Varint) nanos = d.int32();
        else d.skip(dwt);
      }
      delayMs = Math.round(seconds * 1000 + nanos / 1e6);
    } else r.skip(wt);
  }
  return delayMs;
}
