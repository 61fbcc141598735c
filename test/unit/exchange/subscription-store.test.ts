/**
 * The Subscription store shared by the processes of one data directory: a write of a Subscription
 * (any process) raises its revision and the definitions counter the delivering process polls; the
 * deliverer's state writes apply only to the revision it loaded, so what another process redefined
 * or deleted is neither overwritten nor brought back; a store made before revisions opens with every
 * row at its first.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { afterEach, expect, test } from '@jest/globals';
import Database from 'better-sqlite3';
import { SubscriptionStore } from '../../../src/exchange/subscription-store.js';
import { tempDir } from '../../support/app.js';

const dirs: string[] = [];
const dir = () => {
  const d = tempDir('gg-sub-store-');
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const event = (number: number) => ({ number, timestamp: '2026-01-01T00:00:00Z', type: 'Observation', id: `o${number}`, version: '1', interaction: 'create' as const });

test('a write through one process raises the revision and the definitions counter another process sees', () => {
  const d = dir();
  const holder = new SubscriptionStore(d);
  const passive = new SubscriptionStore(d);
  try {
    expect(holder.definitions()).toBe(0);
    expect(passive.define('s1', () => '{"v":1}')).toBe(1);
    expect(holder.definitions()).toBe(1);
    expect(holder.row('s1')).toEqual({ id: 's1', json: '{"v":1}', rev: 1 });
    // an update gets the stored row inside its transaction, to carry counters on
    expect(passive.define('s1', (current) => `{"v":2,"was":${current!.json}}`)).toBe(2);
    expect(holder.row('s1')).toEqual({ id: 's1', json: '{"v":2,"was":{"v":1}}', rev: 2 });
    passive.remove('s1');
    expect(holder.definitions()).toBe(3);
    expect(holder.rows()).toEqual([]);
  } finally {
    holder.close();
    passive.close();
  }
});

test('delivery state written over a revision that was redefined or deleted meanwhile is refused, events included', () => {
  const d = dir();
  const holder = new SubscriptionStore(d);
  const passive = new SubscriptionStore(d);
  try {
    const rev = passive.define('s1', () => '{"events":0}');
    expect(holder.recordEvents('s1', rev, '{"events":1}', [event(1)])).toBe(true);
    passive.define('s1', () => '{"events":1,"endpoint":"new"}');
    expect(holder.save('s1', rev, '{"events":1,"endpoint":"old"}')).toBe(false);
    expect(holder.recordEvents('s1', rev, '{"events":2}', [event(2)])).toBe(false);
    expect(holder.row('s1')!.json).toBe('{"events":1,"endpoint":"new"}');
    expect(holder.events('s1', 1, 10, 10).map((e) => e.number)).toEqual([1]);
    // deleted through the other process: the holder's late write does not bring it back
    passive.remove('s1');
    expect(holder.save('s1', rev + 1, '{"events":1}')).toBe(false);
    expect(holder.row('s1')).toBeUndefined();
  } finally {
    holder.close();
    passive.close();
  }
});

test('a store made before revisions opens with every row at its first revision', () => {
  const d = dir();
  const db = new Database(path.join(d, 'subscriptions.sqlite'));
  db.exec('CREATE TABLE subscription_state (id TEXT PRIMARY KEY, json TEXT NOT NULL)');
  db.prepare('INSERT INTO subscription_state (id, json) VALUES (?, ?)').run('old', '{"events":7}');
  db.close();
  const store = new SubscriptionStore(d);
  try {
    expect(store.rows()).toEqual([{ id: 'old', json: '{"events":7}', rev: 1 }]);
    expect(store.save('old', 1, '{"events":8}')).toBe(true);
    expect(store.define('old', () => '{"events":8}')).toBe(2);
  } finally {
    store.close();
  }
});
