import { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import type { EndCallClient } from './client.js';
import { isSidecarError } from './client.js';
import type { Directive__Output } from './types.js';

export interface SessionWatcherOptions {
  /** Receive only directives with a greater sequence number. Default 0 (everything). */
  afterSeq?: number;
  /** Called once for each directive, in sequence order. */
  onDirective?: (directive: Directive__Output) => void;
  /** First reconnect delay; doubled after each failed attempt up to `maxBackoffMs`. Default 50 ms. */
  minBackoffMs?: number;
  /** Default 2000 ms. */
  maxBackoffMs?: number;
  /**
   * Consecutive attempts that brought nothing (no directive, no end of a closed session) before
   * the watcher gives up and emits `error`. Default 20. `Infinity` retries for ever.
   */
  maxAttempts?: number;
}

export type WatchEnd = 'closed' | 'stopped';

export interface ReconnectInfo {
  /** 1 for the first reconnect after a working stream, counting up while attempts fail. */
  attempt: number;
  /** The `after_seq` the next stream is opened with. */
  afterSeq: number;
  delayMs: number;
  error?: unknown;
}

/**
 * Follows `WatchSession` for one session. When the stream drops (a network error, a restarted
 * proxy, a draining server) it reopens it with `after_seq` = the last sequence number received, so
 * nothing is missed and nothing is delivered twice. It finishes when the server ends the stream of
 * a closed session (`end` with `'closed'`) or on {@link stop} (`'stopped'`).
 *
 * Events: `directive` (Directive__Output), `reconnect` (ReconnectInfo), `end` (WatchEnd),
 * `error` (the last error, after `maxAttempts` fruitless attempts, or at once when the sidecar
 * refuses the token as UNAUTHENTICATED; the watcher then stops).
 */
export class SessionWatcher extends EventEmitter {
  readonly sessionId: string;
  readonly done: Promise<WatchEnd>;
  #lastSeq: number;
  #stopped = false;
  #started = false;
  #call: grpc.ClientReadableStream<Directive__Output> | undefined;
  #wake: (() => void) | undefined;
  #resolve!: (end: WatchEnd) => void;
  #reject!: (err: unknown) => void;
  readonly #client: EndCallClient;
  readonly #minBackoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #maxAttempts: number;

  constructor(client: EndCallClient, sessionId: string, options: SessionWatcherOptions = {}) {
    super();
    this.#client = client;
    this.sessionId = sessionId;
    this.#lastSeq = options.afterSeq ?? 0;
    this.#minBackoffMs = options.minBackoffMs ?? 50;
    this.#maxBackoffMs = options.maxBackoffMs ?? 2000;
    this.#maxAttempts = options.maxAttempts ?? 20;
    if (options.onDirective) this.on('directive', options.onDirective);
    this.done = new Promise<WatchEnd>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // A watcher nobody awaits must not crash the process with an unhandled rejection.
    this.done.catch(() => undefined);
  }

  /** The sequence number of the last directive delivered. */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  start(): this {
    if (!this.#started) {
      this.#started = true;
      void this.#run();
    }
    return this;
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#call?.cancel();
    this.#wake?.();
  }

  async #run(): Promise<void> {
    let failures = 0;
    try {
      while (!this.#stopped) {
        const before = this.#lastSeq;
        const result = await this.#follow();
        if (this.#stopped) break;
        let error: unknown = result.error;
        if (!error) {
          // The server ended the stream: the session is closed (and everything was sent), or the
          // server is draining. Only the first means we are done.
          try {
            const report = await this.#client.getSession({ sessionId: this.sessionId });
            if (report.state === 'SESSION_STATE_CLOSED') {
              this.#finish('closed');
              return;
            }
          } catch (err) {
            if (isSidecarError(err) && err.code === grpc.status.NOT_FOUND) {
              // Gone after its retention: nothing more will ever be issued for it.
              this.#finish('closed');
              return;
            }
            error = err;
          }
        }
        failures = this.#lastSeq > before ? 1 : failures + 1;
        // A refused token stays refused: retrying would only delay the error.
        const refused = isSidecarError(error) && error.code === grpc.status.UNAUTHENTICATED;
        if (refused || failures >= this.#maxAttempts) {
          const err = error ?? new Error(`WatchSession(${this.sessionId}) kept ending without progress`);
          this.#stopped = true;
          this.emit('error', err);
          this.#reject(err);
          return;
        }
        const delayMs = Math.min(this.#maxBackoffMs, this.#minBackoffMs * 2 ** (failures - 1));
        this.emit('reconnect', { attempt: failures, afterSeq: this.#lastSeq, delayMs, error } satisfies ReconnectInfo);
        await new Promise<void>((resolve) => {
          // Unref'd: a watcher waiting to reconnect does not by itself keep the process alive.
          const timer = setTimeout(resolve, delayMs);
          timer.unref();
          this.#wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.#wake = undefined;
      }
      this.#finish('stopped');
    } catch (err) {
      this.#stopped = true;
      this.#reject(err);
    }
  }

  #finish(end: WatchEnd): void {
    this.#stopped = true;
    this.emit('end', end);
    this.#resolve(end);
  }

  /** Opens one stream and follows it until it ends (`{}`) or fails (`{ error }`). */
  #follow(): Promise<{ error?: unknown }> {
    return new Promise((resolve) => {
      let settled = false;
      const settle = (r: { error?: unknown }) => {
        if (settled) return;
        settled = true;
        this.#call = undefined;
        resolve(r);
      };
      const call = this.#client.watchSession({ sessionId: this.sessionId, afterSeq: this.#lastSeq });
      this.#call = call;
      call.on('data', (d: Directive__Output) => {
        const seq = Number(d.seq);
        if (seq <= this.#lastSeq) return;
        this.#lastSeq = seq;
        try {
          this.emit('directive', d);
        } catch (err) {
          // A throwing listener must not kill the stream; report it and carry on.
          process.emitWarning(`endcall: a directive listener threw: ${String(err)}`);
        }
      });
      call.on('error', (error) => settle({ error }));
      call.on('end', () => settle({}));
    });
  }
}
