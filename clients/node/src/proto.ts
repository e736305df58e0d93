// Loads the endcall.v1 API from the .proto files that the build copied out of the repository's
// proto/ directory (see scripts/gen.mjs). Types in ./gen are generated from the same files.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType } from './gen/endcall.js';

const PROTO_FILE = join('endcall', 'v1', 'endcall.proto');

/** Options the generated types were produced with (scripts/gen.mjs); keep the two in step. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

/**
 * Finds the directory holding `endcall/v1/endcall.proto`: `ENDCALL_PROTO_DIR` if set, else the
 * package's own `proto/` directory (one or two levels above this module, depending on whether it
 * runs from `dist/` or from the test build).
 */
export function protoDir(): string {
  const fromEnv = process.env.ENDCALL_PROTO_DIR;
  if (fromEnv) return resolve(fromEnv);
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, PROTO_FILE))) return candidate;
    dir = dirname(dir);
  }
  throw new Error(
    `endcall.proto not found above ${dirname(fileURLToPath(import.meta.url))}; ` +
      'run `npm run gen` or set ENDCALL_PROTO_DIR',
  );
}

let cached: ProtoGrpcType | undefined;

/** The loaded `endcall.v1` package definition (loaded once per process). */
export function loadApi(): ProtoGrpcType {
  if (!cached) {
    const definition = protoLoader.loadSync(PROTO_FILE, {
      ...LOADER_OPTIONS,
      includeDirs: [protoDir()],
    });
    cached = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  }
  return cached;
}
