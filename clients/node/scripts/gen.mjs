// Build step: copy the repository's proto/ tree into this package and generate TypeScript types
// from it, so the client never carries a hand-written copy of the API that could drift.
import { cpSync, existsSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const repoProto = resolve(pkgDir, '..', '..', 'proto');
const localProto = join(pkgDir, 'proto');
const genDir = join(pkgDir, 'src', 'gen');

if (existsSync(join(repoProto, 'endcall', 'v1', 'endcall.proto'))) {
  rmSync(localProto, { recursive: true, force: true });
  // The .proto files only: proto/ also holds the repository's buf breaking baseline.
  cpSync(repoProto, localProto, {
    recursive: true,
    filter: (src) => statSync(src).isDirectory() || src.endsWith('.proto'),
  });
} else if (!existsSync(join(localProto, 'endcall', 'v1', 'endcall.proto'))) {
  console.error(`gen: no proto tree found at ${repoProto} nor ${localProto}`);
  process.exit(1);
}

rmSync(genDir, { recursive: true, force: true });
mkdirSync(genDir, { recursive: true });
const bin = join(pkgDir, 'node_modules', '@grpc', 'proto-loader', 'build', 'bin', 'proto-loader-gen-types.js');
const args = [
  bin,
  'endcall/v1/endcall.proto',
  '--grpcLib=@grpc/grpc-js',
  `--outDir=${genDir}`,
  '--longs=Number',
  '--enums=String',
  '--defaults',
  '--oneofs',
  '--includeComments',
  '--importFileExtension=.js',
  `--includeDirs=${localProto}`,
];
const r = spawnSync(process.execPath, args, { stdio: 'inherit' });
if (r.status !== 0) process.exit(r.status ?? 1);
