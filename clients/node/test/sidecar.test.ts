// The client against a real endcall-sidecar process: every RPC, the flows of the contract, the
// watcher's resume after a dropped stream, and exactly-once delivery of directives.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  type Directive__Output,
  EndCallClient,
  GrpcStatus,
  type ReconnectInfo,
  SessionWatcher,
  SidecarSession,
  durationFromMs,
  isSidecarError,
  msFromDuration,
} from '../src/index.js';
import { type Sidecar, sleep, startSidecar, until } from './harness.js';
import { CuttableProxy } from './proxy.js';

const REPLY_TIMEOUT_MS = 200;
const sid = (name: string) => `${name}-${randomUUID()}`;
const kinds = (ds: Directive__Output[]) =>
  ds.map((d) => `${d.seq}:${d.kind.replace('DIRECTIVE_KIND_', '')}${d.cause !== 'SHUTDOWN_CAUSE_UNSPECIFIED' ? `/${d.cause.replace('SHUTDOWN_CAUSE_', '')}` : ''}${d.reason ? `/${d.reason}` : ''}`);

async function rejectsWith(p: Promise<unknown>, code: number, field?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isSidecarError(err), `a gRPC error, got ${String(err)}`);
    assert.equal(err.code, code, `status ${err.code} (${err.details})`);
    if (field) assert.match(err.details, new RegExp(field), `message names ${field}: ${err.details}`);
    return true;
  });
}

/** Collects what a watcher delivers. */
function follow(client: EndCallClient, sessionId: string) {
  const got: Directive__Output[] = [];
  const reconnects: ReconnectInfo[] = [];
  const watcher = new SessionWatcher(client, sessionId, { minBackoffMs: 20, maxBackoffMs: 200 });
  watcher.on('directive', (d: Directive__Output) => got.push(d));
  watcher.on('reconnect', (r: ReconnectInfo) => reconnects.push(r));
  watcher.start();
  return { watcher, got, reconnects };
}

