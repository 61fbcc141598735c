/**
 * The two pure functions of the upstream adapter: which caller headers may go upstream, and how
 * upstream base URLs become the proxy's in response bodies.
 */
import { describe, expect, it } from '@jest/globals';
import type { Bundle } from '@medplum/fhirtypes';
import { forwardableHeaders, rewriteBaseUrls } from '../../src/repository/upstream/index.js';

describe('forwardableHeaders', () => {
  it('drops the caller credentials, host and cookies', () => {
    const out = forwardableHeaders({
      authorization: 'Bearer caller-token', Host: 'proxy.example', cookie: 'sid=1', 'Set-Cookie': ['a=1'],
      'proxy-authorization': 'Basic eA==', 'x-request-id': 'req-1',
    });
    expect(out).toEqual({ 'x-request-id': 'req-1' });
  });

  it('drops hop-by-hop headers and those the Connection header names', () => {
    const out = forwardableHeaders({
      connection: 'keep-alive, X-Secret-Hop', 'keep-alive': 'timeout=5', te: 'trailers', trailer: 'x', 'transfer-encoding': 'chunked',
      upgrade: 'websocket', 'x-secret-hop': 'only for the next hop', 'proxy-connection': 'keep-alive', 'accept-language': 'de',
    });
    expect(out).toEqual({ 'accept-language': 'de' });
  });

  it('drops headers the adapter controls itself (negotiation, framing, conditional requests, Prefer)', () => {
    const out = forwardableHeaders({
      accept: 'text/html', 'content-type': 'text/plain', 'content-length': '10', 'if-match': 'W/"1"', 'if-none-match': '*',
      'if-none-exist': 'identifier=x', prefer: 'return=minimal', 'x-forwarded-for': '10.0.0.1', forwarded: 'for=10.0.0.1',
      traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    expect(out).toEqual({ traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' });
  });

  it('lower-cases names, joins repeated values and skips undefined', () => {
    expect(forwardableHeaders({ 'X-Trace': ['a', 'b'], 'X-Empty': undefined, 'X-Num': 3 })).toEqual({ 'x-trace': 'a, b', 'x-num': '3' });
  });
});

describe('rewriteBaseUrls', () => {
  const up = 'http://hapi.internal:8080/fhir';
  const proxy = 'https://glucoguard.example/fhir';

  it('rewrites fullUrl and Bundle.link to the proxy base, and makes references to the upstream base relative', () => {
    const bundle: Bundle = {
      resourceType: 'Bundle', type: 'searchset',
      link: [{ relation: 'next', url: `${up}/Observation?patient=Patient/1&_offset=2` }, { relation: 'self', url: `${up}?_getpages=x` }],
      entry: [{
        fullUrl: `${up}/Observation/o1`,
        resource: { resourceType: 'Observation', id: 'o1', status: 'final', code: { text: 'glucose' }, subject: { reference: `${up}/Patient/1` } },
      }],
    };
    const out = rewriteBaseUrls(bundle, up, proxy);
    expect(out.link).toEqual([
      { relation: 'next', url: `${proxy}/Observation?patient=Patient/1&_offset=2` }, { relation: 'self', url: `${proxy}?_getpages=x` },
    ]);
    expect(out.entry?.[0]?.fullUrl).toBe(`${proxy}/Observation/o1`);
    expect((out.entry?.[0]?.resource as { subject: { reference: string } }).subject.reference).toBe('Patient/1');
  });

  it('rewrites every occurrence of the upstream base inside a string, not only at its start', () => {
    const input = { div: `<div>See ${up}/Patient/1 and ${up}?q=1, not ${up}2/x</div>`, note: `${up}`, reference: `see ${up}/Patient/1` };
    expect(rewriteBaseUrls(input, up, proxy)).toEqual({
      div: `<div>See ${proxy}/Patient/1 and ${proxy}?q=1, not ${up}2/x</div>`, note: proxy, reference: `see ${proxy}/Patient/1`,
    });
  });

  it('makes only literal references relative (Type/id, optionally with _history); other reference strings get the proxy base', () => {
    const refs = [`${up}/Patient/1`, `${up}/Observation/o-1/_history/3`, `${up}/Patient?identifier=x`, `${up}/metadata`];
    expect(refs.map((reference) => rewriteBaseUrls({ reference }, up, proxy).reference))
      .toEqual(['Patient/1', 'Observation/o-1/_history/3', `${proxy}/Patient?identifier=x`, `${proxy}/metadata`]);
  });

  it('rewrites a bare string (a Location header) and the base itself', () => {
    expect(rewriteBaseUrls(`${up}/Patient/1/_history/2`, up, proxy)).toBe(`${proxy}/Patient/1/_history/2`);
    expect(rewriteBaseUrls(up, up, proxy)).toBe(proxy);
  });

  it('leaves relative references, other servers and look-alike prefixes alone', () => {
    const input = { a: 'Patient/1', b: 'http://hapi.internal:8080/fhir2/Patient/1', c: 'http://other/fhir/Patient/1', d: 42, e: null, f: true };
    expect(rewriteBaseUrls(input, up, proxy)).toEqual(input);
  });

  it('ignores trailing slashes on either base and does not modify its input', () => {
    const input = { fullUrl: `${up}/Patient/1` };
    const out = rewriteBaseUrls(input, `${up}/`, `${proxy}/`);
    expect(out).toEqual({ fullUrl: `${proxy}/Patient/1` });
    expect(input.fullUrl).toBe(`${up}/Patient/1`);
  });
});
