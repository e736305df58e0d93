// Recording fakes of the parts of @livekit/agents that an end_call tool touches: the agent
// session, its speech handles, the job context and the model. Both the reference tool and the
// sidecar tool are driven through them, and every effect they have lands in one ordered list.
import { EventEmitter } from 'node:events';
import { type JobContext, llm, runWithJobContextAsync, voice } from '@livekit/agents';

export class Recorder {
  readonly effects: string[] = [];
  record(effect: string): void {
    this.effects.push(effect);
  }
}

export class FakeSpeechHandle {
  interrupted = false;
  #done = false;
  #callbacks = new Set<(h: FakeSpeechHandle) => void>();
  #resolveDone!: () => void;
  readonly #doneP: Promise<void>;
  /** Abort controllers of tool calls made in this speech (the runtime aborts them on interruption). */
  readonly toolSignals: AbortController[] = [];

  constructor(readonly id: string) {
    this.#doneP = new Promise<void>((r) => (this.#resolveDone = r));
    // Like SpeechHandle: callbacks run once the done future settles.
    this.#doneP.finally(() => {
      for (const cb of this.#callbacks) cb(this);
    });
  }

  done(): boolean {
    return this.#done;
  }

  addDoneCallback(cb: (h: FakeSpeechHandle) => void): void {
    if (this.#done) {
      queueMicrotask(() => cb(this));
      return;
    }
    this.#callbacks.add(cb);
  }

  removeDoneCallback(cb: (h: FakeSpeechHandle) => void): void {
    this.#callbacks.delete(cb);
  }

  async waitForPlayout(): Promise<void> {
    await this.#doneP;
  }

  /** Playout finished, or (interrupted) the speech was cut off. */
  finish(interrupted = false): void {
    if (this.#done) return;
    if (interrupted) {
      this.interrupted = true;
      // The runtime aborts the tool executions of an interrupted reply before marking it done.
      for (const c of this.toolSignals) c.abort();
    }
    this.#done = true;
    this.#resolveDone();
  }
}

export interface ModelSpec {
  realtime: boolean;
  autoToolReply?: boolean;
}

class FakeRealtimeModel extends llm.RealtimeModel {
  get model(): string {
    return 'fake-realtime';
  }
  session(): llm.RealtimeSession {
    throw new Error('not used');
  }
  async close(): Promise<void> {}
}

export function makeModel(spec: ModelSpec): unknown {
  if (!spec.realtime) return { label: () => 'fake-pipeline-llm' };
  return new FakeRealtimeModel({
    messageTruncation: true,
    turnDetection: true,
    userTranscription: true,
    autoToolReplyGeneration: spec.autoToolReply ?? false,
    audioOutput: true,
    manualFunctionCalls: false,
  });
}

export class FakeSession extends EventEmitter {
  readonly speeches = new Map<string, FakeSpeechHandle>();
  readonly currentAgent: { getActivityOrThrow(): { llm: unknown } };

  constructor(
    readonly rec: Recorder,
    model: unknown,
  ) {
    super();
    this.currentAgent = { getActivityOrThrow: () => ({ llm: model }) };
  }

  shutdown(): void {
    this.rec.record('session.shutdown');
  }

  generateReply(opts?: { instructions?: string }): void {
    this.rec.record(`session.generateReply:${opts?.instructions ?? ''}`);
  }

  speech(id: string): FakeSpeechHandle {
    let h = this.speeches.get(id);
    if (!h) {
      h = new FakeSpeechHandle(id);
      this.speeches.set(id, h);
    }
    return h;
  }

  /** The session created a speech (a reply, a say, a tool reply). */
  createSpeech(id: string): FakeSpeechHandle {
    const h = this.speech(id);
    this.emit(voice.AgentSessionEventTypes.SpeechCreated, {
      type: 'speech_created',
      userInitiated: false,
      source: 'generate_reply',
      speechHandle: h,
      createdAt: Date.now(),
    });
    return h;
  }

  close(reason: string, error: Error | null = null): void {
    this.emit(voice.AgentSessionEventTypes.Close, { type: 'close', reason, error, createdAt: Date.now() });
  }
}

export class FakeJobContext {
  /** As a job before ctx.connect(): the room it was dispatched to is known from the job. */
  readonly job: { id: string; room?: { name: string } };
  readonly callbacks: (() => Promise<void>)[] = [];
  constructor(
    readonly rec: Recorder,
    roomName?: string,
  ) {
    this.job = roomName === undefined ? { id: 'AJ_fake' } : { id: 'AJ_fake', room: { name: roomName } };
  }

  addShutdownCallback(cb: () => Promise<void>): void {
    this.callbacks.push(cb);
  }

  #shuttingDown = false;

  /**
   * Like JobContext.shutdown in a job process: returns at once; the first call makes the job run
   * its shutdown callbacks (all registered by then) a little later; further calls change nothing.
   */
  shutdown(reason = ''): void {
    this.rec.record(`job.shutdown:${reason}`);
    if (this.#shuttingDown) return;
    this.#shuttingDown = true;
    setImmediate(async () => {
      for (const cb of this.callbacks) await cb();
    });
  }

  async deleteRoom(): Promise<void> {
    this.rec.record('room.delete');
  }
}

export function runInJob<T>(job: FakeJobContext, fn: () => Promise<T>): Promise<T> {
  return runWithJobContextAsync(job as unknown as JobContext, fn);
}
