import { describe, expect, test } from '@jest/globals';
import { jsonArrayElements } from '../../../src/cgm/json-stream.js';
import { periodFromParams, readCgm } from '../../../src/cgm/index.js';

async function* chunked(text: string, size: number): AsyncGenerator<string> {
  for (let i = 0; i < text.length; i += size) yield text.slice(i, i + size);
}

async function collect(text: string, size: number, key?: string) {
  const out = [];
  for await (const e of jsonArrayElements(chunked(text, size), key)) out.push(e);
  return out;
}

describe('streaming JSON array elements', () => {
  const dexcomLike = '{\n "recordType": "egv",\n "note": "a \\"records\\": [ trap ] {",\n "nested": {"records": [9]},\n "records": [\n  {"v": 1, "s": "}],{"},\n  {"v": 2}\n ],\n "after": [3]\n}\n';

  test.each([1, 2, 3, 7, 64, 4096])('finds root[key] elements with line numbers, whatever the chunk size (%i)', async (size) => {
    const els = await collect(dexcomLike, size, 'records');
    expect(els).toEqual([
      { value: { v: 1, s: '}],{' }, record: 1, line: 6 },
      { value: { v: 2 }, record: 2, line: 7 },
    ]);
  });

  test('a root array yields its elements; a root object without the key is one element', async () => {
    expect((await collect('[1, "x", {"a": [1,2]}, null]', 3)).map((e) => e.value)).toEqual([1, 'x', { a: [1, 2] }, null]);
    expect((await collect('{"a": 1}', 2, 'records')).map((e) => e.value)).toEqual([{ a: 1 }]);
    expect(await collect('[]', 1)).toEqual([]);
  });

  test.each([
    ['[{"a": 1},, {"b": 2}]', /empty array element/],
    ['[{"a": 1}] [2]', /unexpected content after the end/],
    ['[{"a": 1}', /unexpected end of input/],
    ['', /empty input/],
    ['hello', /expected a JSON array or object/],
    ['[{"a": 1}]]', /unexpected content|unbalanced/],
  ])('malformed %j is an input error', async (text, message) => {
    await expect(collect(text, 2)).rejects.toThrow(message);
  });
});

describe('Open mHealth single data point', () => {
  test('a root object that is one data point is read as one record', async () => {
    const point = { header: { schema_id: { namespace: 'omh', name: 'blood-glucose', version: '4.0' } }, body: { blood_glucose: { unit: 'mg/dL', value: 99 }, effective_time_frame: { date_time: '2023-06-01T08:05:00Z' } } };
    const { records } = await readCgm({ text: JSON.stringify(point) }, { now: () => Date.parse('2025-01-01T00:00:00Z') });
    expect(records).toMatchObject([{ value: 99, time: '2023-06-01T08:05:00Z', method: 'cgm' }]);
  });
});

describe('issue lists', () => {
  test('skipped and rejected issues are capped separately, counts stay complete', async () => {
    const rows = [];
    for (let i = 0; i < 5; i++) rows.push({ type: 'food', time: '2024-01-01T00:00:00Z', deviceId: 'd' });
    rows.push({ type: 'cbg', units: 'mg/dL', value: -1, time: '2024-01-01T00:00:00Z', timezoneOffset: 0, deviceId: 'd', uploadId: 'u' });
    const { summary } = await readCgm({ text: JSON.stringify(rows) }, { format: 'tidepool', maxIssues: 2 });
    expect(summary.skipped).toBe(5);
    expect(summary.issues.map((i) => i.kind)).toEqual(['skipped', 'skipped', 'rejected']);
    expect(summary.issuesTruncated).toBe(true);
  });
});

describe('reporting period from query parameters', () => {
  test('date-only end includes the whole day; offsets are honoured', () => {
    expect(periodFromParams({ start: '2024-05-01', end: '2024-05-14' })).toEqual({
      start: Date.parse('2024-05-01T00:00:00Z'), end: Date.parse('2024-05-15T00:00:00Z'), startDate: '2024-05-01', endDate: '2024-05-14',
    });
    expect(periodFromParams({ start: '2024-05-01' }, 120)).toEqual({ start: Date.parse('2024-04-30T22:00:00Z'), startDate: '2024-05-01' });
    expect(periodFromParams({ end: '2024-05-14T12:00:00+02:00' })).toEqual({ end: Date.parse('2024-05-14T10:00:00Z') });
  });

  test('bad values are refused naming the parameter', () => {
    expect(() => periodFromParams({ start: 'yesterday' })).toThrow(/start must be a date/);
    expect(() => periodFromParams({ start: '2024-05-14', end: '2024-05-01' })).toThrow(/end must be after start/);
  });
});
