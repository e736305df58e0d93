// The silence ladder, time-limit warnings and ended_reason with createSidecarEndCallTool and a
// real sidecar: an attached session reports the user's final transcripts (OnUserSpeech) and
// carries out REMIND and WIND_UP as replies with the sidecar's instructions.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { initializeLogger, voice } from '@livekit/agents';
import { EndCallClient } from '../src/index.js';
import { createSidecarEndCallTool } from '../src/livekit/index.js';
import { FakeJobContext, FakeSession, Recorder, makeModel, runInJob } from './fakes.js';
import { type Sidecar, startSidecar, until } from './harness.js';

initializeLogger({ pretty: false, level: 'silent' });

const REMINDER = 'Ask whether the caller is still there.';
const GOODBYE = 'Nobody is answering: say goodbye.';

/** What LiveKit's STT reports: a transcript, final or not. */
function transcribed(session: FakeSession, transcript: string, isFinal: boolean): void {
  session.emit(voice.AgentSessionEventTypes.UserInputTranscribed, {
    type: 'user_input_transcribed',
    transcript,
    isFinal,
    createdAt: Date.now(),
  });
}

describe('the silence ladder through createSidecarEndCallTool', () => {
  let sidecar: Sidecar;
  let client: EndCallClient;
  before(async () => {
    sidecar = await startSidecar(['--wind-up-grace', '300ms', '--silence-wind-up-instructions', GOODBYE]);
    client = new EndCallClient({ address: sidecar.address });
  });
  after(async () => {
    client.close();
    assert.equal(await sidecar.stop(), 0);
  });

  const silentTool = (id: string) =>
    createSidecarEndCallTool({
      client,
      sessionId: () => id,
      silenceTimeoutMs: 600,
      silenceReminderAfterMs: 300,
      silenceReminders: 1,
      silenceReminderInstructions: REMINDER,
    });

  test('a silent user: REMIND, then WIND_UP, then the session is shut down and ends as a silence timeout', async () => {
    const rec = new Recorder();
    const job = new FakeJobContext(rec);
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const id = `silent-${process.pid}-${Date.now()}`;
    const toolset = silentTool(id);
    await runInJob(job, async () => {
      assert.equal(toolset.attach(session as never), id);
      await until(() => rec.effects.includes('session.shutdown'), 5000, 'session.shutdown');
      assert.deepEqual(rec.effects, [
        `session.generateReply:${REMINDER}`,
        `session.generateReply:${GOODBYE}`,
        'session.shutdown',
      ]);
      session.close('user_initiated');
      await toolset.idle(session as never);
    });
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.outcome, 'OUTCOME_SILENCE_TIMEOUT');
    assert.equal(report.endedReason, 'ENDED_REASON_SILENCE_TIMEOUT');
    assert.deepEqual(
      report.directives.map((d) => [d.kind, d.cause]),
      [
        ['DIRECTIVE_KIND_REMIND', 'SHUTDOWN_CAUSE_SILENCE_TIMEOUT'],
        ['DIRECTIVE_KIND_WIND_UP', 'SHUTDOWN_CAUSE_SILENCE_TIMEOUT'],
        ['DIRECTIVE_KIND_SHUTDOWN_SESSION', 'SHUTDOWN_CAUSE_SILENCE_TIMEOUT'],
        ['DIRECTIVE_KIND_DELETE_ROOM', 'SHUTDOWN_CAUSE_UNSPECIFIED'],
        ['DIRECTIVE_KIND_SHUTDOWN_JOB', 'SHUTDOWN_CAUSE_UNSPECIFIED'],
      ],
    );
    toolset.close();
  });

  test('each final transcript with words is OnUserSpeech, and it keeps the call going', async () => {
    const rec = new Recorder();
    const job = new FakeJobContext(rec);
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const id = `answers-${process.pid}-${Date.now()}`;
    const toolset = createSidecarEndCallTool({
      client,
      sessionId: () => id,
      silenceTimeoutMs: 1500,
      silenceReminderAfterMs: 1000,
      silenceReminders: 1,
      silenceReminderInstructions: REMINDER,
    });
    await runInJob(job, async () => {
      toolset.attach(session as never);
      // Interim transcripts and final ones without words are not speech.
      transcribed(session, 'hel', false);
      transcribed(session, '  ', true);
      // The user speaks every 400 ms for two seconds: past the timeout, no reminder, no wind-up.
      for (let i = 0; i < 5; i++) {
        transcribed(session, `sentence ${i}`, true);
        await new Promise((r) => setTimeout(r, 400));
      }
      await toolset.idle(session as never);
      assert.deepEqual(rec.effects, []);
      session.close('participant_disconnected');
      await toolset.idle(session as never);
    });
    const report = await client.getSession({ sessionId: id });
    const events = report.timeline.flatMap((e) => (e.event ? [e.event] : []));
    assert.equal(events.filter((e) => e === 'user_speech').length, 5, events.join(', '));
    assert.deepEqual(report.directives, []);
    assert.equal(report.endedReason, 'ENDED_REASON_USER_HANGUP');
    toolset.close();
  });

  test('time-limit warnings come as REMIND before the wind-up, and the options reach the sidecar', async () => {
    const rec = new Recorder();
    const job = new FakeJobContext(rec);
    const session = new FakeSession(rec, makeModel({ realtime: false }));
    const id = `warned-${process.pid}-${Date.now()}`;
    const toolset = createSidecarEndCallTool({ client, sessionId: () => id, silenceTimeoutMs: 0 });
    await runInJob(job, async () => {
      toolset.attach(session as never, {
        maxDurationMs: 900,
        maxDurationWarnings: [
          { beforeMs: 300, instructions: 'Almost out of time.' },
          { beforeMs: 600, instructions: 'Half a second left.' },
        ],
      });
      await until(() => rec.effects.includes('session.shutdown'), 5000, 'session.shutdown');
      assert.deepEqual(rec.effects.slice(0, 2), [
        'session.generateReply:Half a second left.',
        'session.generateReply:Almost out of time.',
      ]);
      assert.match(rec.effects[2]!, /^session\.generateReply:The call has reached its time limit/);
      session.close('user_initiated');
      await toolset.idle(session as never);
    });
    const report = await client.getSession({ sessionId: id });
    assert.equal(report.options?.silenceTimeout, null, 'a zero silence timeout is off');
    assert.deepEqual(
      report.options?.maxDurationWarnings.map((w) => w.instructions),
      ['Half a second left.', 'Almost out of time.'],
    );
    assert.equal(report.endedReason, 'ENDED_REASON_MAX_DURATION');
    toolset.close();
  });
});
