// Type-checked (tsc --noEmit) in a project that installed the packed tarball: both entry points
// resolve to real types. Each @ts-expect-error line must be an error, which it is only when the
// declarations are there: with a missing .d.ts the imports turn into `any` and tsc fails on them.
import { EndCallClient, type SessionReport__Output } from '@endcall/sidecar';
import { type SidecarEndCallToolset, createSidecarEndCallTool } from '@endcall/sidecar/livekit';

export async function roomOf(client: EndCallClient, sessionId: string): Promise<string> {
  const report: SessionReport__Output = await client.getSession({ sessionId });
  // @ts-expect-error the room is a string (the generated types are there)
  const wrong: number = report.room;
  void wrong;
  return report.room;
}

export function tool(client: EndCallClient): SidecarEndCallToolset {
  const toolset = createSidecarEndCallTool({ client, deleteRoom: true });
  // @ts-expect-error attach() needs the agent session
  toolset.attach();
  // @ts-expect-error deleteRoom is a boolean
  createSidecarEndCallTool({ deleteRoom: 'yes' });
  // @ts-expect-error the client takes an options object
  new EndCallClient(42);
  return toolset;
}
