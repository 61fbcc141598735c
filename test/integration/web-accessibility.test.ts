/**
 * Static accessibility checks of the apps' sources (the browser test covers keyboard use and
 * 200 % zoom): WCAG 2.x AA contrast of every text/background pair the stylesheet defines, including
 * the SMART style an EHR hands over; every form control of the pages has a label.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { SMART_STYLE } from '../../src/smart/discovery.js';
import { APPS_DIR } from '../../src/web/index.js';

const css = readFileSync(path.join(APPS_DIR, 'shared', 'app.css'), 'utf8');
const vars = Object.fromEntries([...css.matchAll(/--([a-z-]+):\s*(#[0-9a-fA-F]{6})/g)].map((m) => [m[1]!, m[2]!]));

function luminance(hex: string): number {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255).map((c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4));
  return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
}

function contrast(a: string, b: string): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi! + 0.05) / (lo! + 0.05);
}

describe('contrast (WCAG AA: 4.5:1 for text)', () => {
  const pairs: [string, string, string][] = [
    ['text on page', vars.fg!, vars.bg!],
    ['secondary text on page', vars.muted!, vars.bg!],
    ['secondary text on panels', vars.muted!, vars.panel!],
    ['button text on accent / header', vars['accent-fg']!, vars.accent!],
    ['links and secondary buttons', vars.accent!, vars.bg!],
    ['warning text', vars['warn-fg']!, vars['warn-bg']!],
    ['error text', vars['err-fg']!, vars['err-bg']!],
    ['success text', vars['ok-fg']!, vars['ok-bg']!],
    ['danger button', '#ffffff', '#a3111f'],
    ['SMART style: text on background', SMART_STYLE.color_text, SMART_STYLE.color_background],
    ['SMART style: white on highlight (header, buttons)', '#ffffff', SMART_STYLE.color_highlight],
  ];
  test.each(pairs)('%s', (_name, fg, bg) => {
    expect(contrast(fg, bg)).toBeGreaterThanOrEqual(4.5);
  });

  test('the focus ring is visible on white (3:1 for non-text)', () => {
    expect(contrast('#0b0c0c', '#ffffff')).toBeGreaterThanOrEqual(3);
    expect(css).toMatch(/:focus-visible \{ outline: 3px solid #0b0c0c/);
  });
});

describe('labels', () => {
  test('every control the pages create has a label, legend or aria-label', () => {
    let controls = 0;
    for (const file of ['portal/index.js', 'clinician/index.js', 'shared/agp.js']) {
      const source = readFileSync(path.join(APPS_DIR, file), 'utf8');
      for (const m of source.matchAll(/el\('(input|select)', \{([^}]*)\}/g)) {
        const attrs = m[2]!;
        const id = /id: [`'"]([^`'"]+)/.exec(attrs)?.[1];
        expect(id).toBeDefined();
        const labelled = /'aria-label'/.test(attrs) || source.includes(`for: '${id}'`) || source.includes(`for: \`${id}`) || (id!.includes('${') && source.includes("el('label', { for: `"));
        expect({ file, id, labelled }).toEqual({ file, id, labelled: true });
        controls++;
      }
    }
    expect(controls).toBeGreaterThanOrEqual(5); // file, format, who, the radio groups, the period selector
  });

  test('pages declare a language, a viewport that allows zoom, and a skip link where there is navigation', () => {
    for (const page of ['clinician/index.html', 'portal/index.html']) {
      const html = readFileSync(path.join(APPS_DIR, page), 'utf8');
      expect(html).toContain('<html lang="en">');
      expect(html).toContain('content="width=device-width, initial-scale=1"');
      expect(html).not.toMatch(/user-scalable=no|maximum-scale/);
      expect(html).toContain('class="skip" href="#main"');
    }
  });
});
