import * as grpc from '@grpc/grpc-js';
import type { EndCallServiceClient } from './gen/endcall/v1/EndCallService.js';
import { loadApi } from './proto.js';
import { bearerInterceptor, resolveSecurity, type SecurityOptions } from './security.js';
import type {
  Directive__Output,
  Duration,
  Duration__Output,
  EndCallRequest,
  EndCallResponse__Output,
  GetSessionRequest,
  GetToolRequest,
  OnSessionCloseRequest,
  OnSessionCloseResponse__Output,
  OnSpeechCreatedRequest,
  OnSpeechCreatedResponse__Output,
  OnSpeechDoneRequest,
  OnSpeechDoneResponse__Output,
  OnUserSpeechRequest,
  OnUserSpeechResponse__Output,
  OpenSessionRequest,
  OpenSessionResponse__Output,
  SessionReport__Output,
  ToolDefinition__Output,
  WatchSessionRequest,
} from './types.js';

export const DEFAULT_ADDRESS = '127.0.0.1:50051';

/**
 * Security (all optional, each falling back to its variable): `token`/`tokenFile` is sent as
 * `authorization: Bearer` on every call, watch streams included; `tlsCa` turns TLS on;
 * `tlsCert`/`tlsKey` add a client certificate for mutual TLS. See {@link SecurityOptions}.
 */
export interface EndCallClientOptions extends SecurityOptions {
  /**
   * `host:port` or `unix:/path/to.sock`. Default: env `ENDCALL_SIDECAR_ADDR`, else `127.0.0.1:50051`.
   */
  address?: string;
  /**
   * Overrides the channel credentials built from `tlsCa`/`tlsCert`/`tlsKey`. Default: insecure
   * (the sidecar listens on loopback or a Unix socket) unless TLS is configured.
   */
  credentials?: grpc.ChannelCredentials;
  /** Deadline of each unary call, in milliseconds. Default 5000. */
  deadlineMs?: number;
  /**
   * How many times a unary call that failed with UNAVAILABLE is sent again (the sidecar treats a
   * repeated event as a duplicate, so this is safe). Default 2.
   */
  retries?: number;
  /** Delay before the first retry, doubled for each further one. Default 100 ms. */
  retryDelayMs?: number;
  channelOptions?: grpc.ChannelOptions;
}

/** A failed call: the gRPC status code (see `grpc.status`) and the server's message. */
export type SidecarError = grpc.ServiceError;

export function isSidecarError(err: unknown): err is SidecarError {
  return typeof err === 'object' && err !== null && typeof (err as { code?: unknown }).code === 'number';
}

/** True for errors that mean the sidecar could not be reached (as opposed to a refused request). */
export function isUnreachable(err: unknown): boolean {
  if (!isSidecarError(err)) return true;
  return err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED;
}

export function durationFromMs(ms: number): Duration {
  const whole = Math.floor(ms / 1000);
  return { seconds: whole, nanos: Math.round((ms - whole * 1000) * 1e6) };
}

export function msFromDuration(d: Duration__Output | null | undefined): number | undefined {
  if (!d) return undefined;
  return Number(d.seconds) * 1000 + d.nanos / 1e6;
}

type Unary<Req, Res> = (
  req: Req,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, res?: Res) => void,
) => grpc.ClientUnaryCall;

/** Promise-based client for `endcall.v1.EndCallService`, one method per RPC. */
export class EndCallClient {
  readonly address: string;
  readonly #stub: EndCallServiceClient;
  readonly #deadlineMs: number;
  readonly #retries: number;
  readonly #retryDelayMs: number;

  constructor(options: EndCallClientOptions = {}) {
    this.address = options.address ?? process.env.ENDCALL_SIDECAR_ADDR ?? DEFAULT_ADDRESS;
    const Service = loadApi().endcall.v1.EndCallService;
    const security = resolveSecurity(options);
    this.#stub = new Service(this.address, options.credentials ?? security.credentials, {
      ...security.channelOptions,
      ...options.channelOptions,
      ...(security.authorization === undefined ? {} : { interceptors: [bearerInterceptor(security.authorization)] }),
    });
    this.#deadlineMs = options.deadlineMs ?? 5000;
    this.#retries = options.retries ?? 2;
    this.#retryDelayMs = options.retryDelayMs ?? 100;
  }

  async #call<Req, Res>(method: Unary<Req, Res>, req: Req): Promise<Res> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await new Promise<Res>((resolve, reject) => {
          method.call(this.#stub, req, { deadline: Date.now() + this.#deadlineMs }, (err, res) => {
            if (err) reject(err);
            else resolve(res as Res);
          });
        });
      } catch (err) {
        if (attempt >= this.#retries || !isSidecarError(err) || err.code !== grpc.status.UNAVAILABLE) {
          throw err;
        }
        await new Promise((r) => setTimeout(r, this.#retryDelayMs * 2 ** attempt));
      }
    }
  }

  openSession(req: OpenSessionRequest): Promise<OpenSessionResponse__Output> {
    return this.#call(this.#stub.openSession as Unary<OpenSessionRequest, OpenSessionResponse__Output>, req);
  }

  endCall(req: EndCallRequest): Promise<EndCallResponse__Output> {
    return this.#call(this.#stub.endCall as Unary<EndCallRequest, EndCallResponse__Output>, req);
  }

  onSpeechCreated(req: OnSpeechCreatedRequest): Promise<OnSpeechCreatedResponse__Output> {
    return this.#call(
      this.#stub.onSpeechCreated as Unary<OnSpeechCreatedRequest, OnSpeechCreatedResponse__Output>,
      req,
    );
  }

  onSpeechDone(req: OnSpeechDoneRequest): Promise<OnSpeechDoneResponse__Output> {
    return this.#call(this.#stub.onSpeechDone as Unary<OnSpeechDoneRequest, OnSpeechDoneResponse__Output>, req);
  }

  /** The user spoke (a final transcript with words): the session's silence starts again. */
  onUserSpeech(req: OnUserSpeechRequest): Promise<OnUserSpeechResponse__Output> {
    return this.#call(this.#stub.onUserSpeech as Unary<OnUserSpeechRequest, OnUserSpeechResponse__Output>, req);
  }

  onSessionClose(req: OnSessionCloseRequest): Promise<OnSessionCloseResponse__Output> {
    return this.#call(
      this.#stub.onSessionClose as Unary<OnSessionCloseRequest, OnSessionCloseResponse__Output>,
      req,
    );
  }

  getTool(req: GetToolRequest = {}): Promise<ToolDefinition__Output> {
    return this.#call(this.#stub.getTool as Unary<GetToolRequest, ToolDefinition__Output>, req);
  }

  getSession(req: GetSessionRequest): Promise<SessionReport__Output> {
    return this.#call(this.#stub.getSession as Unary<GetSessionRequest, SessionReport__Output>, req);
  }

  /**
   * The raw `WatchSession` stream. Most callers want {@link SessionWatcher}, which reconnects
   * with `after_seq` when the stream drops.
   */
  watchSession(req: WatchSessionRequest, options: grpc.CallOptions = {}): grpc.ClientReadableStream<Directive__Output> {
    return this.#stub.watchSession(req, options);
  }

  /** Resolves once the channel is connected; rejects after `timeoutMs`. */
  waitForReady(timeoutMs = 5000): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#stub.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  close(): void {
    this.#stub.close();
  }
}
