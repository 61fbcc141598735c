import { describe, expect, test } from '@jest/globals';
import { EndpointPolicy } from '../../../src/exchange/endpoint.js';

describe('subscription endpoint policy (SSRF)', () => {
  const strict = new EndpointPolicy([]);

  test('refuses loopback, private, link-local, CGNAT, IPv4-mapped and IPv6 local addresses by default', async () => {
    for (const url of ['https://127.0.0.1/hook', 'https://localhost/hook', 'https://10.0.0.1/', 'https://172.20.1.1/', 'https://100.64.0.1/',
      'https://169.254.169.254/', 'https://[::1]/', 'https://[fd00::1]/', 'https://[::ffff:127.0.0.1]/', 'https://0.0.0.0/']) {
      await expect(strict.check(url)).rejects.toMatchObject({ code: 'ERR_INVALID' });
    }
  });

  test('accepts a public https address; refuses plain http unless configured', async () => {
    await expect(strict.check('https://8.8.8.8/hook')).resolves.toBeInstanceOf(URL);
    await expect(strict.check('http://8.8.8.8/hook')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    await expect(new EndpointPolicy([], true).check('http://8.8.8.8/hook')).resolves.toBeInstanceOf(URL);
  });

  test('the allow list admits named addresses and CIDRs, and plain http to them', async () => {
    const allow = new EndpointPolicy(['127.0.0.1', '10.9.0.0/16']);
    await expect(allow.check('http://127.0.0.1:9999/hook')).resolves.toBeInstanceOf(URL);
    await expect(allow.check('https://10.9.3.4/hook')).resolves.toBeInstanceOf(URL);
    await expect(allow.check('https://10.8.3.4/hook')).rejects.toMatchObject({ code: 'ERR_INVALID' });
    expect(allow.addressAllowed('evil.example', '127.0.0.2')).toBe(false);
  });
});
