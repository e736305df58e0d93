// Differential tests: the reference end_call tool of @livekit/agents (beta.createEndCallTool) and
// createSidecarEndCallTool, backed by a real sidecar process, are driven through the same scripted
// sequences with recording fakes of the session, speech handles and job context. Both must have
// the same effects in the same order, except where a difference is named (and then both sides are
// spelled out).
import assert from 'node:assert/strict';
import { register } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { type Sidecar, sleep, startSidecar, until } from './harness.js';

/** The reference's realtime reply timeout (patched down from 5 s) and the sidecar tool's. */
const REPLY_TIMEOUT_MS = 1000;
register(new URL('./ref-timeout-hook.js', import.meta.url), { data: { replyTimeoutMs: REPLY_TIMEOUT_MS } });
const agents = await import('@livekit/agents');
const { FakeJobContext, FakeSession, Recorder, makeModel, runInJob } = await import('./fakes.js');
const { createSidecarEndCallTool } = await import('../src/livekit/index.js');
type ModelSpec = import('./fakes.js').ModelSpec;
type FakeSessionT = InstanceType<typeof FakeSession>;

agents.initializeLogger({ pretty: false, level: 'silent' });

type Step =
  | { call: string }
  | { create: string }
  | { done: string; interrupted?: boolean }
  | { close: string }
  | { waitFor: string }
  | { sleep: number };

interface ToolOptions {
  deleteRoom?: boolean;
  endInstructions?: string | null;
  extraDescription?: string;
  ignoreOnEnter?: boolean;
}

interface Scenario {
  name: string;
  model: ModelSpec;
  options?: ToolOptions;
  steps: Step[];
  /** The effects (with `> step` marks) both tools must produce; the sidecar's if `differs`. */
  expect: string[];
  /** A deliberate difference: what the reference does instead, and why. */
  differs?: { reference: string[]; why: string };
}

type Impl = 'reference' | 'sidecar' | 'sidecar-down';

const OUT = 'say goodbye to the user';
const hooks = (out: string | null = OUT) => [
  'hook.called',
  `hook.completed:${out ?? '<none>'}`,
  `tool.output:${out ?? '<none>'}`,
];

