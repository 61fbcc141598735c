import { describe, expect, test } from '@jest/globals';
import { EndpointPolicy, parseAllowEntry } from '../../../src/exchange/endpoint.js';

describe('subscription endpoint policy (SSRF)', () => {
  const strict = new EndpointPolicy([]);

  test('refuses loopback, private, link-local, CGNAT, IPv4-mapped and IPv6 local addresses by default', async () => {
    for (const url of ['https://127.0.0.1/hook', 'https://localhost/hook', 'https://10.0.0.1/', 'https://172.20.1.1/', 'https://100.64.0.1/',
      'https://169.254.169.254/', 'https://[::1]/', 'https://[fd00::1]/', 'https://[::ffff:127.0.0.1]/', 'https://0.0.0.0/']) {
      await expect(strict.check(url)).rejects.toMatchObject({ code: 'ERR_INVALID' });
    }
  });

  test('refuses the IPv6 forms that carry or reach an IPv4 address, and the local IPv6 ranges', async () => {
    for (const url of [
      'https://[::7f00:2]/', // IPv4-compatible 127.0.0.2
      'https://[::ffff:a9fe:a9fe]/', 'https://[::ffff:7f00:2]/', // IPv4-mapped 169.254.169.254, 127.0.0.2
      'https://[64:ff9b::a9fe:a9fe]/', 'https://[64:ff9b:1::a9fe:a9fe]/', // NAT64 well-known and local-use
      'https://[2002:a9fe:a9fe::]/', // 6to4 of 169.254.169.254
      'https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/', // Teredo
      'https://[fec0::1]/', 'https://[fc00::1]/', 'https://[fe80::1]/', 'https://[::]/', 'https://[ff02::1]/',
    ]) {
      await expect(strict.check(url)).rejects.toMatchObject({ code: 'ERR_INVALID' });
    }
    // a public IPv6 address, and a public IPv4 one written IPv4-mapped, stay allowed
    await expect(strict.check('https://[2606:4700:4700::1111]/')).resolves.toBeInstanceOf(URL);
    await expect(strict.check('https://[::ffff:8.8.8.8]/')).resolves.toBeInstanceOf(URL);
  });

  test('the decision is on the address connected to: a name resolving to loopback is refused inside the lookup', async () => {
    const lookup = strict.lookup(new URL('https://localhost/hook'));
    const err = await new Promise<unknown>((resolve) => lookup('localhost', {}, (e) => resolve(e)));
    expect(err).toMatchObject({ code: 'EADDRNOTALLOWED' });
  });

  test('accepts a public https address; refuses plain http unless configured', async () => {
    await expect(strict.check('https://8.8.8.8/hook')).resolves.toBeInstanceOf(URL);
    await expect(strict.check('http://8.8.8.8/hook')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    await expect(new EndpointPolicy([], true).check('http://8.8.8.8/hook')).resolves.toBeInstanceOf(URL);
  });

  test('the allow list matches address and port: an entry without a port admits the default port only', async () => {
    const allow = new EndpointPolicy(['127.0.0.1:9999', '10.9.0.0/16', '[::1]:8080', 'receiver.test:7000']);
    await expect(allow.check('http://127.0.0.1:9999/hook')).resolves.toBeInstanceOf(URL);
    // the same address on another port (the chain RPC, the proxy itself) is not a notification target
    await expect(allow.check('http://127.0.0.1:8545/')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    await expect(allow.check('https://127.0.0.1/')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    await expect(allow.check('https://10.9.3.4/hook')).resolves.toBeInstanceOf(URL);
    await expect(allow.check('https://10.9.3.4:8443/hook')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    await expect(allow.check('https://10.8.3.4/hook')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    await expect(allow.check('http://[::1]:8080/')).resolves.toBeInstanceOf(URL);
    await expect(allow.check('http://[::1]:8081/')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    expect(allow.addressAllowed('evil.example', '127.0.0.2', 9999)).toBe(false);
    expect(allow.addressAllowed('receiver.test', '127.0.0.5', 7000)).toBe(true);
    expect(allow.addressAllowed('receiver.test', '127.0.0.5', 7001)).toBe(false);
  });

  test('a malformed allow-list entry is refused with a message naming it', () => {
    for (const bad of ['127.0.0.1:99999', '10.0.0.0/40', 'a b', '10.0.0.0/8/1', '[::1']) {
      expect(() => parseAllowEntry(bad)).toThrow(bad);
    }
  });
});
