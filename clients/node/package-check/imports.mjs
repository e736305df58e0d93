// Run from a project that installed the packed tarball (never from the repository): both entry
// points import from JavaScript, they are the installed copies, the client loads the packaged
// proto and talks to a real sidecar, and the LiveKit tool is built with attach().
//   node imports.mjs <sidecar address> <expected version>
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { EndCallClient } from '@endcall/sidecar';
import { createSidecarEndCallTool } from '@endcall/sidecar/livekit';

const [address, version] = process.argv.slice(2);
const where = fileURLToPath(import.meta.resolve('@endcall/sidecar'));
if (!where.includes('/node_modules/@endcall/sidecar/')) throw new Error(`imported from ${where}`);
const manifest = JSON.parse(readFileSync(new URL('../package.json', import.meta.resolve('@endcall/sidecar')), 'utf8'));
if (manifest.version !== version) throw new Error(`installed ${manifest.version}, expected ${version}`);

const client = new EndCallClient({ address, deadlineMs: 5000 });
const tool = await client.getTool({});
if (tool.name !== 'end_call') throw new Error(`GetTool answered ${JSON.stringify(tool)}`);
const toolset = createSidecarEndCallTool({ client });
if (typeof toolset.attach !== 'function') throw new Error('the toolset has no attach()');
const def = await toolset.definition();
if (def?.name !== 'end_call') throw new Error('the toolset could not fetch its definition');
toolset.close();
client.close();
console.log(`imported ${manifest.name} ${manifest.version} from ${where}; GetTool answered`);
