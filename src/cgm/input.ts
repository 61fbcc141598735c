/**
 * Turns any input (file path, Node Readable, async iterable of bytes/strings, Buffer, string) into
 * text chunks (UTF-8, UTF-16 by its byte-order mark, or Windows-1252 when the bytes are not UTF-8),
 * and lets a caller peek at the start of the text (format detection) without losing it. Nothing
 * here holds more than one chunk plus the peeked head.
 */
import { isAscii, isUtf8 } from 'node:buffer';
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { TextDecoder } from 'node:util';

/** Anything a parser can read from. A plain string is a file path; use `{ text }` for literal content. */
export type CgmInput =
  | string
  | { text: string }
  | Uint8Array
  | Readable
  | AsyncIterable<Uint8Array | string>;

const READ_CHUNK = 256 * 1024;

/** How an input's bytes were decoded, filled in while they are read (the choice may come late in the file). */
export interface Decoding {
  encoding: 'utf-8' | 'windows-1252' | 'utf-16le' | 'utf-16be';
  /** Invalid UTF-8 after valid non-ASCII UTF-8: replaced by U+FFFD rather than re-read as Windows-1252. */
  replaced?: boolean;
}

/**
 * Text chunks of an input; a leading byte-order mark is dropped. Bytes are UTF-8 unless they start
 * with a UTF-16 byte-order mark, or are not valid UTF-8: a CSV saved by Excel on Windows in a Western
 * European locale is Windows-1252 (`Gerät` as the single byte E4), so the first invalid sequence
 * switches the decoding to Windows-1252 for the rest of the input — everything before it was ASCII,
 * which reads the same in both. After valid non-ASCII UTF-8 the file is UTF-8 with some bad bytes:
 * those are replaced instead. `decoding` says which it was.
 */
export async function* textChunks(input: CgmInput, decoding: Decoding = { encoding: 'utf-8' }): AsyncGenerator<string> {
  const source = toByteSource(input);
  const decoder = new AutoDecoder(decoding);
  let first = true;
  for await (const chunk of source) {
    let text = typeof chunk === 'string' ? chunk : decoder.decode(chunk);
    if (first && text.length > 0) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      first = false;
    }
    if (text) yield text;
  }
  const tail = decoder.end();
  if (tail) yield first && tail.charCodeAt(0) === 0xfeff ? tail.slice(1) : tail;
}

/** Streaming UTF-8 → (UTF-16 by BOM | Windows-1252 on invalid UTF-8) decoder; see `textChunks`. */
class AutoDecoder {
  /** Bytes not decoded yet: the start of the input until a BOM can be told, or a split UTF-8 sequence. */
  private pending: Uint8Array = new Uint8Array(0);
  private started = false;
  private nonAscii = false;
  private fallback?: TextDecoder;

  constructor(private readonly decoding: Decoding) {}

  decode(chunk: Uint8Array): string {
    let bytes = this.pending.length ? concat(this.pending, chunk) : chunk;
    this.pending = new Uint8Array(0);
    if (!this.started) {
      if (bytes.length < 3) {
        this.pending = bytes.slice();
        return '';
      }
      this.start(bytes);
    }
    if (this.fallback) return this.fallback.decode(bytes, { stream: true });
    const cut = bytes.length - incompleteTail(bytes);
    this.pending = bytes.slice(cut);
    bytes = bytes.subarray(0, cut);
    if (isUtf8(bytes)) {
      if (!this.nonAscii && !isAscii(bytes)) this.nonAscii = true;
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8');
    }
    this.switchOnInvalid();
    return this.fallback!.decode(bytes, { stream: true }); // a held-back tail is decoded with the next chunk
  }

  end(): string {
    if (!this.started) {
      if (this.pending.length === 0) return '';
      this.start(this.pending);
    }
    const rest = this.pending;
    this.pending = new Uint8Array(0);
    if (!this.fallback) {
      if (rest.length === 0) return '';
      this.switchOnInvalid(); // a UTF-8 sequence cut off by the end of the input
    }
    return this.fallback!.decode(rest);
  }

  private start(bytes: Uint8Array): void {
    this.started = true;
    if (bytes[0] === 0xff && bytes[1] === 0xfe) this.decoding.encoding = 'utf-16le';
    else if (bytes[0] === 0xfe && bytes[1] === 0xff) this.decoding.encoding = 'utf-16be';
    else return;
    this.fallback = new TextDecoder(this.decoding.encoding); // drops the BOM itself
  }

  private switchOnInvalid(): void {
    if (this.nonAscii) {
      this.decoding.replaced = true;
      this.fallback = new TextDecoder('utf-8');
    } else {
      this.decoding.encoding = 'windows-1252';
      this.fallback = new TextDecoder('windows-1252');
    }
  }
}

/** Bytes at the end that start a UTF-8 sequence the chunk does not finish (0–3). */
function incompleteTail(bytes: Uint8Array): number {
  for (let back = 1; back <= Math.min(3, bytes.length); back++) {
    const b = bytes[bytes.length - back]!;
    if (b < 0x80) return 0;
    if (b >= 0xc0) {
      const length = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
      return length > back ? back : 0;
    }
  }
  return 0;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function toByteSource(input: CgmInput): AsyncIterable<Uint8Array | string> {
  if (typeof input === 'string') return createReadStream(input, { highWaterMark: READ_CHUNK });
  if (input instanceof Uint8Array) return (async function* () { yield input; })();
  if (typeof (input as { text?: unknown }).text === 'string' && !(Symbol.asyncIterator in (input as object))) {
    const text = (input as { text: string }).text;
    return (async function* () { yield text; })();
  }
  return input as AsyncIterable<Uint8Array | string>;
}

/** A text stream whose first `size` characters can be read before iteration starts. */
export interface PeekedText {
  head: string;
  chunks: AsyncIterable<string>;
}

/** Reads until at least `size` characters (or the end) are buffered; the returned chunks replay them. */
export async function peekText(chunks: AsyncIterable<string>, size = 8192): Promise<PeekedText> {
  const iterator = chunks[Symbol.asyncIterator]();
  const buffered: string[] = [];
  let length = 0;
  let done = false;
  while (length < size) {
    const next = await iterator.next();
    if (next.done) {
      done = true;
      break;
    }
    buffered.push(next.value);
    length += next.value.length;
  }
  const head = buffered.join('');
  async function* replay(): AsyncGenerator<string> {
    if (head) yield head;
    if (done) return;
    for (;;) {
      const next = await iterator.next();
      if (next.done) return;
      yield next.value;
    }
  }
  return { head, chunks: replay() };
}
