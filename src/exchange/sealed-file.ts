/**
 * Bulk export files at rest: their NDJSON is sealed in frames (AES-256-GCM), so the data directory
 * holds no health data in clear outside the encrypted store, and a file is decrypted only as it is
 * served. A frame is the 4-byte big-endian length of a sealed block (nonce ‖ ciphertext ‖ tag, the
 * layout repository/embedded/keys.ts `open` reads), then the block. Each block's additional data names
 * the file and the frame's place in it, and the last frame is an empty one marked as the end: a
 * file cut short, reordered or moved to another job's name does not open.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { open } from '../repository/embedded/keys.js';

const LENGTH = 4;
const NONCE = 12;
/** Frames larger than this are not ones we wrote (a page of an export is ~1 MB). */
const MAX_FRAME = 64 * 1024 * 1024;

function aad(label: string, index: number, last: boolean): string {
  return `glucoguard-export-file\0${label}\0${index}${last ? '\0end' : ''}`;
}

/**
 * One frame of the file `label` (job/file), at position `index` (`last` for the empty closing
 * frame), as the pieces to write in order: the text is encrypted straight from the string and
 * nothing is copied into one buffer (an export is ~700 MB per million readings).
 */
export function sealFrame(key: Buffer, label: string, index: number, text: string, last = false): Buffer[] {
  const nonce = randomBytes(NONCE);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.from(aad(label, index, last)));
  const body = cipher.update(text, 'utf8');
  const final = cipher.final();
  const tag = cipher.getAuthTag();
  const length = Buffer.alloc(LENGTH);
  length.writeUInt32BE(NONCE + body.length + final.length + tag.length);
  return [length, nonce, body, final, tag];
}

/** Turns a sealed file's bytes back into its NDJSON; fails (stream error) on any frame that does not open or a missing end. */
export class FrameOpener extends Transform {
  private pending: Buffer = Buffer.alloc(0);
  private index = 0;
  private ended = false;

  constructor(private readonly key: Buffer, private readonly label: string) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    try {
      for (;;) {
        if (this.pending.length < LENGTH) break;
        const size = this.pending.readUInt32BE(0);
        if (size > MAX_FRAME) throw new Error('not a sealed export file');
        if (this.pending.length < LENGTH + size) break;
        const block = this.pending.subarray(LENGTH, LENGTH + size);
        this.pending = this.pending.subarray(LENGTH + size);
        if (this.ended) throw new Error('data after the end of a sealed export file');
        const text = open(this.key, block, aad(this.label, this.index, false));
        if (text) {
          this.index++;
          if (text.length) this.push(text);
        } else if (open(this.key, block, aad(this.label, this.index, true))?.length === 0) {
          this.ended = true;
        } else {
          throw new Error('a frame of a sealed export file does not open (altered, or not this file)');
        }
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }

  override _flush(done: TransformCallback): void {
    done(this.ended && this.pending.length === 0 ? null : new Error('a sealed export file ends before its end frame (cut short)'));
  }
}
