/**
 * Subscription endpoints and SSRF: a rest-hook endpoint must be https (http only when configured
 * or allow-listed), carry no credentials, and resolve only to public addresses — loopback,
 * private, link-local, CGNAT, multicast and reserved ranges are refused unless the host or address
 * is on GLUCOGUARD_SUBSCRIPTION_ALLOW. The check runs when the Subscription is written and again
 * inside every connection's DNS lookup (so a name rebound to 127.0.0.1 later is still refused).
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import { badRequest } from '../errors.js';

const BLOCKED = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24], ['203.0.113.0', 24],
  ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) BLOCKED.addSubnet(net, prefix, 'ipv4');
for (const [net, prefix] of [['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['2001:db8::', 32], ['64:ff9b::', 96]] as const) {
  BLOCKED.addSubnet(net, prefix, 'ipv6');
}

export class EndpointPolicy {
  private readonly allowedHosts = new Set<string>();
  private readonly allowedNets = new BlockList();

  /** `allow`: host names, IP addresses or CIDRs permitted even when not public. */
  constructor(allow: string[], private readonly allowHttp = false) {
    for (const entry of allow) {
      const [addr, bits] = entry.split('/');
      const family = isIP(addr!);
      if (family && bits !== undefined) this.allowedNets.addSubnet(addr!, Number(bits), family === 6 ? 'ipv6' : 'ipv4');
      else if (family) this.allowedNets.addAddress(addr!, family === 6 ? 'ipv6' : 'ipv4');
      else this.allowedHosts.add(entry.toLowerCase());
    }
  }

  /** May this resolved address be connected to for `host`? */
  addressAllowed(host: string, address: string): boolean {
    const family = isIP(address);
    if (!family) return false;
    const type = family === 6 ? 'ipv6' : 'ipv4';
    if (this.allowedHosts.has(host.toLowerCase()) || this.allowedNets.check(address, type)) return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
    if (mapped) return !BLOCKED.check(mapped, 'ipv4');
    return !BLOCKED.check(address, type);
  }

  /** Checks an endpoint URL (syntax, scheme, credentials, resolved addresses); throws 400 with a plain reason. */
  async check(raw: string): Promise<URL> {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw badRequest('channel.endpoint must be an absolute URL', 'Subscription.channel.endpoint');
    }
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (url.username || url.password) throw badRequest('channel.endpoint must not carry credentials', 'Subscription.channel.endpoint');
    const listed = this.allowedHosts.has(host.toLowerCase()) || (isIP(host) > 0 && this.allowedNets.check(host, isIP(host) === 6 ? 'ipv6' : 'ipv4'));
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && (this.allowHttp || listed))) {
      throw badRequest('channel.endpoint must be an https URL', 'Subscription.channel.endpoint');
    }
    const addresses = isIP(host) ? [host] : await resolveAll(host).catch(() => {
      throw badRequest('channel.endpoint host does not resolve', 'Subscription.channel.endpoint');
    });
    if (addresses.length === 0 || addresses.some((a) => !this.addressAllowed(host, a))) {
      throw badRequest('channel.endpoint must not point to a loopback, private or reserved address', 'Subscription.channel.endpoint');
    }
    return url;
  }

  /** A `lookup` for http.request that refuses addresses the policy does not allow (DNS rebinding). */
  lookup(): (hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => void {
    return (hostname, options, callback) => {
      dnsLookup(hostname, { all: true }, (err, found: LookupAddress[]) => {
        if (err) return callback(err);
        const ok = found.filter((a) => this.addressAllowed(hostname, a.address));
        if (ok.length === 0 || ok.length !== found.length) return callback(Object.assign(new Error('endpoint address not allowed'), { code: 'EADDRNOTALLOWED' }));
        if (options.all) return callback(null, ok);
        return callback(null, ok[0]!.address, ok[0]!.family);
      });
    };
  }
}

function resolveAll(host: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    dnsLookup(host, { all: true }, (err, found) => (err ? reject(err) : resolve(found.map((a) => a.address))));
  });
}
