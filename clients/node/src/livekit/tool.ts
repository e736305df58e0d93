// A drop-in for `beta.createEndCallTool` of `@livekit/agents` (1.9.x) whose decisions are made by
// endcall-sidecar. The tool reports what happens to the session (end_call called, speeches
// created and done, the close, and once attached the user's final transcripts) and carries out
// the directives the sidecar answers with, each exactly once. If the sidecar cannot be reached it logs an error and ends the call in-process.
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { type JobContext, getJobContext, llm, log, voice } from '@livekit/agents';
import { EndCallClient, durationFromMs } from '../client.js';
import { SidecarSession } from '../session.js';
import type {
  CloseReason,
  Directive__Output,
  ModelCapabilities,
  SessionOptions,
  ToolDefinition__Output,
} from '../types.js';
import type { SessionWatcherOptions } from '../watcher.js';

/** Reply timeout the in-process fallback uses when `replyTimeoutMs` is not given (the reference's). */
export const FALLBACK_REPLY_TIMEOUT_MS = 5000;

/** Used only until the sidecar's `GetTool` answers, or when the sidecar cannot be reached. */
export const FALLBACK_DESCRIPTION =
  'Hang up: end this call and disconnect. Use it only once the user has clearly said they are ' +
  'finished (for example "that is all, goodbye"), never when they want to hold, pause or be ' +
  'transferred, or when it is unclear. It is the last thing you can do in the call.';

export interface ToolLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnySession = voice.AgentSession<any>;

export interface SidecarEndCallToolOptions<UserData = unknown> {
  /** Appended to the tool's description. Unset: the sidecar's default (""). */
  extraDescription?: string;
  /** Delete the room when the session closes after end_call. Unset: the sidecar's default (true). */
  deleteRoom?: boolean;
  /**
   * The tool's output, which the LLM turns into its goodbye; `null` asks for no reply.
   * Unset: the sidecar's default ("say goodbye to the user").
   */
  endInstructions?: string | null;
  /** Hide the tool while the agent's onEnter runs. Unset: the sidecar's default (false). */
  ignoreOnEnter?: boolean;
  onToolCalled?: (event: llm.ToolCalledEvent<UserData>) => Promise<void> | void;
  onToolCompleted?: (event: llm.ToolCompletedEvent<UserData>) => Promise<void> | void;

  /** The sidecar's address (`host:port` or `unix:/path`). Default: env ENDCALL_SIDECAR_ADDR, else 127.0.0.1:50051. */
  address?: string;
  /** A client to share between tools (then `address` is ignored). */
  client?: EndCallClient;
  /** Realtime models: how long the sidecar waits for the tool reply to be created. Unset: sidecar default (5 s). */
  replyTimeoutMs?: number;
  /** Sidecar extension, off by default: take a reply created while the tool's turn plays as the tool reply. */
  earlyReplyCapture?: boolean;
  /**
   * Sidecar extension (the silence ladder, proto `silence_timeout`), for attached sessions: after
   * this much of the user's silence the agent is asked to say goodbye (`WIND_UP`), and the session
   * is ended after the sidecar's grace period. Silence counts from the user's last final
   * transcript and pauses while the agent speaks. `0` or `null` turns it off. Unset: the sidecar's
   * default (off unless its `--silence-timeout`).
   */
  silenceTimeoutMs?: number | null;
  /** Silence before each reminder (`silence_reminder_after`): reminder i at i times this. Unset: the sidecar's default (10 s). */
  silenceReminderAfterMs?: number;
  /** Reminders per silence (`silence_reminders`). Unset: the sidecar's default (1). */
  silenceReminders?: number;
  /** The instructions of each reminder's reply (`silence_reminder_instructions`). Unset: the sidecar's default. */
  silenceReminderInstructions?: string;
  /**
   * The sidecar session id of an agent session. Called with the `RunContext` of the session's
   * first end_call, or with `{ session }` when the session is attached. Default: the job id (if
   * any) and a random suffix.
   */
  sessionId?(ctx: SessionRef<UserData>): string;
  /** Default: the `@livekit/agents` logger (console if it is not initialised). */
  logger?: ToolLogger;
  /** Options of the WatchSession follower. */
  watch?: Omit<SessionWatcherOptions, 'afterSeq' | 'onDirective'>;
}

/** What `sessionId` is given: the agent session (a `RunContext` of end_call is one too). */
export interface SessionRef<UserData = unknown> {
  readonly session: voice.AgentSession<UserData>;
}

