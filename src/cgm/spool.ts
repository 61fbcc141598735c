/**
 * A large upload parked on disk so the ingest service can read it twice (check, then store) with
 * bounded memory. Health data never sits on disk in clear: the bytes are encrypted with AES-256-CTR
 * under a random key that lives only in this process, and the file is removed when released.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';

/** An input that can be read from the start again, with its size in bytes. */
export interface ReopenableInput {
  size: number;
  reopen(): AsyncIterable<Uint8Array>;
}

export interface Spool extends ReopenableInput {
  /** The encrypted file (for inspection in tests). */
  readonly file: string;
  release(): Promise<void>;
}

/** Writes `source` to an encrypted temporary file; `reopen` decrypts it from the start. */
export async function spool(source: AsyncIterable<Uint8Array> | Readable, dir = tmpdir()): Promise<Spool> {
  const folder = await mkdtemp(path.join(dir, 'gg-ingest-'));
  const file = path.join(folder, 'upload.bin');
  const key = randomBytes(32);
  const iv = randomBytes(16);
  let size = 0;
  try {
    await pipeline(source, async function* (chunks: AsyncIterable<Uint8Array>) {
      for await (const chunk of chunks) {
        size += chunk.length;
        yield chunk;
      }
    }, createCipheriv('aes-256-ctr', key, iv), createWriteStream(file, { mode: 0o600 }));
  } catch (err) {
    await rm(folder, { recursive: true, force: true });
    throw err;
  }
  return {
    size,
    file,
    reopen: () => createReadStream(file, { highWaterMark: 256 * 1024 }).pipe(createDecipheriv('aes-256-ctr', key, iv)),
    release: () => rm(folder, { recursive: true, force: true }),
  };
}

export function isReopenable(input: unknown): input is ReopenableInput {
  return typeof input === 'object' && input !== null && typeof (input as ReopenableInput).reopen === 'function';
}
