/**
 * Turns any input (file path, Node Readable, async iterable of bytes/strings, Buffer, string) into
 * UTF-8 text chunks, and lets a caller peek at the start of the text (format detection) without
 * losing it. Nothing here holds more than one chunk plus the peeked head.
 */
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';

/** Anything a parser can read from. A plain string is a file path; use `{ text }` for literal content. */
export type CgmInput =
  | string
  | { text: string }
  | Uint8Array
  | Readable
  | AsyncIterable<Uint8Array | string>;

const READ_CHUNK = 256 * 1024;

/** UTF-8 text chunks of an input; a leading byte-order mark is dropped. */
export async function* textChunks(input: CgmInput): AsyncGenerator<string> {
  const source = toByteSource(input);
  const decoder = new TextDecoder('utf-8');
  let first = true;
  for await (const chunk of source) {
    let text = typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    if (first && text.length > 0) {
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      first = false;
    }
    if (text) yield text;
  }
  const tail = decoder.decode();
  if (tail) yield tail;
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