export interface AttachOptions {
  /**
   * The LiveKit room the call runs in. Default: the current job's room (`getJobContext()`:
   * the connected room's name, else the room the job was dispatched to). Outside a job and
   * without it, the session is opened without a room.
   */
  room?: string;
  /**
   * Sidecar extension: when the call has lasted this long, `WIND_UP` asks the agent to say
   * goodbye, and the session is ended after the sidecar's grace period. Unset: no limit.
   */
  maxDurationMs?: number;
  /**
   * With `maxDurationMs`: warnings before the limit, each issued once as `REMIND` with its
   * instructions, `beforeMs` before it (for example one minute before: "Tell the caller there is
   * one minute left.").
   */
  maxDurationWarnings?: readonly { beforeMs: number; instructions: string }[];
}

export type SidecarEndCallToolset = llm.Toolset & {
  /** The client the tool talks to. */
  readonly client: EndCallClient;
  /**
   * Starts following an agent session at its start (recommended: before or right after
   * `session.start(...)`). Opens the sidecar session with the tool's options and the room, and
   * holds the `WatchSession` stream from then on; speeches and the user's final transcripts are
   * reported from then on. The stream is the worker's lease: a sidecar configured for it hangs
   * the call up itself when the worker is lost or never closes the session; the directives of
   * the sidecar's timers (the silence ladder's and the maximum duration's) come on it. Without
   * it the tool follows a session from its first end_call. Returns the sidecar session id;
   * attaching a session again changes nothing.
   */
  attach(session: AnySession, options?: AttachOptions): string;
  /** Fetches the tool definition from the sidecar (once; later calls share the answer). */
  definition(): Promise<ToolDefinition__Output | undefined>;
  /** The sidecar session id used for an agent session, if it was attached or end_call was called in it. */
  sessionIdOf(session: AnySession): string | undefined;
  /** Resolves once everything reported for the session was answered and carried out. */
  idle(session: AnySession): Promise<void>;
  /**
   * Stops following the sessions still open and, if the tool created its client, closes it. For
   * the end of a worker process or a test; a session still in its goodbye stops being followed.
   */
  close(): void;
};

const CLOSE_REASONS: Record<string, CloseReason> = {
  error: 'CLOSE_REASON_ERROR',
  job_shutdown: 'CLOSE_REASON_JOB_SHUTDOWN',
  participant_disconnected: 'CLOSE_REASON_PARTICIPANT_DISCONNECTED',
  user_initiated: 'CLOSE_REASON_USER_INITIATED',
  task_completed: 'CLOSE_REASON_TASK_COMPLETED',
};

/**
 * The close reason to report for an agent session's close reason. A custom reason string (a
 * `session.shutdown({ reason })` of the application's own) is reported as user_initiated; the job
 * is still shut down with the original string.
 */
export function closeReasonOf(reason: unknown): CloseReason {
  return CLOSE_REASONS[String(reason)] ?? 'CLOSE_REASON_USER_INITIATED';
}

function defaultLogger(): ToolLogger {
  const pick = (level: keyof ToolLogger) => (obj: object, msg?: string) => {
    try {
      log()[level](obj, msg);
    } catch {
      const line = `[endcall] ${msg ?? ''} ${JSON.stringify(obj, (_k, v) => (v instanceof Error ? v.message : v))}`;
      if (level === 'error' || level === 'warn') console.error(line);
    }
  };
  return { debug: pick('debug'), info: pick('info'), warn: pick('warn'), error: pick('error') };
}

function capabilitiesOf(model: unknown): ModelCapabilities {
  if (model instanceof llm.RealtimeModel) {
    return { realtime: true, autoToolReply: Boolean(model.capabilities.autoToolReplyGeneration) };
  }
  return { realtime: false, autoToolReply: false };
}

function truncateUtf8(text: string, maxBytes: number): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= maxBytes) return text;
  return buf.subarray(0, maxBytes).toString('utf8').replace(/\uFFFD+$/, '');
}

interface EndCallSpeech {
  handle: voice.SpeechHandle;
  model: unknown;
  done: boolean;
  /** Decided by the in-process fallback already. */
  local: boolean;
}

