// Checks an unpacked `npm pack` tarball (its package/ folder): the entry points of package.json
// exist, every relative import of every shipped .js and .d.ts file resolves to a shipped file,
// and the proto is the repository's, byte for byte. Prints what is missing; exit 1 if anything is.
//   node tarball.mjs <unpacked package dir> <repository proto dir>
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const [pkg, repoProto] = process.argv.slice(2).map((p) => resolve(p));
const problems = [];

const walk = (dir) =>
  readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });

const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8'));
const entries = [manifest.main, manifest.types];
for (const target of Object.values(manifest.exports ?? {})) entries.push(...Object.values(target));
for (const entry of entries) {
  if (!existsSync(join(pkg, entry))) problems.push(`package.json names ${entry}, which is not in the tarball`);
}
if (!existsSync(join(pkg, 'README.md'))) problems.push('README.md is not in the tarball');

const shipped = existsSync(join(pkg, 'dist')) ? walk(join(pkg, 'dist')) : [];
const importRe = /(?:from\s+|import\s*\(\s*|import\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
for (const file of shipped.filter((f) => f.endsWith('.js') || f.endsWith('.d.ts'))) {
  for (const [, spec] of readFileSync(file, 'utf8').matchAll(importRe)) {
    const target = resolve(dirname(file), spec);
    // A .d.ts imports './x.js' and means './x.d.ts'.
    const candidates = file.endsWith('.d.ts') ? [target.replace(/\.js$/, '.d.ts'), target] : [target];
    if (!candidates.some((c) => existsSync(c))) {
      problems.push(`${relative(pkg, file)} imports ${spec}, which is not in the tarball`);
    }
  }
}

const protoFiles = walk(repoProto).filter((f) => f.endsWith('.proto'));
for (const f of protoFiles) {
  const rel = relative(repoProto, f);
  const packed = join(pkg, 'proto', rel);
  if (!existsSync(packed)) problems.push(`proto/${rel} is not in the tarball`);
  else if (!readFileSync(packed).equals(readFileSync(f))) problems.push(`proto/${rel} differs from the repository's`);
}

if (problems.length > 0) {
  for (const p of problems) console.log(`missing: ${p}`);
  process.exit(1);
}
console.log(`${shipped.length} files under dist/, ${protoFiles.length} proto file(s): complete`);
