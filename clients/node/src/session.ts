import type { EndCallClient } from './client.js';
import { SessionWatcher, type SessionWatcherOptions } from './watcher.js';
import type {
  CloseReason,
  Directive__Output,
  EndCallResponse__Output,
  ModelCapabilities,
  OnSessionCloseResponse__Output,
  OnSpeechCreatedResponse__Output,
  OnSpeechDoneResponse__Output,
  OnUserSpeechResponse__Output,
  OpenSessionRequest,
  OpenSessionResponse__Output,
  SessionOptions,
} from './types.js';

export interface SidecarSessionOptions {
  /**
   * Carries a directive out. Called exactly once per sequence number, in sequence order, whether
   * the directive came in an RPC reply, on the watch stream, or both. Calls are not overlapped.
   */
  onDirective: (directive: Directive__Output) => void | Promise<void>;
  /** Errors that happen in the background (the watch gave up, a handler threw, ...). */
  onError?: (err: unknown, where: 'watch' | 'directive' | 'gap') => void;
  /** Options for the watch stream that runs from the first `endCall` (or `watch()`). */
  watch?: Omit<SessionWatcherOptions, 'afterSeq' | 'onDirective'>;
}

export interface SpeechDoneInfo {
  interrupted?: boolean;
  capabilities?: ModelCapabilities;
  toolOutputGiven?: boolean;
}

/**
 * One agent session as the sidecar sees it. Sends the session's events one after another (each
 * reply awaited before the next event goes out, as the API requires), follows `WatchSession` from
 * the first end_call on, and hands every directive to `onDirective` exactly once, in `seq` order.
 */
export class SidecarSession {
  readonly client: EndCallClient;
  readonly sessionId: string;
  #queue: Promise<unknown> = Promise.resolve();
  #dispatch: Promise<void> = Promise.resolve();
  #executed = 0;
  #pending = new Map<number, Directive__Output>();
  #watcher: SessionWatcher | undefined;
  #closed = false;
  readonly #options: SidecarSessionOptions;

  constructor(client: EndCallClient, sessionId: string, options: SidecarSessionOptions) {
    this.client = client;
    this.sessionId = sessionId;
    this.#options = options;
  }

  /** Sequence number of the last directive carried out. */
  get executedSeq(): number {
    return this.#executed;
  }

  get watcher(): SessionWatcher | undefined {
    return this.#watcher;
  }

  /** Starts following `WatchSession` (done automatically by the first `endCall`). */
  watch(): SessionWatcher {
    if (!this.#watcher) {
      const watcher = new SessionWatcher(this.client, this.sessionId, {
        ...this.#options.watch,
        afterSeq: 0,
        onDirective: (d) => void this.#offer([d]),
      });
      watcher.on('error', (err) => this.#options.onError?.(err, 'watch'));
      this.#watcher = watcher.start();
    }
    return this.#watcher;
  }

  open(req: Omit<OpenSessionRequest, 'sessionId'> = {}): Promise<OpenSessionResponse__Output> {
    return this.#enqueue(() => this.client.openSession({ ...req, sessionId: this.sessionId }));
  }

  endCall(speechId: string, options?: SessionOptions, capabilities?: ModelCapabilities): Promise<EndCallResponse__Output> {
    this.watch();
    return this.#enqueue(async () => {
      const res = await this.client.endCall({ sessionId: this.sessionId, speechId, options, capabilities });
      await this.#offer(res.directives, true);
      return res;
    });
  }

  speechCreated(speechId: string): Promise<OnSpeechCreatedResponse__Output> {
    return this.#event(() => this.client.onSpeechCreated({ sessionId: this.sessionId, speechId }));
  }

  speechDone(speechId: string, info: SpeechDoneInfo = {}): Promise<OnSpeechDoneResponse__Output> {
    return this.#event(() =>
      this.client.onSpeechDone({
        sessionId: this.sessionId,
        speechId,
        interrupted: info.interrupted ?? false,
        capabilities: info.capabilities,
        toolOutputGiven: info.toolOutputGiven,
      }),
    );
  }

  /** The user spoke (a final transcript with words): the silence starts again. */
  userSpeech(): Promise<OnUserSpeechResponse__Output> {
    return this.#event(() => this.client.onUserSpeech({ sessionId: this.sessionId }));
  }

  /**
   * Reports the close. Its reply carries the session's last directives, so the watch stream is
   * stopped once they are carried out.
   */
  close(reason: CloseReason, errorMessage?: string): Promise<OnSessionCloseResponse__Output> {
    return this.#enqueue(async () => {
      const res = await this.client.onSessionClose({ sessionId: this.sessionId, reason, errorMessage });
      this.#closed = true;
      await this.#offer(res.directives, true);
      this.#watcher?.stop();
      return res;
    });
  }

  /** Stops the watch stream; queued events still go out. */
  stop(): void {
    this.#watcher?.stop();
  }

  /** Resolves when every queued event has been answered and every known directive carried out. */
  async idle(): Promise<void> {
    await this.#queue.catch(() => undefined);
    await this.#dispatch;
  }

  get closed(): boolean {
    return this.#closed;
  }

  #event<T extends { directives: Directive__Output[] }>(send: () => Promise<T>): Promise<T> {
    return this.#enqueue(async () => {
      const res = await send();
      await this.#offer(res.directives, true);
      return res;
    });
  }

  #enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Takes directives from any source and carries out those not yet done, in seq order. A reply
   * that skips a seq (one issued by a timer and not yet seen on the stream) fills the gap from
   * `GetSession` so that nothing waits on a stream that may be down.
   */
  #offer(directives: Directive__Output[], fromReply = false): Promise<void> {
    for (const d of directives) {
      const seq = Number(d.seq);
      if (seq > this.#executed) this.#pending.set(seq, d);
    }
    const step = async () => {
      await this.#drain();
      if (fromReply && this.#pending.size > 0) {
        try {
          const report = await this.client.getSession({ sessionId: this.sessionId });
          for (const d of report.directives) {
            const seq = Number(d.seq);
            if (seq > this.#executed && !this.#pending.has(seq)) this.#pending.set(seq, d);
          }
        } catch (err) {
          this.#options.onError?.(err, 'gap');
        }
        await this.#drain();
        if (this.#pending.size > 0) {
          // Still a hole: carry out what we have rather than hold it back for ever.
          const seqs = [...this.#pending.keys()].sort((a, b) => a - b);
          this.#options.onError?.(
            new Error(`directives ${this.#executed + 1}..${seqs[0]! - 1} of ${this.sessionId} never arrived`),
            'gap',
          );
          this.#executed = seqs[0]! - 1;
          await this.#drain();
        }
      }
    };
    const run = this.#dispatch.then(step);
    this.#dispatch = run.catch(() => undefined);
    return run;
  }

  async #drain(): Promise<void> {
    for (;;) {
      const next = this.#pending.get(this.#executed + 1);
      if (!next) return;
      this.#pending.delete(this.#executed + 1);
      this.#executed += 1;
      try {
        await this.#options.onDirective(next);
      } catch (err) {
        this.#options.onError?.(err, 'directive');
      }
    }
  }
}