/** The room of the current job: the connected room's name, else the room it was dispatched to. */
export function jobRoomName(job: JobContext | undefined): string | undefined {
  if (!job) return undefined;
  const fromRoom = (): string | undefined => job.room?.name;
  const fromJob = (): string | undefined => job.job?.room?.name;
  for (const get of [fromRoom, fromJob]) {
    try {
      const name = get();
      if (typeof name === 'string' && name !== '') return name;
    } catch {
      // a context without a room (a fake job, a test double)
    }
  }
  return undefined;
}

/** Everything the tool knows about one agent session, from its attach or first end_call on. */
class Binding {
  mode: 'sidecar' | 'local' = 'sidecar';
  readonly sidecar: SidecarSession;
  readonly endCalls = new Map<string, EndCallSpeech>();
  readonly watched = new Set<string>();
  closed = false;
  /** Reporting the user's final transcripts (from the attach on). */
  listening = false;
  /** Attached: OpenSession sent and the stream held. */
  opened = false;
  closeReason: string | undefined;
  closeAnswered: Promise<void> | undefined;
  deleteRoomDirected = false;
  readonly did = { shutdownSession: false, deleteRoom: false, shutdownJob: false };
  readonly localAbort = new AbortController();
  /** Resolves once the close was handled (by the sidecar or in-process). */
  readonly finished: Promise<void>;
  #finish!: () => void;