describe('endcall-sidecar via the Node client', () => {
  let sidecar: Sidecar;
  let client: EndCallClient;

  before(async () => {
    sidecar = await startSidecar(['--reply-timeout', `${REPLY_TIMEOUT_MS}ms`]);
    client = new EndCallClient({ address: sidecar.address });
    await client.waitForReady(5000);
  });

  after(async () => {
    client.close();
    const code = await sidecar.stop();
    assert.equal(code, 0, `sidecar exits 0 on SIGTERM; stderr:\n${sidecar.stderr()}`);
  });

  test('GetTool: name, description with the extra text, schema, flag', async () => {
    const def = await client.getTool({ extraDescription: 'Only for the support line.', ignoreOnEnter: true });
    assert.equal(def.name, 'end_call');
    assert.ok(def.description.length > 20);
    assert.ok(def.description.endsWith('Only for the support line.'), def.description);
    assert.equal(def.ignoreOnEnter, true);
    const schema = JSON.parse(def.parametersJsonSchema) as { type: string; properties?: object };
    assert.equal(schema.type, 'object');
    assert.deepEqual(Object.keys(schema.properties ?? {}), []);
    const plain = await client.getTool();
    assert.equal(plain.ignoreOnEnter, false);
    assert.ok(def.description.startsWith(plain.description.trimEnd()));
  });

  test('pipeline flow: end_call, goodbye done, close', async () => {
    const id = sid('pipeline');
    const w = follow(client, id);
    const ec = await client.endCall({ sessionId: id, speechId: 'SH_1', capabilities: { realtime: false } });
    assert.equal(ec._toolOutput, 'toolOutput');
    assert.equal(ec.toolOutput, 'say goodbye to the user');
    assert.deepEqual(ec.directives, []);
    assert.equal(ec.state, 'SESSION_STATE_ENDING');
    assert.equal(ec.duplicate, false);

    const other = await client.onSpeechDone({ sessionId: id, speechId: 'SH_other' });
    assert.deepEqual(other.directives, []);
    assert.equal(other.state, 'SESSION_STATE_ENDING');

    const done = await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    assert.deepEqual(kinds(done.directives), ['1:SHUTDOWN_SESSION/TOOL_TURN_DONE']);
    assert.equal(done.directives[0]!.sessionId, id);
    assert.equal(done.state, 'SESSION_STATE_SHUTTING_DOWN');

    const again = await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    assert.deepEqual(again.directives, [], 'a speech done twice counts once');

    const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_USER_INITIATED' });
    assert.deepEqual(kinds(close.directives), ['2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
    assert.equal(close.state, 'SESSION_STATE_CLOSED');

    const repeat = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_USER_INITIATED' });
    assert.equal(repeat.duplicate, true);
    assert.deepEqual(kinds(repeat.directives), kinds(close.directives), 'a repeated close returns the first answer');

    assert.equal(await w.watcher.done, 'closed');
    assert.deepEqual(kinds(w.got), ['1:SHUTDOWN_SESSION/TOOL_TURN_DONE', '2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);

    const report = await client.getSession({ sessionId: id });
    assert.equal(report.state, 'SESSION_STATE_CLOSED');
    assert.equal(report.outcome, 'OUTCOME_TOOL_TURN_DONE');
    assert.equal(report.closeReason, 'CLOSE_REASON_USER_INITIATED');
    assert.deepEqual(kinds(report.directives), kinds(w.got));
    assert.ok(report.timeline.length >= 5, `timeline has the events and directives (${report.timeline.length})`);
    assert.ok(msFromDuration(report.goodbyeDuration)! >= 0);

    await rejectsWith(client.endCall({ sessionId: id, speechId: 'SH_9' }), GrpcStatus.FAILED_PRECONDITION);
  });

  test('realtime flow: the tool reply is created and played out', async () => {
    const id = sid('realtime-reply');
    const w = follow(client, id);
    const caps = { realtime: true, autoToolReply: true };
    const ec = await client.endCall({ sessionId: id, speechId: 'SH_1', capabilities: caps });
    assert.equal(ec.state, 'SESSION_STATE_ENDING');
    const done = await client.onSpeechDone({ sessionId: id, speechId: 'SH_1', capabilities: caps });
    assert.deepEqual(done.directives, []);
    assert.equal(done.state, 'SESSION_STATE_AWAITING_REPLY');
    const created = await client.onSpeechCreated({ sessionId: id, speechId: 'SH_2' });
    assert.equal(created.state, 'SESSION_STATE_PLAYING_REPLY');
    await sleep(REPLY_TIMEOUT_MS + 150); // the reply timeout was cancelled: nothing happens
    assert.deepEqual(w.got, []);
    const replyDone = await client.onSpeechDone({ sessionId: id, speechId: 'SH_2', interrupted: true });
    assert.deepEqual(kinds(replyDone.directives), ['1:SHUTDOWN_SESSION/REPLY_PLAYED_OUT']);
    const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_JOB_SHUTDOWN' });
    assert.deepEqual(kinds(close.directives), ['2:DELETE_ROOM', '3:SHUTDOWN_JOB/job_shutdown']);
    assert.equal(await w.watcher.done, 'closed');
    assert.deepEqual(kinds(w.got), ['1:SHUTDOWN_SESSION/REPLY_PLAYED_OUT', '2:DELETE_ROOM', '3:SHUTDOWN_JOB/job_shutdown']);
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.outcome, 'OUTCOME_REPLY_PLAYED_OUT');
    assert.equal(report.capabilities?.realtime, true);
  });

  test('realtime flow: no tool reply within --reply-timeout', async () => {
    const id = sid('realtime-timeout');
    const w = follow(client, id);
    const caps = { realtime: true, autoToolReply: true };
    await client.endCall({ sessionId: id, speechId: 'SH_1', capabilities: caps });
    const doneAt = Date.now();
    const done = await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    assert.deepEqual(done.directives, []);
    assert.equal(done.state, 'SESSION_STATE_AWAITING_REPLY');
    await until(() => w.got.length > 0, 5000, 'the reply-timeout directive on the stream');
    const elapsed = Date.now() - doneAt;
    assert.deepEqual(kinds(w.got), ['1:SHUTDOWN_SESSION/REPLY_TIMEOUT']);
    assert.ok(elapsed >= REPLY_TIMEOUT_MS - 20, `pushed after the timeout (${elapsed} ms)`);
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.state, 'SESSION_STATE_SHUTTING_DOWN');
    assert.equal(report.outcome, 'OUTCOME_REPLY_TIMEOUT');
    assert.equal(msFromDuration(report.options?.replyTimeout), REPLY_TIMEOUT_MS);
    // A speech created after the timeout changes nothing.
    const late = await client.onSpeechCreated({ sessionId: id, speechId: 'SH_2' });
    assert.deepEqual(late.directives, []);
    const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_USER_INITIATED' });
    assert.deepEqual(kinds(close.directives), ['2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
    assert.equal(await w.watcher.done, 'closed');
    assert.equal(w.got.length, 3);
  });

  test('realtime flow: a per-session reply_timeout overrides the flag', async () => {
    const id = sid('realtime-timeout-option');
    const w = follow(client, id);
    await client.endCall({
      sessionId: id,
      speechId: 'SH_1',
      options: { replyTimeout: durationFromMs(600) },
      capabilities: { realtime: true, autoToolReply: true },
    });
    const doneAt = Date.now();
    await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    await until(() => w.got.length > 0, 5000, 'the reply-timeout directive');
    const elapsed = Date.now() - doneAt;
    assert.ok(elapsed >= 580, `waited the session's 600 ms, not the flag's 200 ms (${elapsed} ms)`);
    w.watcher.stop();
    assert.equal(await w.watcher.done, 'stopped');
  });

  test('options: deleteRoom false, endInstructions none', async () => {
    const id = sid('options');
    const ec = await client.endCall({
      sessionId: id,
      speechId: 'SH_1',
      options: { deleteRoom: false, endInstructions: { none: true } },
      capabilities: { realtime: true, autoToolReply: true },
    });
    assert.equal(ec._toolOutput, undefined, 'no tool output');
    assert.equal(ec.toolOutput, undefined);
    const done = await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    assert.deepEqual(kinds(done.directives), ['1:SHUTDOWN_SESSION/TOOL_TURN_DONE'], 'no reply awaited when the output is none');
    const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_TASK_COMPLETED' });
    assert.deepEqual(kinds(close.directives), ['2:SHUTDOWN_JOB/task_completed']);
  });

  test('close before the goodbye is done', async () => {
    const id = sid('close-early');
    const w = follow(client, id);
    await client.endCall({ sessionId: id, speechId: 'SH_1' });
    const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_PARTICIPANT_DISCONNECTED' });
    assert.deepEqual(kinds(close.directives), ['1:DELETE_ROOM', '2:SHUTDOWN_JOB/participant_disconnected']);
    const late = await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    assert.deepEqual(late.directives, [], 'nothing after the close');
    assert.equal(await w.watcher.done, 'closed');
    assert.deepEqual(kinds(w.got), kinds(close.directives));
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.outcome, 'OUTCOME_CLOSED_DURING_END_CALL');
  });

  test('close without end_call', async () => {
    const id = sid('no-end-call');
    const w = follow(client, id);
    await client.onSpeechCreated({ sessionId: id, speechId: 'SH_1' });
    await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_ERROR', errorMessage: 'stt failed' });
    assert.deepEqual(close.directives, []);
    assert.equal(close.state, 'SESSION_STATE_CLOSED');
    assert.equal(await w.watcher.done, 'closed');
    assert.deepEqual(w.got, []);
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.outcome, 'OUTCOME_CLOSED_WITHOUT_END_CALL');
    assert.equal(report.closeReason, 'CLOSE_REASON_ERROR');
  });

  test('late EndCall: the done arrived first', async () => {
    const id = sid('late-end-call');
    await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    const ec = await client.endCall({ sessionId: id, speechId: 'SH_1' });
    assert.deepEqual(kinds(ec.directives), ['1:SHUTDOWN_SESSION/TOOL_TURN_DONE']);
    const dup = await client.endCall({ sessionId: id, speechId: 'SH_1' });
    assert.equal(dup.duplicate, true);
    assert.deepEqual(dup.directives, []);
  });

  test('OpenSession with options, then the report shows them', async () => {
    const id = sid('open');
    const res = await client.openSession({
      sessionId: id,
      options: { extraDescription: 'x', endInstructions: { text: 'wave goodbye' } },
    });
    assert.equal(res.state, 'SESSION_STATE_ACTIVE');
    assert.equal(res.options?.endInstructions, 'wave goodbye');
    assert.equal(res.options?.deleteRoom, true);
    const ec = await client.endCall({ sessionId: id, speechId: 'SH_1' });
    assert.equal(ec.toolOutput, 'wave goodbye');
    await rejectsWith(
      client.openSession({ sessionId: id, options: { extraDescription: 'y' } }),
      GrpcStatus.FAILED_PRECONDITION,
    );
  });

  test('bad requests: status codes and messages that name the field', async () => {
    await rejectsWith(client.endCall({ sessionId: '', speechId: 'SH_1' }), GrpcStatus.INVALID_ARGUMENT, 'session_id');
    await rejectsWith(client.endCall({ sessionId: sid('bad'), speechId: '' }), GrpcStatus.INVALID_ARGUMENT, 'speech_id');
    await rejectsWith(client.onSpeechCreated({ sessionId: 'x'.repeat(129), speechId: 'a' }), GrpcStatus.INVALID_ARGUMENT, 'session_id');
    await rejectsWith(client.onSessionClose({ sessionId: sid('bad') }), GrpcStatus.INVALID_ARGUMENT, 'reason');
    await rejectsWith(
      client.endCall({ sessionId: sid('bad'), speechId: 'a', options: { endInstructions: { none: false } } }),
      GrpcStatus.INVALID_ARGUMENT,
      'end_instructions',
    );
    await rejectsWith(client.getSession({ sessionId: sid('unknown') }), GrpcStatus.NOT_FOUND);
  });

  test('watcher: resumes with after_seq after a dropped stream, nothing missed or repeated', async () => {
    const proxy = await CuttableProxy.start(sidecar.address);
    const viaProxy = new EndCallClient({ address: proxy.address, retries: 0 });
    try {
      const id = sid('resume');
      const w = follow(viaProxy, id);
      await client.endCall({ sessionId: id, speechId: 'SH_1' });
      await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
      await until(() => w.got.length === 1, 5000, 'seq 1 on the stream');

      proxy.cut(true); // drop the stream and refuse reconnects for a while
      const close = await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_USER_INITIATED' });
      assert.deepEqual(kinds(close.directives), ['2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
      await until(() => w.reconnects.length >= 2, 5000, 'failed reconnects while refused');
      proxy.accept();

      assert.equal(await w.watcher.done, 'closed');
      assert.deepEqual(kinds(w.got), ['1:SHUTDOWN_SESSION/TOOL_TURN_DONE', '2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
      assert.equal(w.reconnects[0]!.afterSeq, 1, 'reconnects after the last seq received');
      assert.ok(proxy.connections >= 2, 'a second connection was made');
      assert.equal(w.watcher.lastSeq, 3);

      // The server side of after_seq: a stream opened after seq 1 gets 2 and 3 only, then ends.
      const raw: Directive__Output[] = [];
      await new Promise<void>((resolve, reject) => {
        const call = client.watchSession({ sessionId: id, afterSeq: 1 });
        call.on('data', (d: Directive__Output) => raw.push(d));
        call.on('end', resolve);
        call.on('error', reject);
      });
      assert.deepEqual(kinds(raw), ['2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
    } finally {
      viaProxy.close();
      await proxy.close();
    }
  });

  test('watcher: gives up after maxAttempts when the sidecar is gone', async () => {
    const gone = new EndCallClient({ address: '127.0.0.1:1', retries: 0, deadlineMs: 500 });
    const watcher = new SessionWatcher(gone, 'nobody', { minBackoffMs: 5, maxBackoffMs: 20, maxAttempts: 3 });
    const errors: unknown[] = [];
    watcher.on('error', (e) => errors.push(e));
    watcher.start();
    await assert.rejects(watcher.done);
    assert.equal(errors.length, 1);
    gone.close();
  });

  test('SidecarSession: each directive carried out once, in order, from replies and the stream', async () => {
    const id = sid('session');
    const carried: Directive__Output[] = [];
    const s = new SidecarSession(client, id, { onDirective: (d) => void carried.push(d) });
    const caps = { realtime: true, autoToolReply: true };
    await s.endCall('SH_1', undefined, caps);
    await s.speechDone('SH_1', { capabilities: caps });
    // The timeout directive exists only on the stream.
    await until(() => carried.length === 1, 5000, 'the reply timeout');
    const close = await s.close('CLOSE_REASON_USER_INITIATED');
    await s.idle();
    assert.deepEqual(kinds(close.directives), ['2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
    assert.deepEqual(kinds(carried), ['1:SHUTDOWN_SESSION/REPLY_TIMEOUT', '2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
    await sleep(100);
    assert.equal(carried.length, 3, 'the stream did not deliver any of them a second time');

    // Pipeline: SHUTDOWN_SESSION arrives in the reply and on the stream; carried out once.
    const id2 = sid('session-pipeline');
    const carried2: Directive__Output[] = [];
    const s2 = new SidecarSession(client, id2, { onDirective: (d) => void carried2.push(d) });
    await s2.endCall('SH_1');
    await until(() => s2.watcher !== undefined, 1000);
    await s2.speechDone('SH_1');
    await sleep(150); // let the stream deliver its copy too
    await s2.close('CLOSE_REASON_USER_INITIATED');
    await s2.idle();
    assert.deepEqual(kinds(carried2), ['1:SHUTDOWN_SESSION/TOOL_TURN_DONE', '2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
  });

  test('SidecarSession: a reply that skips a seq fills the gap before carrying on', async () => {
    // No watcher here: the timer's directive (seq 1) is never seen on a stream, so the close
    // reply (seq 2, 3) has a hole that GetSession fills.
    const id = sid('gap');
    const carried: Directive__Output[] = [];
    const s = new SidecarSession(client, id, { onDirective: (d) => void carried.push(d) });
    const caps = { realtime: true, autoToolReply: true };
    await client.endCall({ sessionId: id, speechId: 'SH_1', capabilities: caps });
    await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
    for (;;) {
      const r = await client.getSession({ sessionId: id });
      if (r.state === 'SESSION_STATE_SHUTTING_DOWN') break;
      await sleep(20);
    }
    await s.close('CLOSE_REASON_USER_INITIATED');
    await s.idle();
    assert.deepEqual(kinds(carried), ['1:SHUTDOWN_SESSION/REPLY_TIMEOUT', '2:DELETE_ROOM', '3:SHUTDOWN_JOB/user_initiated']);
  });
});
