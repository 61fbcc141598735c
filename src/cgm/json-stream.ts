/**
 * Streams the elements of a JSON array — the root array, or the array under one key of a root
 * object (Dexcom's `records`) — as separately parsed values, holding only the current element in
 * memory. Each element carries its 1-based ordinal and the line it starts on, so errors can name it.
 *
 * Hand-written rather than a token-level streaming parser because the structure scan is tiny (strings,
 * escapes, nesting), each element is then parsed by the native JSON.parse (fast, and strict on
 * hostile input), and we need line numbers, which token streamers do not report.
 */
import { GlucoGuardError, issue } from '../errors.js';

export interface JsonElement {
  value: unknown;
  record: number;
  line: number;
}

/** A malformed input; the message names the line (and record) where it broke. */
export class CgmInputError extends GlucoGuardError {
  constructor(message: string, readonly line?: number, readonly record?: number) {
    super('ERR_INVALID', message, [issue('ERR_INVALID', message)]);
    this.name = 'CgmInputError';
  }
}

/**
 * Largest single element (or root object read whole), in characters. A CGM record is under a few
 * kilobytes (a Tidepool pump-settings object some tens); without a bound one element of a 512 MB
 * upload (a single huge string) is held several times over while it is joined and parsed.
 */
export const MAX_ELEMENT_CHARS = 4 * 1024 * 1024;

const OPEN_OBJ = 0x7b, CLOSE_OBJ = 0x7d, OPEN_ARR = 0x5b, CLOSE_ARR = 0x5d;
const QUOTE = 0x22, BACKSLASH = 0x5c, COMMA = 0x2c, COLON = 0x3a, NEWLINE = 0x0a;

/**
 * Yields the elements of the root array, or of `root[arrayKey]` when the root is an object (the
 * first of the keys given that holds an array: Dexcom API v3 `records`, v2 `egvs`). A root object
 * without such a key is yielded whole as a single element (record 1). An element longer than
 * MAX_ELEMENT_CHARS is refused (CgmInputError) rather than held.
 */
