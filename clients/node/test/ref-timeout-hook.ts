// Module hook for the differential tests: the reference end_call tool of @livekit/agents waits a
// fixed 5 s for a realtime tool reply (a module constant). To keep the tests fast, this hook sets
// that constant to the value handed to `initialize`; nothing else in the module changes. The
// rewrite is checked: if the constant is not found, loading fails.
let replyTimeoutMs = 5000;
const PATTERN = /const END_CALL_REPLY_TIMEOUT = [0-9e.]+;/;

export function initialize(data: { replyTimeoutMs: number }): void {
  replyTimeoutMs = data.replyTimeoutMs;
}

type LoadResult = { format?: string; source?: string | ArrayBuffer | Uint8Array; shortCircuit?: boolean };

export async function load(
  url: string,
  context: object,
  nextLoad: (url: string, context: object) => Promise<LoadResult>,
): Promise<LoadResult> {
  const result = await nextLoad(url, context);
  if (!/\/@livekit\/agents\/dist\/beta\/tools\/end_call\.js$/.test(url)) return result;
  const source = typeof result.source === 'string' ? result.source : new TextDecoder().decode(result.source as Uint8Array);
  if (!PATTERN.test(source)) {
    throw new Error(`ref-timeout-hook: END_CALL_REPLY_TIMEOUT not found in ${url}`);
  }
  return { ...result, source: source.replace(PATTERN, `const END_CALL_REPLY_TIMEOUT = ${replyTimeoutMs};`) };
}