const SCENARIOS: Scenario[] = [
  {
    name: 'pipeline: the goodbye plays out, then the session closes',
    model: { realtime: false },
    steps: [{ call: 'S1' }, { done: 'S1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> done S1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
  },
  {
    name: 'pipeline: deleteRoom false and custom instructions',
    model: { realtime: false },
    options: { deleteRoom: false, endInstructions: 'thank the caller and hang up' },
    steps: [{ call: 'S1' }, { done: 'S1' }, { close: 'participant_disconnected' }],
    expect: ['> call S1', ...hooks('thank the caller and hang up'), '> done S1', 'session.shutdown', '> close participant_disconnected', 'job.shutdown:participant_disconnected'],
  },
  {
    name: 'pipeline: endInstructions null (no output)',
    model: { realtime: false },
    options: { endInstructions: null },
    steps: [{ call: 'S1' }, { done: 'S1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(null), '> done S1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
  },
  {
    name: 'pipeline: a custom close reason is passed through to the job',
    model: { realtime: false },
    steps: [{ call: 'S1' }, { done: 'S1' }, { close: 'my_app_reason' }],
    expect: ['> call S1', ...hooks(), '> done S1', 'session.shutdown', '> close my_app_reason', 'job.shutdown:my_app_reason', 'room.delete'],
  },
  {
    name: 'pipeline: other speeches before the goodbye is done change nothing',
    model: { realtime: false },
    steps: [{ call: 'S1' }, { create: 'X1' }, { done: 'X1' }, { done: 'S1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> create X1', '> done X1', '> done S1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
  },
  {
    name: 'realtime with auto tool reply: the reply is created and played out',
    model: { realtime: true, autoToolReply: true },
    steps: [{ call: 'S1' }, { done: 'S1' }, { create: 'R1' }, { done: 'R1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> done S1', '> create R1', '> done R1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
  },
  {
    name: 'realtime with auto tool reply: no reply within the timeout',
    model: { realtime: true, autoToolReply: true },
    steps: [{ call: 'S1' }, { done: 'S1' }, { waitFor: 'session.shutdown' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> done S1', '> waitFor session.shutdown', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
  },
  {
    name: 'realtime with auto tool reply: a speech created while the tool turn plays is not the reply',
    model: { realtime: true, autoToolReply: true },
    steps: [{ call: 'S1' }, { create: 'R0' }, { done: 'S1' }, { done: 'R0' }, { create: 'R1' }, { done: 'R1' }],
    expect: ['> call S1', ...hooks(), '> create R0', '> done S1', '> done R0', '> create R1', '> done R1', 'session.shutdown'],
  },
  {
    name: 'realtime without auto tool reply: ends when the tool turn is done',
    model: { realtime: true, autoToolReply: false },
    steps: [{ call: 'S1' }, { done: 'S1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> done S1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
  },
  {
    name: 'realtime: the session closes while the reply is awaited',
    model: { realtime: true, autoToolReply: true },
    steps: [{ call: 'S1' }, { done: 'S1' }, { close: 'participant_disconnected' }, { sleep: REPLY_TIMEOUT_MS + 300 }],
    expect: ['> call S1', ...hooks(), '> done S1', '> close participant_disconnected', 'job.shutdown:participant_disconnected', 'room.delete', `> sleep ${REPLY_TIMEOUT_MS + 300}`],
  },
  {
    name: 'no end_call: the session closes',
    model: { realtime: false },
    steps: [{ create: 'X1' }, { done: 'X1' }, { close: 'participant_disconnected' }],
    expect: ['> create X1', '> done X1', '> close participant_disconnected'],
  },
  {
    name: 'pipeline: the session closes before the goodbye is done',
    model: { realtime: false },
    steps: [{ call: 'S1' }, { close: 'participant_disconnected' }, { done: 'S1' }],
    expect: ['> call S1', ...hooks(), '> close participant_disconnected', 'job.shutdown:participant_disconnected', 'room.delete', '> done S1'],
    differs: {
      reference: ['> call S1', ...hooks(), '> close participant_disconnected', 'job.shutdown:participant_disconnected', 'room.delete', '> done S1', 'session.shutdown'],
      why: "the reference's done callback outlives the close and calls shutdown() on the closed session; the sidecar issues nothing after a close (contract, 'After SHUTDOWN_SESSION' and row 7)",
    },
  },
  {
    name: 'pipeline: the goodbye is interrupted',
    model: { realtime: false },
    steps: [{ call: 'S1' }, { done: 'S1', interrupted: true }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> done S1 (interrupted)', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
    differs: {
      reference: ['> call S1', ...hooks(), '> done S1 (interrupted)', 'session.shutdown', '> close user_initiated'],
      why: "in @livekit/agents 1.9.0 the interruption aborts the tool call's abortSignal, which also drops the reference's close listener, so the job is never shut down; the contract (and the Python reference) count an interrupted speech as done and always shut the job down on close",
    },
  },
  {
    name: 'realtime with auto tool reply: the tool turn is interrupted',
    model: { realtime: true, autoToolReply: true },
    steps: [{ call: 'S1' }, { done: 'S1', interrupted: true }, { create: 'R1' }, { done: 'R1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> done S1 (interrupted)', '> create R1', '> done R1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
    differs: {
      reference: ['> call S1', ...hooks(), '> done S1 (interrupted)', '> create R1', '> done R1', '> close user_initiated'],
      why: 'the aborted tool signal cancels the reference\'s wait for the reply and its close listener, so it never ends the call; the contract treats the interrupted turn as done (rows 3, 4, 6, 7)',
    },
  },
  {
    name: 'realtime with auto tool reply and endInstructions null',
    model: { realtime: true, autoToolReply: true },
    options: { endInstructions: null },
    steps: [{ call: 'S1' }, { done: 'S1' }, { sleep: REPLY_TIMEOUT_MS + 300 }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(null), '> done S1', 'session.shutdown', `> sleep ${REPLY_TIMEOUT_MS + 300}`, '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
    differs: {
      reference: ['> call S1', ...hooks(null), '> done S1', `> sleep ${REPLY_TIMEOUT_MS + 300}`, 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
      why: 'with no tool output no reply is asked for, so the contract (row 2, as the Python reference) ends at once; the Node reference 1.9.0 does not look at the output and waits out the reply timeout',
    },
  },
  {
    name: 'pipeline: end_call called twice in the same turn',
    model: { realtime: false },
    steps: [{ call: 'S1' }, { call: 'S1' }, { done: 'S1' }, { close: 'user_initiated' }],
    expect: ['> call S1', ...hooks(), '> call S1', ...hooks(), '> done S1', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'room.delete'],
    differs: {
      reference: ['> call S1', ...hooks(), '> call S1', ...hooks(), '> done S1', 'session.shutdown', 'session.shutdown', '> close user_initiated', 'job.shutdown:user_initiated', 'job.shutdown:user_initiated', 'room.delete', 'room.delete'],
      why: 'each reference invocation registers its own callbacks, so everything happens twice; the sidecar carries each directive out once (idempotency extension)',
    },
  },
];

function label(step: Step): string {
  if ('call' in step) return `> call ${step.call}`;
  if ('create' in step) return `> create ${step.create}`;
  if ('done' in step) return `> done ${step.done}${step.interrupted ? ' (interrupted)' : ''}`;
  if ('close' in step) return `> close ${step.close}`;
  if ('waitFor' in step) return `> waitFor ${step.waitFor}`;
  return `> sleep ${step.sleep}`;
}

const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

interface Run {
  effects: string[];
  errors: string[];
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyTool = { execute: (args: any, opts: any) => Promise<unknown> };

async function run(impl: Impl, sc: Scenario, address: string): Promise<Run> {
  const rec = new Recorder();
  const errors: string[] = [];
  const job = new FakeJobContext(rec);
  const session: FakeSessionT = new FakeSession(rec, makeModel(sc.model));
  const hookOpts = {
    onToolCalled: () => rec.record('hook.called'),
    onToolCompleted: (ev: { output?: { value: unknown } }) =>
      rec.record(`hook.completed:${ev.output === undefined ? '<none>' : String(ev.output.value)}`),
  };
  const logger = {
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (_o: object, msg?: string) => errors.push(msg ?? ''),
  };
  let idle = async () => {};
  let close = () => {};
  let toolset: { tools: readonly unknown[] };
  if (impl === 'reference') {
    toolset = agents.beta.createEndCallTool({ ...sc.options, ...hookOpts });
  } else {
    const t = createSidecarEndCallTool({
      ...sc.options,
      ...hookOpts,
      address: impl === 'sidecar' ? address : '127.0.0.1:1',
      replyTimeoutMs: REPLY_TIMEOUT_MS,
      logger,
    });
    toolset = t;
    idle = () => t.idle(session as never);
    close = () => t.close();
  }
  const tool = toolset.tools[0] as AnyTool;
  let calls = 0;
  await runInJob(job, async () => {
    for (const step of sc.steps) {
      rec.record(label(step));
      if ('call' in step) {
        const speech = session.speech(step.call);
        const controller = new AbortController();
        speech.toolSignals.push(controller);
        const ctx = {
          session,
          speechHandle: speech,
          functionCall: { callId: `call_${++calls}`, name: 'end_call', args: '{}' },
          userData: undefined,
        };
        const out = await tool.execute({}, { ctx, toolCallId: ctx.functionCall.callId, abortSignal: controller.signal });
        rec.record(`tool.output:${out === undefined ? '<none>' : String(out)}`);
      } else if ('create' in step) {
        session.createSpeech(step.create);
      } else if ('done' in step) {
        session.speech(step.done).finish(step.interrupted ?? false);
      } else if ('close' in step) {
        session.close(step.close);
      } else if ('waitFor' in step) {
        await until(() => rec.effects.includes(step.waitFor), 5000 + REPLY_TIMEOUT_MS, step.waitFor);
      } else {
        await sleep(step.sleep);
      }
      await settle();
      await idle();
      await settle();
    }
    // Anything late (a stray directive) would show up here.
    await sleep(100);
    await idle();
    await settle();
  });
  close();
  return { effects: rec.effects, errors };
}

describe('differential: @livekit/agents beta.createEndCallTool vs createSidecarEndCallTool', () => {
  let sidecar: Sidecar;
  before(async () => {
    sidecar = await startSidecar();
  });
  after(async () => {
    assert.equal(await sidecar.stop(), 0, 'sidecar exits 0 on SIGTERM');
  });

  for (const sc of SCENARIOS) {
    test(sc.name, async () => {
      const [ref, side] = await Promise.all([run('reference', sc, sidecar.address), run('sidecar', sc, sidecar.address)]);
      if (sc.differs) {
        assert.deepEqual(ref.effects, sc.differs.reference, 'reference effects');
        assert.deepEqual(side.effects, sc.expect, `sidecar effects (deliberate difference: ${sc.differs.why})`);
        assert.notDeepEqual(ref.effects, side.effects);
      } else {
        assert.deepEqual(ref.effects, sc.expect, 'reference effects');
        assert.deepEqual(side.effects, ref.effects, 'sidecar effects equal the reference');
      }
      assert.deepEqual(side.errors, [], 'no error logged while the sidecar is up');
    });
  }

  // With the sidecar unreachable the tool logs an error and ends the call in-process, the way
  // the reference does.
  for (const name of [
    'pipeline: the goodbye plays out, then the session closes',
    'pipeline: deleteRoom false and custom instructions',
    'realtime with auto tool reply: the reply is created and played out',
    'realtime with auto tool reply: no reply within the timeout',
    'realtime: the session closes while the reply is awaited',
  ]) {
    test(`sidecar unreachable, ${name}`, async () => {
      const sc = SCENARIOS.find((s) => s.name === name)!;
      const [ref, down] = await Promise.all([run('reference', sc, sidecar.address), run('sidecar-down', sc, sidecar.address)]);
      assert.deepEqual(down.effects, ref.effects);
      assert.ok(
        down.errors.some((m) => /ending the call in-process/.test(m)),
        `an error was logged: ${JSON.stringify(down.errors)}`,
      );
    });
  }
});