export async function* jsonArrayElements(chunks: AsyncIterable<string>, arrayKey?: string | readonly string[]): AsyncGenerator<JsonElement> {
  const arrayKeys: readonly string[] = arrayKey === undefined ? [] : typeof arrayKey === 'string' ? [arrayKey] : arrayKey;
  let depth = 0;
  let inString = false;
  let escape = false;
  let line = 1;
  /** Depth of the elements we yield (1 under a root array, 2 under root[arrayKey]); 0 until known. */
  let elementDepth = 0;
  let rootIsObject = false;
  let targetDone = false;
  /** Key string being read at depth 1 of a root object, and the last completed one. */
  let keyStart = -1;
  let keyParts: string[] = [];
  let lastKey: string | undefined;
  let afterColon = false;
  let rootParts: string[] | undefined;
  let rootStart = 0;
  let rootLine = 1;
  let sawRoot = false;
  let rootClosed = false;
  // current element
  let parts: string[] = [];
  /** Characters held in `parts` (the element being read) and in `rootParts`. */
  let held = 0;
  let rootHeld = 0;
  let start = -1;
  let elementLine = 0;
  let record = 0;

  const tooLarge = (): CgmInputError => new CgmInputError(
    `record ${record + 1} (line ${elementLine || rootLine}): a record larger than ${MAX_ELEMENT_CHARS / (1024 * 1024)} MiB is not a CGM record`, elementLine || rootLine, record + 1);

  const finishElement = (text: string): JsonElement => {
    if (text.length > MAX_ELEMENT_CHARS) throw tooLarge();
    record += 1;
    const trimmed = text.trim();
    try {
      return { value: JSON.parse(trimmed), record, line: elementLine };
    } catch {
      throw new CgmInputError(`record ${record} (line ${elementLine}): malformed JSON`, elementLine, record);
    }
  };

  for await (const chunk of chunks) {
    if (rootParts) rootStart = 0;
    if (start >= 0) start = 0;
    if (keyStart >= 0) keyStart = 0;
    const n = chunk.length;
    for (let i = 0; i < n; i++) {
      const c = chunk.charCodeAt(i);
      if (c === NEWLINE) line++;
      if (inString) {
        if (escape) escape = false;
        else if (c === BACKSLASH) escape = true;
        else if (c === QUOTE) {
          inString = false;
          if (keyStart >= 0) {
            keyParts.push(chunk.slice(keyStart, i));
            lastKey = keyParts.join('');
            keyParts = [];
            keyStart = -1;
          }
        }
        continue;
      }
      if (c === 0x20 || c === 0x09 || c === 0x0d || c === NEWLINE) continue;
      if (rootClosed) throw new CgmInputError(`line ${line}: unexpected content after the end of the JSON document`, line);
      // Start of an element?
      if (elementDepth > 0 && depth === elementDepth && start < 0 && c !== COMMA && c !== CLOSE_ARR) {
        start = i;
        elementLine = line;
      }
      if (c === QUOTE) {
        inString = true;
        if (rootIsObject && depth === 1 && !afterColon && elementDepth === 0) keyStart = i + 1;
        continue;
      }
      if (c === OPEN_OBJ || c === OPEN_ARR) {
        if (depth === 0) {
          if (sawRoot) throw new CgmInputError(`line ${line}: more than one JSON document`, line);
          sawRoot = true;
          if (c === OPEN_ARR) elementDepth = 1;
          else {
            rootIsObject = true;
            rootParts = [];
            rootStart = i;
            rootLine = line;
          }
        } else if (rootIsObject && depth === 1 && c === OPEN_ARR && afterColon && lastKey !== undefined && arrayKeys.includes(lastKey) && !targetDone) {
          elementDepth = 2;
          rootParts = undefined; // the root is not yielded whole after all
          rootHeld = 0;
        }
        depth++;
        afterColon = false;
        continue;
      }
      if (c === CLOSE_OBJ || c === CLOSE_ARR) {
        if (depth === 0) throw new CgmInputError(`line ${line}: unbalanced '${String.fromCharCode(c)}'`, line);
        if (elementDepth > 0 && depth === elementDepth && c === CLOSE_ARR) {
          // end of the target array: flush the last element
          if (start >= 0) {
            parts.push(chunk.slice(start, i));
            yield finishElement(parts.join(''));
            parts = [];
            held = 0;
            start = -1;
          }
          if (elementDepth === 2) targetDone = true;
          elementDepth = 0;
        }
        depth--;
        afterColon = false;
        if (depth === 0) {
          rootClosed = true;
          if (rootParts) {
            rootParts.push(chunk.slice(rootStart, i + 1));
            elementLine = rootLine;
            yield finishElement(rootParts.join(''));
            rootParts = undefined;
          }
        }
        continue;
      }
      if (depth === 0) throw new CgmInputError(`line ${line}: expected a JSON array or object`, line);
      if (c === COLON) {
        if (depth === 1 && rootIsObject) afterColon = true;
        continue;
      }
      if (c === COMMA) {
        if (depth === 1 && rootIsObject) afterColon = false;
        if (elementDepth > 0 && depth === elementDepth) {
          if (start < 0) throw new CgmInputError(`line ${line}: empty array element`, line);
          parts.push(chunk.slice(start, i));
          yield finishElement(parts.join(''));
          parts = [];
          held = 0;
          start = -1;
        }
        continue;
      }
    }
    if (start >= 0) {
      parts.push(chunk.slice(start));
      held += n - start;
      if (held > MAX_ELEMENT_CHARS) throw tooLarge();
    }
    if (rootParts) {
      rootParts.push(chunk.slice(rootStart));
      rootHeld += n - rootStart;
      if (rootHeld > MAX_ELEMENT_CHARS) throw tooLarge();
    }
    if (keyStart >= 0) keyParts.push(chunk.slice(keyStart));
  }
  if (!sawRoot) throw new CgmInputError('empty input: no JSON document', line);
  if (depth !== 0 || inString) {
    throw new CgmInputError(`line ${line}: unexpected end of input (truncated JSON${record ? ` after record ${record}` : ''})`, line, record || undefined);
  }
}
