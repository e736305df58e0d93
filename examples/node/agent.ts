// A LiveKit Agents worker (Node) whose end_call tool is decided by endcall-sidecar.
// Run the sidecar beside it (listening on 127.0.0.1:50051, or set ENDCALL_SIDECAR_ADDR), set
// LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET, then: npm run build && node dist/agent.js dev
import { fileURLToPath } from 'node:url';
import { type JobContext, ServerOptions, cli, defineAgent, voice } from '@livekit/agents';
import { createSidecarEndCallTool } from '@endcall/sidecar/livekit';

export default defineAgent({
  entry: async (ctx: JobContext) => {
    // Where beta.createEndCallTool(...) was: the same options, decisions made by the sidecar.
    const endCall = createSidecarEndCallTool({ deleteRoom: true });
    const agent = new voice.Agent({
      instructions: 'You are a friendly receptionist. Hang up when the caller is done.',
      tools: [endCall],
    });
    const session = new voice.AgentSession({
      stt: 'deepgram/nova-3',
      llm: 'openai/gpt-4.1-mini',
      tts: 'cartesia/sonic-2',
    });
    // Attached at the session's start: the sidecar knows the room and holds this worker's
    // stream, so it can hang the call up itself if the worker is lost or never closes.
    endCall.attach(session);
    await session.start({ agent, room: ctx.room });
  },
});

cli.runApp(new ServerOptions({ agent: fileURLToPath(import.meta.url) }));
