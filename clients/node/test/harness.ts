// Starts a real endcall-sidecar process for a test file.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

/** clients/node, from build-test/test/ or test/. */
export const PKG_DIR = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(resolve(dir, 'package.json'))) dir = dirname(dir);
  return dir;
})();

export const REPO_DIR = resolve(PKG_DIR, '..', '..');

export function sidecarBinary(): string {
  return process.env.ENDCALL_SIDECAR_BIN ?? resolve(REPO_DIR, 'target', 'debug', 'endcall-sidecar');
}

export interface Sidecar {
  address: string;
  proc: ChildProcess;
  /** What the process wrote to stderr so far (its logs). */
  stderr(): string;
  stop(): Promise<number | null>;
}

export async function startSidecar(args: string[] = [], timeoutMs = 15000): Promise<Sidecar> {
  const bin = sidecarBinary();
  if (!existsSync(bin)) {
    throw new Error(`endcall-sidecar binary not found at ${bin} (set ENDCALL_SIDECAR_BIN)`);
  }
  const proc = spawn(bin, ['--listen', '127.0.0.1:0', '--log-level', 'warn', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.ENDCALL_TEST_RUST_LOG ?? '' },
  });
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (chunk: string) => {
    stderr += chunk;
    if (stderr.length > 1_000_000) stderr = stderr.slice(-500_000);
  });
  const address = await new Promise<string>((resolveAddr, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`sidecar did not print its address within ${timeoutMs} ms; stderr:\n${stderr}`));
    }, timeoutMs);
    const lines = createInterface({ input: proc.stdout! });
    lines.on('line', (line) => {
      const m = /^listening on (.+)$/.exec(line.trim());
      if (m) {
        clearTimeout(timer);
        resolveAddr(m[1]!);
      }
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`sidecar exited early (code ${code}, signal ${signal}); stderr:\n${stderr}`));
    });
  });
  return {
    address,
    proc,
    stderr: () => stderr,
    stop: () =>
      new Promise((resolveExit) => {
        if (proc.exitCode !== null || proc.signalCode !== null) {
          resolveExit(proc.exitCode);
          return;
        }
        const kill = setTimeout(() => proc.kill('SIGKILL'), 5000);
        proc.once('exit', (code) => {
          clearTimeout(kill);
          resolveExit(code);
        });
        proc.kill('SIGTERM');
      }),
  };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `cond` every 10 ms until it holds; fails after `timeoutMs`. */
export async function until(cond: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}
