// attach() against a real sidecar: the session is opened with the job's room (or the one given),
// the WatchSession stream is held from the session's start, speeches are reported from then on,
// and a maximum call duration winds the call up.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { initializeLogger } from '@livekit/agents';
import { EndCallClient } from '../src/index.js';
import { createSidecarEndCallTool } from '../src/livekit/index.js';
import { FakeJobContext, FakeSession, Recorder, makeModel, runInJob } from './fakes.js';
import { type Sidecar, startSidecar, until } from './harness.js';
import { Wire } from './recording.js';

initializeLogger({ pretty: false, level: 'silent' });

const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyTool = { execute: (a: any, o: any) => Promise<unknown> };

let counter = 0;
const sid = (name: string) => `attach-${name}-${process.pid}-${++counter}`;

describe('attach() with a real sidecar', () => {
  let sidecar: Sidecar;
  before(async () => {
    sidecar = await startSidecar(['--wind-up-grace', '300ms']);
  });
  after(async () => {
    assert.equal(await sidecar.stop(), 0);
  });

  /** A tool on a client whose requests are recorded. */
  const recorded = () => {
    const wire = new Wire();
    const client = new EndCallClient({ address: sidecar.address, channelOptions: { interceptors: [wire.interceptor] } });
    return { wire, client };
  };

  test('opens the session with the job room and holds the stream before any end_call', async () => {
    const { wire, client } = recorded();
    const rec = new Recorder();
    const job = new FakeJobContext(rec, 'room-sip-7');
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const id = sid('job-room');
    const toolset = createSidecarEndCallTool({ client, sessionId: () => id });
    const tool = toolset.tools[0] as unknown as AnyTool;
    await runInJob(job, async () => {
      assert.equal(toolset.attach(session as never), id);
      assert.equal(toolset.attach(session as never), id, 'a second attach changes nothing');
      assert.equal(toolset.sessionIdOf(session as never), id);
      await toolset.idle(session as never);
      await until(() => wire.methods().includes('WatchSession'), 3000, 'the WatchSession stream');
      // speeches are reported from the attach on: the greeting, before any end_call
      session.createSpeech('greeting').finish();
      await settle();
      await toolset.idle(session as never);
      const s1 = session.speech('SH_1');
      await tool.execute({}, { ctx: { session, speechHandle: s1 }, toolCallId: 'c1', abortSignal: new AbortController().signal });
      s1.finish();
      await settle();
      await toolset.idle(session as never);
      await until(() => rec.effects.includes('session.shutdown'), 3000, 'session.shutdown');
      session.close('user_initiated');
      await settle();
      await toolset.idle(session as never);
      await until(() => rec.effects.includes('room.delete'), 3000, 'room.delete');
    });
    assert.deepEqual(rec.effects, ['session.shutdown', 'job.shutdown:user_initiated', 'room.delete']);
    const opened = wire.requests('OpenSession');
    assert.equal(opened.length, 1, 'one OpenSession');
    assert.equal(opened[0]!.sessionId, id);
    assert.equal(opened[0]!.room, 'room-sip-7');
    const methods = wire.methods();
    assert.equal(methods.filter((m) => m === 'WatchSession').length, 1, 'one stream, held throughout');
    assert.ok(methods.indexOf('WatchSession') < methods.indexOf('OnSpeechCreated'), methods.join());
    assert.ok(methods.indexOf('OnSpeechCreated') < methods.indexOf('EndCall'), methods.join());
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.outcome, 'OUTCOME_TOOL_TURN_DONE');
    const events = report.timeline.filter((e) => e.entry === 'event').map((e) => e.event);
    assert.deepEqual(events, [
      'open',
      'speech_created speech=greeting',
      'speech_done speech=greeting',
      'end_call speech=SH_1',
      'speech_done speech=SH_1',
      'session_close reason=user_initiated',
    ]);
    toolset.close();
    client.close();
  });

  test('an explicit room wins over the job room', async () => {
    const { wire, client } = recorded();
    const rec = new Recorder();
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const toolset = createSidecarEndCallTool({ client, sessionId: () => sid('explicit') });
    await runInJob(new FakeJobContext(rec, 'room-from-job'), async () => {
      toolset.attach(session as never, { room: 'room-explicit' });
      await toolset.idle(session as never);
    });
    assert.equal(wire.requests('OpenSession')[0]!.room, 'room-explicit');
    toolset.close();
    client.close();
  });

  test('outside a job: no room; a close without end_call is reported and does nothing', async () => {
    const { wire, client } = recorded();
    const rec = new Recorder();
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const id = sid('no-job');
    const toolset = createSidecarEndCallTool({ client, sessionId: () => id });
    toolset.attach(session as never);
    await toolset.idle(session as never);
    await until(() => wire.methods().includes('WatchSession'), 3000, 'the WatchSession stream');
    session.close('participant_disconnected');
    await settle();
    await toolset.idle(session as never);
    assert.equal(wire.requests('OpenSession')[0]!.room, undefined, 'no room sent');
    assert.deepEqual(rec.effects, []);
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.state, 'SESSION_STATE_CLOSED');
    assert.equal(report.outcome, 'OUTCOME_CLOSED_WITHOUT_END_CALL');
    toolset.close();
    client.close();
  });

  test('maxDurationMs: WIND_UP on the stream, then the session is ended after the grace', async () => {
    const { client } = recorded();
    const rec = new Recorder();
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const id = sid('max-duration');
    const toolset = createSidecarEndCallTool({ client, sessionId: () => id });
    await runInJob(new FakeJobContext(rec, 'room-long'), async () => {
      toolset.attach(session as never, { maxDurationMs: 300 });
      await until(() => rec.effects.includes('session.shutdown'), 5000, 'session.shutdown after the wind-up');
      assert.match(rec.effects[0]!, /^session\.generateReply:.+/);
      assert.equal(rec.effects[1], 'session.shutdown');
      session.close('user_initiated');
      await settle();
      await toolset.idle(session as never);
    });
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.directives.at(0)?.kind, 'DIRECTIVE_KIND_WIND_UP');
    assert.equal(report.directives.at(1)?.cause, 'SHUTDOWN_CAUSE_MAX_DURATION');
    toolset.close();
    client.close();
  });

  test('the sidecar unreachable at attach: an error is logged and the call ends in-process', async () => {
    const errors: string[] = [];
    const rec = new Recorder();
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const toolset = createSidecarEndCallTool({
      address: '127.0.0.1:1',
      logger: { debug() {}, info() {}, warn() {}, error: (_o, m) => errors.push(m ?? '') },
    });
    const tool = toolset.tools[0] as unknown as AnyTool;
    await runInJob(new FakeJobContext(rec, 'room-down'), async () => {
      toolset.attach(session as never);
      await until(() => errors.length > 0, 5000, 'the error log');
      const s1 = session.speech('SH_1');
      const out = await tool.execute({}, { ctx: { session, speechHandle: s1 }, toolCallId: 'c1', abortSignal: new AbortController().signal });
      assert.equal(out, 'say goodbye to the user');
      s1.finish();
      await until(() => rec.effects.includes('session.shutdown'), 3000, 'session.shutdown');
      session.close('user_initiated');
      await until(() => rec.effects.includes('room.delete'), 3000, 'room.delete');
    });
    assert.match(errors[0]!, /OpenSession failed|WatchSession/);
    assert.deepEqual(rec.effects, ['session.shutdown', 'job.shutdown:user_initiated', 'room.delete']);
    toolset.close();
  });
});
