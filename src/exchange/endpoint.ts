/**
 * Subscription endpoints and SSRF: a rest-hook endpoint must be https (http only when configured
 * or allow-listed), carry no credentials, and resolve only to public addresses — loopback,
 * private, link-local, CGNAT, multicast and reserved ranges are refused, and so are the IPv6 forms
 * that carry or reach an IPv4 address (IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96` and
 * `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`; IPv4-mapped `::ffff:a.b.c.d` is judged by
 * its IPv4 address) and the local IPv6 ranges (unique-local, link-local, site-local) — unless the
 * address *and port* are on GLUCOGUARD_SUBSCRIPTION_ALLOW. The check runs when the Subscription is
 * written and again inside every connection's DNS lookup, on the address actually connected to (so
 * a name rebound to 127.0.0.1 later is still refused).
 *
 * Allow-list entries: `host`, `address` or `CIDR`, each optionally with `:port` (IPv6 in brackets:
 * `[::1]:8080`, `[fd00::/8]:8443`). Without a port an entry admits the scheme's default port only
 * (443, or 80 for http): allowing 127.0.0.1 must not make the chain node's RPC port or the proxy
 * itself a notification target.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import { badRequest } from '../errors.js';

const BLOCKED = new BlockList();
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24],
  ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) BLOCKED.addSubnet(net, prefix, 'ipv4');
// IPv4-mapped (::ffff:0:0/96) is not listed: node's BlockList checks it against the IPv4 rules above.
for (const [net, prefix] of [
  ['::', 96], // unspecified, loopback and IPv4-compatible (::7f00:2 is 127.0.0.2)
  ['::ffff:0:0:0', 96], // IPv4-translated (SIIT)
  ['64:ff9b::', 96], ['64:ff9b:1::', 48], // NAT64, well-known and local-use (RFC 6052, RFC 8215)
  ['100::', 64], // discard-only
  ['2001::', 32], // Teredo (an IPv4 server and client inside)
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4 (an IPv4 address inside)
  ['fc00::', 7], ['fe80::', 10], ['fec0::', 10], // unique-local, link-local, site-local
  ['ff00::', 8], // multicast
] as const) BLOCKED.addSubnet(net, prefix, 'ipv6');

const family = (address: string): 'ipv4' | 'ipv6' => (isIP(address) === 6 ? 'ipv6' : 'ipv4');

interface AllowEntry {
  /** A host name (lower case), or undefined for an address/CIDR entry. */
  host?: string;
  nets?: BlockList;
  /** undefined: the scheme's default port only. */
  port?: number;
}

/** Parses one GLUCOGUARD_SUBSCRIPTION_ALLOW entry; throws a plain Error naming the entry. */
export function parseAllowEntry(entry: string): AllowEntry {
  const bad = () => new Error(`GLUCOGUARD_SUBSCRIPTION_ALLOW entry "${entry}" must be host, address or CIDR, optionally with :port ([IPv6]:port)`);
  let target = entry;
  let port: number | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry);
  if (bracketed) {
    target = bracketed[1]!;
    if (bracketed[2] !== undefined) port = Number(bracketed[2]);
  } else {
    const withPort = /^([^:]+):(\d+)$/.exec(entry);
    if (withPort) {
      target = withPort[1]!;
      port = Number(withPort[2]);
    }
  }
  if (port !== undefined && (!Number.isInteger(port) || port < 1 || port > 65535)) throw bad();
  const [addr, bits, extra] = target.split('/');
  if (extra !== undefined || !addr) throw bad();
  const kind = isIP(addr);
  if (kind) {
    const nets = new BlockList();
    if (bits !== undefined) {
      const n = Number(bits);
      if (!/^\d+$/.test(bits) || n > (kind === 6 ? 128 : 32)) throw bad();
      nets.addSubnet(addr, n, family(addr));
    } else nets.addAddress(addr, family(addr));
    return { nets, ...(port !== undefined ? { port } : {}) };
  }
  if (bits !== undefined || !/^[A-Za-z0-9.-]{1,253}$/.test(addr)) throw bad();
  return { host: addr.toLowerCase(), ...(port !== undefined ? { port } : {}) };
}

export class EndpointPolicy {
  private readonly allow: AllowEntry[];

  /** `allow`: GLUCOGUARD_SUBSCRIPTION_ALLOW entries (see the file comment). */
  constructor(allow: string[], private readonly allowHttp = false) {
    this.allow = allow.map(parseAllowEntry);
  }

  private listed(host: string, address: string | undefined, port: number, defaultPort: number): boolean {
    return this.allow.some((e) => (e.port ?? defaultPort) === port
      && (e.host !== undefined ? e.host === host.toLowerCase() : address !== undefined && isIP(address) > 0 && e.nets!.check(address, family(address))));
  }

  /** May `address` (what `host` resolved to) be connected to on `port`? */
  addressAllowed(host: string, address: string, port: number, defaultPort = 443): boolean {
    if (!isIP(address)) return false;
    if (this.listed(host, address, port, defaultPort)) return true;
    return !BLOCKED.check(address, family(address));
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
    const { port, defaultPort } = portsOf(url);
    const listed = this.listed(host, isIP(host) ? host : undefined, port, defaultPort);
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && (this.allowHttp || listed))) {
      throw badRequest('channel.endpoint must be an https URL', 'Subscription.channel.endpoint');
    }
    const addresses = isIP(host) ? [host] : await resolveAll(host).catch(() => {
      throw badRequest('channel.endpoint host does not resolve', 'Subscription.channel.endpoint');
    });
    if (addresses.length === 0 || addresses.some((a) => !this.addressAllowed(host, a, port, defaultPort))) {
      throw badRequest('channel.endpoint must not point to a loopback, private or reserved address (or a port not allow-listed)', 'Subscription.channel.endpoint');
    }
    return url;
  }

  /**
   * A `lookup` for http.request to `url` that refuses addresses the policy does not allow: the
   * decision is on the address the socket connects to (DNS rebinding), with the URL's port.
   */
  lookup(url: URL): (hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => void {
    const { port, defaultPort } = portsOf(url);
    return (hostname, options, callback) => {
      dnsLookup(hostname, { all: true }, (err, found: LookupAddress[]) => {
        if (err) return callback(err);
        const ok = found.filter((a) => this.addressAllowed(hostname, a.address, port, defaultPort));
        if (ok.length === 0 || ok.length !== found.length) return callback(Object.assign(new Error('endpoint address not allowed'), { code: 'EADDRNOTALLOWED' }));
        if (options.all) return callback(null, ok);
        return callback(null, ok[0]!.address, ok[0]!.family);
      });
    };
  }
}

function portsOf(url: URL): { port: number; defaultPort: number } {
  const defaultPort = url.protocol === 'http:' ? 80 : 443;
  return { port: url.port ? Number(url.port) : defaultPort, defaultPort };
}

function resolveAll(host: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    dnsLookup(host, { all: true }, (err, found) => (err ? reject(err) : resolve(found.map((a) => a.address))));
  });
}
