// Token and TLS against the real sidecar binary: the token rides on every call (watch streams
// included), a missing or wrong one fails with UNAUTHENTICATED, and TLS/mTLS connect with the
// certificates scripts/test-pki makes (openssl CLI) in a temporary directory.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  type Directive__Output,
  EndCallClient,
  type EndCallClientOptions,
  GrpcStatus,
  SessionWatcher,
  isSidecarError,
  resolveSecurity,
} from '../src/index.js';
import { REPO_DIR, type Sidecar, startSidecar } from './harness.js';

const TOKEN = 'node-client-token-0123456789';
const sid = (name: string) => `sec-${name}-${randomUUID()}`;

async function rejectsWith(p: Promise<unknown>, code: number, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isSidecarError(err), `a gRPC error, got ${String(err)}`);
    assert.equal(err.code, code, `status ${err.code} (${err.details})`);
    if (message) assert.match(err.details, message);
    assert.ok(!err.details.includes(TOKEN), 'the token is never echoed');
    return true;
  });
}

/** A goodbye through the reconnecting watcher: unary calls and the stream carry the token. */
async function goodbye(client: EndCallClient): Promise<void> {
  const id = sid('goodbye');
  await client.endCall({ sessionId: id, speechId: 'SH_1' });
  const watcher = new SessionWatcher(client, id, { maxAttempts: 3 });
  const first = new Promise<Directive__Output>((res) => watcher.once('directive', res));
  watcher.start();
  await client.onSpeechCreated({ sessionId: id, speechId: 'SH_1' });
  await client.onSpeechDone({ sessionId: id, speechId: 'SH_1' });
  const d = await first;
  assert.equal(d.kind, 'DIRECTIVE_KIND_SHUTDOWN_SESSION');
  await client.onSessionClose({ sessionId: id, reason: 'CLOSE_REASON_USER_INITIATED' });
  assert.equal(await watcher.done, 'closed');
}

describe('security: bearer token and TLS', () => {
  let dir: string;
  let tokenFile: string;
  const started: Sidecar[] = [];
  const clients: EndCallClient[] = [];
  const client = (options: EndCallClientOptions) => {
    const c = new EndCallClient({ deadlineMs: 5000, retries: 0, ...options });
    clients.push(c);
    return c;
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'endcall-node-sec-'));
    tokenFile = join(dir, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`);
    execFileSync(resolve(REPO_DIR, 'scripts', 'test-pki'), [join(dir, 'pki')], { stdio: 'inherit' });
  });

  after(async () => {
    for (const c of clients) c.close();
    for (const s of started) assert.equal(await s.stop(), 0, s.stderr());
    rmSync(dir, { recursive: true, force: true });
  });

  test('a token is sent on every call and stream; none or a wrong one is UNAUTHENTICATED', async () => {
    const sidecar = await startSidecar(['--auth-token-file', tokenFile]);
    started.push(sidecar);
    await goodbye(client({ address: sidecar.address, token: TOKEN }));
    await goodbye(client({ address: sidecar.address, tokenFile }));

    const none = client({ address: sidecar.address });
    await rejectsWith(none.getTool(), GrpcStatus.UNAUTHENTICATED, /missing authorization metadata/);
    // The watcher gives up at once on a refused token instead of retrying.
    const watcher = new SessionWatcher(none, sid('none'), { maxAttempts: 20, minBackoffMs: 1000 });
    watcher.on('error', () => undefined);
    const t0 = Date.now();
    await rejectsWith(watcher.start().done, GrpcStatus.UNAUTHENTICATED);
    assert.ok(Date.now() - t0 < 1000, 'no backoff before giving up');

    const wrong = client({ address: sidecar.address, token: `not-${TOKEN}` });
    await rejectsWith(wrong.getTool(), GrpcStatus.UNAUTHENTICATED, /invalid bearer token/);
  });

  test('the token and TLS settings come from ENDCALL_SIDECAR_* variables too', () => {
    const env = {
      ENDCALL_SIDECAR_TOKEN_FILE: tokenFile,
      ENDCALL_SIDECAR_TLS_CA: join(dir, 'pki', 'ca.pem'),
      ENDCALL_SIDECAR_TLS_SERVER_NAME: 'localhost',
    };
    const s = resolveSecurity({}, env);
    assert.equal(s.authorization, `Bearer ${TOKEN}`);
    assert.equal(s.channelOptions['grpc.ssl_target_name_override'], 'localhost');
    assert.throws(() => resolveSecurity({}, { ENDCALL_SIDECAR_TLS_CA: '/nonexistent/ca.pem' }), /ENDCALL_SIDECAR_TLS_CA\) \/nonexistent\/ca.pem/);
    assert.throws(() => resolveSecurity({ tokenFile: '/nonexistent/token' }, {}), /ENDCALL_SIDECAR_TOKEN_FILE\) \/nonexistent\/token/);
    assert.throws(() => resolveSecurity({ tlsCa: '/x', tlsCert: '/y' }, {}), /tlsKey is missing/);
    assert.throws(() => resolveSecurity({}, { ENDCALL_SIDECAR_TOKEN: 'a', ENDCALL_SIDECAR_TOKEN_FILE: tokenFile }), /not both/);
  });

  test('TLS and mutual TLS', async () => {
    const pki = (name: string) => join(dir, 'pki', name);
    const sidecar = await startSidecar([
      '--tls-cert', pki('server.pem'),
      '--tls-key', pki('server.key'),
      '--tls-client-ca', pki('client-ca.pem'),
      '--auth-token-file', tokenFile,
    ]);
    started.push(sidecar);
    const secure = { token: TOKEN, tlsCa: pki('ca.pem'), tlsCert: pki('client.pem'), tlsKey: pki('client.key') };
    await goodbye(client({ address: sidecar.address, ...secure }));
    const port = sidecar.address.split(':').pop();
    await client({ address: `localhost:${port}`, ...secure }).getTool();

    // No client certificate, a server CA that did not sign the server, plaintext: all refused.
    await assert.rejects(client({ address: sidecar.address, token: TOKEN, tlsCa: pki('ca.pem') }).getTool(), isSidecarError);
    await assert.rejects(client({ address: sidecar.address, ...secure, tlsCa: pki('client-ca.pem') }).getTool(), isSidecarError);
    await assert.rejects(client({ address: sidecar.address, token: TOKEN }).getTool(), isSidecarError);
  });
});
