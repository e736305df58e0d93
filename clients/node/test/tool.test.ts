// createSidecarEndCallTool against a real sidecar: the tool definition comes from GetTool, the
// events reach the sidecar (its report shows them), and several sessions run side by side.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { initializeLogger, llm } from '@livekit/agents';
import { EndCallClient } from '../src/index.js';
import { FALLBACK_DESCRIPTION, createSidecarEndCallTool } from '../src/livekit/index.js';
import { FakeJobContext, FakeSession, Recorder, makeModel, runInJob } from './fakes.js';
import { type Sidecar, startSidecar, until } from './harness.js';

initializeLogger({ pretty: false, level: 'silent' });

const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyTool = { description: string; flags: number; parameters: unknown; execute: (a: any, o: any) => Promise<unknown> };

describe('createSidecarEndCallTool with a real sidecar', () => {
  let sidecar: Sidecar;
  let client: EndCallClient;
  before(async () => {
    sidecar = await startSidecar(['--reply-timeout', '300ms']);
    client = new EndCallClient({ address: sidecar.address });
  });
  after(async () => {
    client.close();
    assert.equal(await sidecar.stop(), 0);
  });

  test('setup replaces the built-in description with the sidecar tool definition', async () => {
    const toolset = createSidecarEndCallTool({ client, extraDescription: 'Support line only.', ignoreOnEnter: true });
    const before = toolset.tools[0] as unknown as AnyTool;
    assert.ok(before.description.startsWith(FALLBACK_DESCRIPTION));
    let pushed: readonly unknown[] = [];
    await toolset.setup({ updateTools: (tools) => (pushed = tools) });
    const def = await client.getTool({ extraDescription: 'Support line only.', ignoreOnEnter: true });
    assert.equal(pushed.length, 1);
    const t = pushed[0] as AnyTool & { name: string };
    assert.equal(t.name, 'end_call');
    assert.equal(t.description, def.description);
    assert.ok(t.description.endsWith('Support line only.'));
    assert.equal(t.flags, llm.ToolFlag.IGNORE_ON_ENTER);
    assert.deepEqual(t.parameters, JSON.parse(def.parametersJsonSchema));
  });

  test('setup with the sidecar down logs an error and keeps the built-in tool', async () => {
    const errors: string[] = [];
    const toolset = createSidecarEndCallTool({
      address: '127.0.0.1:1',
      logger: { debug() {}, info() {}, warn() {}, error: (_o, m) => errors.push(m ?? '') },
    });
    let pushed = false;
    await toolset.setup({ updateTools: () => (pushed = true) });
    assert.equal(pushed, false);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /GetTool failed/);
    toolset.close();
  });

  test('the events reach the sidecar: its report of the session', async () => {
    const rec = new Recorder();
    const job = new FakeJobContext(rec);
    const session = new FakeSession(rec, makeModel({ realtime: true, autoToolReply: true }));
    const toolset = createSidecarEndCallTool({ client, sessionId: () => `tool-report-${process.pid}-${Date.now()}` });
    const tool = toolset.tools[0] as unknown as AnyTool;
    await runInJob(job, async () => {
      const s1 = session.speech('SH_1');
      const out = await tool.execute({}, { ctx: { session, speechHandle: s1 }, toolCallId: 'c1', abortSignal: new AbortController().signal });
      assert.equal(out, 'say goodbye to the user');
      s1.finish();
      await settle();
      await toolset.idle(session as never);
      session.createSpeech('SH_2').finish();
      await settle();
      await toolset.idle(session as never);
      await until(() => rec.effects.includes('session.shutdown'), 3000, 'session.shutdown');
      session.close('user_initiated');
      await settle();
      await toolset.idle(session as never);
      await until(() => rec.effects.includes('room.delete'), 3000, 'room.delete');
    });
    const id = toolset.sessionIdOf(session as never)!;
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.outcome, 'OUTCOME_REPLY_PLAYED_OUT');
    assert.equal(report.state, 'SESSION_STATE_CLOSED');
    assert.deepEqual(report.capabilities, { realtime: true, autoToolReply: true, _realtime: 'realtime', _autoToolReply: 'autoToolReply' });
    const events = report.timeline.filter((e) => e.entry === 'event').map((e) => e.event);
    assert.equal(events.length, 5, `end_call, done, created, done, close: ${JSON.stringify(events)}`);
    assert.deepEqual(rec.effects, ['session.shutdown', 'job.shutdown:user_initiated', 'room.delete']);
    toolset.close();
  });

  test('twenty sessions at once, each ended exactly once', async () => {
    const toolset = createSidecarEndCallTool({ client });
    const tool = toolset.tools[0] as unknown as AnyTool;
    const runs = Array.from({ length: 20 }, async (_, i) => {
      const rec = new Recorder();
      const job = new FakeJobContext(rec);
      const session = new FakeSession(rec, makeModel({ realtime: i % 2 === 0, autoToolReply: true }));
      await runInJob(job, async () => {
        const s1 = session.speech(`SH_${i}`);
        await tool.execute({}, { ctx: { session, speechHandle: s1 }, toolCallId: `c${i}`, abortSignal: new AbortController().signal });
        s1.finish();
        await settle();
        await toolset.idle(session as never);
        if (i % 2 === 0) session.createSpeech(`R_${i}`).finish();
        await until(() => rec.effects.includes('session.shutdown'), 5000, `session ${i} shut down`);
        session.close('user_initiated');
        await settle();
        await toolset.idle(session as never);
        await until(() => rec.effects.includes('room.delete'), 5000, `room ${i} deleted`);
      });
      return rec.effects;
    });
    for (const effects of await Promise.all(runs)) {
      assert.deepEqual(effects, ['session.shutdown', 'job.shutdown:user_initiated', 'room.delete']);
    }
    toolset.close();
  });
});