  constructor(
    readonly session: AnySession,
    readonly sessionId: string,
    private jobCtx: JobContext | undefined,
    client: EndCallClient,
    private readonly opts: SidecarEndCallToolOptions<never>,
    private readonly logger: ToolLogger,
  ) {
    this.sidecar = new SidecarSession(client, sessionId, {
      onDirective: (d) => this.carryOut(d),
      onError: (err, where) => {
        if (where === 'watch') this.fail(err, 'the WatchSession stream could not be kept open');
        else this.logger.error({ error: err, sessionId, where }, 'endcall sidecar: background error');
      },
      watch: opts.watch,
    });
    this.finished = new Promise<void>((resolve) => (this.#finish = resolve));
    session.on(voice.AgentSessionEventTypes.SpeechCreated, this.onSpeechCreated);
    session.once(voice.AgentSessionEventTypes.Close, this.onClose);
  }

  job(): JobContext | undefined {
    return getJobContext(false) ?? this.jobCtx;
  }

  // ---- reporting ----------------------------------------------------------------------------

  /** Opens the sidecar session (with the room) and holds the watch stream from now on. */
  open(options: SessionOptions, room: string | undefined, attach: AttachOptions): void {
    if (this.opened || this.mode !== 'sidecar' || this.closed) return;
    this.opened = true;
    this.sidecar.watch();
    this.sidecar
      .open({
        options,
        ...(room ? { room } : {}),
        ...(attach.maxDurationMs === undefined ? {} : { maxDuration: durationFromMs(attach.maxDurationMs) }),
        maxDurationWarnings: (attach.maxDurationWarnings ?? []).map((w) => ({
          before: durationFromMs(w.beforeMs),
          instructions: w.instructions,
        })),
      })
      .catch((err) => this.fail(err, 'OpenSession failed'));
  }

  trackEndCall(handle: voice.SpeechHandle, model: unknown): void {
    if (!this.endCalls.has(handle.id)) {
      this.endCalls.set(handle.id, { handle, model, done: false, local: false });
    }
    this.watchSpeech(handle);
  }

  watchSpeech(handle: voice.SpeechHandle): void {
    if (this.watched.has(handle.id)) return;
    this.watched.add(handle.id);
    handle.addDoneCallback((h) => this.onSpeechDone(h));
  }

  /**
   * Reports the user's speech from now on: each final transcript with words (never mere voice
   * activity, so noise cannot keep a call alive) starts the sidecar's silence again.
   */
  listenToUser(): void {
    if (this.listening || this.closed) return;
    this.listening = true;
    this.session.on(voice.AgentSessionEventTypes.UserInputTranscribed, this.onUserInputTranscribed);
  }

  readonly onUserInputTranscribed = (ev: voice.UserInputTranscribedEvent): void => {
    if (this.closed || this.mode !== 'sidecar' || !ev.isFinal || ev.transcript.trim() === '') return;
    this.sidecar.userSpeech().catch((err) => this.fail(err, 'OnUserSpeech failed'));
  };

  readonly onSpeechCreated = (ev: voice.SpeechCreatedEvent): void => {
    if (this.closed) return;
    const handle = ev.speechHandle;
    if (this.mode === 'sidecar') {
      this.sidecar.speechCreated(handle.id).catch((err) => this.fail(err, 'OnSpeechCreated failed'));
    }
    this.watchSpeech(handle);
  };

  onSpeechDone(handle: voice.SpeechHandle): void {
    const endCall = this.endCalls.get(handle.id);
    if (endCall) endCall.done = true;
    if (this.mode === 'local') {
      if (endCall) this.decideLocally(endCall);
      return;
    }
    this.sidecar
      .speechDone(handle.id, {
        interrupted: handle.interrupted,
        capabilities: endCall ? capabilitiesOf(endCall.model) : undefined,
      })
      .catch((err) => this.fail(err, 'OnSpeechDone failed'));
  }

  readonly onClose = (ev: voice.CloseEvent): void => {
    this.closed = true;
    this.closeReason = String(ev.reason);
    this.session.off(voice.AgentSessionEventTypes.SpeechCreated, this.onSpeechCreated);
    if (this.listening) {
      this.session.off(voice.AgentSessionEventTypes.UserInputTranscribed, this.onUserInputTranscribed);
    }
    if (this.mode === 'local') {
      this.closeLocally();
      return;
    }
    const answered = this.sidecar
      .close(closeReasonOf(ev.reason), ev.error ? truncateUtf8(String((ev.error as { message?: unknown }).message ?? ev.error), 4096) : undefined)
      .then(() => this.sidecar.idle())
      .catch((err) => this.fail(err, 'OnSessionClose failed'))
      .finally(() => this.#finish());
    this.closeAnswered = answered;
    // Register the room deletion now rather than when DELETE_ROOM arrives: the job may run its
    // shutdown callbacks before the sidecar's answer is back. The callback waits for the answer.
    const job = this.job();
    if (job && this.opts.deleteRoom !== false) {
      this.did.deleteRoom = true;
      job.addShutdownCallback(async () => {
        await answered;
        if (this.deleteRoomDirected) await this.deleteRoom(job);
      });
    }
  };

  // ---- directives ---------------------------------------------------------------------------

  async carryOut(d: Directive__Output): Promise<void> {
    this.logger.debug({ sessionId: this.sessionId, seq: d.seq, kind: d.kind, cause: d.cause }, 'endcall directive');
    switch (d.kind) {
      case 'DIRECTIVE_KIND_SHUTDOWN_SESSION':
        this.shutdownSession();
        break;
      case 'DIRECTIVE_KIND_DELETE_ROOM':
        this.deleteRoomDirected = true;
        if (!this.did.deleteRoom) {
          const job = this.job();
          if (!job) break;
          this.did.deleteRoom = true;
          job.addShutdownCallback(() => this.deleteRoom(job));
        }
        break;
      case 'DIRECTIVE_KIND_SHUTDOWN_JOB': {
        // Pass the agent session's own reason string through when it is the one reported.
        const reason =
          this.closeReason !== undefined && closeReasonOf(this.closeReason) === closeReasonOf(d.reason)
            ? this.closeReason
            : d.reason;
        this.shutdownJob(reason);
        break;
      }
      case 'DIRECTIVE_KIND_WIND_UP':
        if (!this.closed) this.session.generateReply({ instructions: d.instructions || undefined });
        break;
      case 'DIRECTIVE_KIND_REMIND':
        // A silence reminder or a time-limit warning. One issued before an end_call and carried
        // out after it is dropped: the agent is already saying goodbye.
        if (this.closed || this.endCalls.size > 0) break;
        this.session.generateReply({ instructions: d.instructions || undefined });
        break;
      default:
        this.logger.warn({ sessionId: this.sessionId, kind: d.kind }, 'endcall: unknown directive ignored');
    }
  }

  shutdownSession(): void {
    if (this.did.shutdownSession) return;
    this.did.shutdownSession = true;
    this.session.shutdown();
  }

  async deleteRoom(job: JobContext): Promise<void> {
    this.logger.info({ sessionId: this.sessionId }, 'deleting the room: the call was ended with end_call');
    await job.deleteRoom();
  }

  shutdownJob(reason: string): void {
    if (this.did.shutdownJob) return;
    const job = this.job();
    if (!job) return;
    this.did.shutdownJob = true;
    job.shutdown(reason);
  }

  // ---- in-process fallback ------------------------------------------------------------------

  /** The sidecar failed: log it and make this session's remaining decisions in-process. */
  fail(err: unknown, what: string): void {
    if (this.mode === 'local') return;
    this.mode = 'local';
    this.logger.error(
      { error: err, sessionId: this.sessionId, address: this.sidecar.client.address },
      `endcall sidecar: ${what}; ending the call in-process`,
    );
    this.sidecar.stop();
    for (const endCall of this.endCalls.values()) {
      if (endCall.done) this.decideLocally(endCall);
    }
    if (this.closed) this.closeLocally();
  }

  /** What the reference tool does when the turn that called end_call is done. */
  decideLocally(endCall: EndCallSpeech): void {
    if (endCall.local || this.closed) return;
    endCall.local = true;
    const model = endCall.model;
    const autoReply = model instanceof llm.RealtimeModel && model.capabilities.autoToolReplyGeneration;
    if (!autoReply || this.opts.endInstructions === null) {
      this.shutdownSession();
      return;
    }
    void this.awaitReplyLocally().catch((error) =>
      this.logger.error({ error, sessionId: this.sessionId }, 'endcall: error while waiting for the tool reply'),
    );
  }

  async awaitReplyLocally(): Promise<void> {
    const signal = this.localAbort.signal;
    const created = once(this.session, voice.AgentSessionEventTypes.SpeechCreated, { signal }).then(
      ([ev]) => (ev as voice.SpeechCreatedEvent).speechHandle,
      () => undefined,
    );
    const timeout = sleep(this.opts.replyTimeoutMs ?? FALLBACK_REPLY_TIMEOUT_MS, 'timeout' as const, { signal }).catch(
      () => undefined,
    );
    const winner = await Promise.race([created, timeout]);
    if (signal.aborted) return;
    if (winner === 'timeout') {
      this.logger.warn({ sessionId: this.sessionId }, 'endcall: no tool reply in time, shutting the session down');
      this.shutdownSession();
    } else if (winner) {
      await winner.waitForPlayout();
      this.shutdownSession();
    }
  }

  closeLocally(): void {
    this.localAbort.abort();
    this.#finish();
    const job = this.job();
    if (!job) return;
    if (this.opts.deleteRoom !== false) {
      // An early-registered callback (see onClose) deletes the room once this flag is set.
      this.deleteRoomDirected = true;
      if (!this.did.deleteRoom) {
        this.did.deleteRoom = true;
        job.addShutdownCallback(() => this.deleteRoom(job));
      }
    }
    this.shutdownJob(this.closeReason ?? 'user_initiated');
  }
}

function optionsForSidecar(opts: SidecarEndCallToolOptions<never>): SessionOptions {
  return {
    deleteRoom: opts.deleteRoom,
    endInstructions:
      opts.endInstructions === undefined
        ? undefined
        : opts.endInstructions === null
          ? { none: true }
          : { text: opts.endInstructions },
    extraDescription: opts.extraDescription,
    ignoreOnEnter: opts.ignoreOnEnter,
    replyTimeout: opts.replyTimeoutMs === undefined ? undefined : durationFromMs(opts.replyTimeoutMs),
    earlyReplyCapture: opts.earlyReplyCapture,
    // Zero is off, for the sidecar as for the option.
    silenceTimeout: opts.silenceTimeoutMs === undefined ? undefined : durationFromMs(opts.silenceTimeoutMs ?? 0),
    silenceReminderAfter:
      opts.silenceReminderAfterMs === undefined ? undefined : durationFromMs(opts.silenceReminderAfterMs),
    silenceReminders: opts.silenceReminders,
    silenceReminderInstructions: opts.silenceReminderInstructions,
  };
}

/**
 * Creates the `end_call` toolset, backed by endcall-sidecar. Same options as
 * `beta.createEndCallTool` of `@livekit/agents`, plus the sidecar's address and its extensions.
 */
export function createSidecarEndCallTool<UserData = unknown>(
  options: SidecarEndCallToolOptions<UserData> = {},
): SidecarEndCallToolset {
  const opts = options as SidecarEndCallToolOptions<never>;
  const logger = options.logger ?? defaultLogger();
  const client = options.client ?? new EndCallClient({ address: options.address });
  const sessionOptions = optionsForSidecar(opts);
  const bindings = new WeakMap<AnySession, Binding>();
  const live = new Set<Binding>();
  // In-process fallback output: the option, else the reference's default.
  const fallbackOutput =
    options.endInstructions === undefined ? 'say goodbye to the user' : (options.endInstructions ?? undefined);

  const bindingFor = (ctx: SessionRef<UserData>): Binding => {
    const session = ctx.session as AnySession;
    let binding = bindings.get(session);
    if (!binding) {
      const job = getJobContext(false);
      const sessionId =
        options.sessionId?.(ctx) ?? `${job?.job?.id ? `${job.job.id}-` : ''}${randomUUID()}`;
      const b = new Binding(session, sessionId, job, client, opts, logger);
      binding = b;
      bindings.set(session, b);
      live.add(b);
      b.finished.then(() => live.delete(b));
    }
    return binding;
  };

  const execute = async (
    _args: unknown,
    { ctx }: { ctx: voice.RunContext<UserData> },
  ): Promise<string | undefined> => {
    logger.debug({}, 'end_call tool called');
    const model = ctx.session.currentAgent.getActivityOrThrow().llm;
    const binding = bindingFor(ctx);
    binding.trackEndCall(ctx.speechHandle, model);

    let output: string | undefined = fallbackOutput;
    if (binding.mode === 'sidecar') {
      try {
        const res = await binding.sidecar.endCall(ctx.speechHandle.id, sessionOptions, capabilitiesOf(model));
        output = res._toolOutput === 'toolOutput' ? res.toolOutput : undefined;
      } catch (err) {
        binding.fail(err, 'EndCall failed');
        output = fallbackOutput;
      }
    }

    if (options.onToolCalled) await options.onToolCalled({ ctx, arguments: {} });
    const completed: llm.ToolCompletedEvent<UserData> = {
      ctx,
      output: output === undefined ? undefined : { type: 'output', value: output },
    };
    // As in the reference, the hook sees the output but does not change what the tool returns.
    if (options.onToolCompleted) await options.onToolCompleted(completed);
    return output;
  };

  const makeTool = (description: string, flags: number, parameters?: object) =>
    llm.tool<UserData>({
      name: 'end_call',
      description,
      flags,
      ...(parameters ? { parameters: parameters as never } : {}),
      execute: execute as never,
    });

  let definition: Promise<ToolDefinition__Output | undefined> | undefined;
  const loadDefinition = (): Promise<ToolDefinition__Output | undefined> => {
    definition ??= client
      .getTool({ extraDescription: options.extraDescription, ignoreOnEnter: options.ignoreOnEnter })
      .catch((error) => {
        logger.error(
          { error, address: client.address },
          'endcall sidecar: GetTool failed; the end_call tool keeps its built-in description',
        );
        definition = undefined; // try again at the next activation
        return undefined;
      });
    return definition;
  };

  const fallbackDescription = `${FALLBACK_DESCRIPTION}\n${options.extraDescription ?? ''}`;
  const toolset = llm.Toolset.create({
    id: 'end_call',
    tools: [makeTool(fallbackDescription, options.ignoreOnEnter ? llm.ToolFlag.IGNORE_ON_ENTER : llm.ToolFlag.NONE)],
    setup: async ({ updateTools }) => {
      const def = await loadDefinition();
      if (!def) return;
      let parameters: object | undefined;
      try {
        parameters = def.parametersJsonSchema ? (JSON.parse(def.parametersJsonSchema) as object) : undefined;
      } catch {
        parameters = undefined;
      }
      updateTools([
        makeTool(def.description, def.ignoreOnEnter ? llm.ToolFlag.IGNORE_ON_ENTER : llm.ToolFlag.NONE, parameters),
      ]);
    },
  });

  return Object.assign(toolset, {
    client,
    definition: loadDefinition,
    sessionIdOf: (session: AnySession) => bindings.get(session)?.sessionId,
    attach: (session: AnySession, attachOptions: AttachOptions = {}) => {
      const binding = bindingFor({ session } as SessionRef<UserData>);
      binding.open(sessionOptions, attachOptions.room || jobRoomName(binding.job()), attachOptions);
      binding.listenToUser();
      return binding.sessionId;
    },
    close: () => {
      for (const b of live) b.sidecar.stop();
      live.clear();
      if (!options.client) client.close();
    },
    idle: async (session: AnySession) => {
      const binding = bindings.get(session);
      if (!binding) return;
      await binding.sidecar.idle();
      await binding.closeAnswered;
      await binding.sidecar.idle();
    },
  }) as SidecarEndCallToolset;
}
