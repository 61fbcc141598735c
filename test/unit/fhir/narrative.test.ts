/**
 * Narrative rules @medplum/core's validator does not check (src/fhir/narrative.ts): a `<script>` or
 * an event attribute in `text.div` was stored and would run in any app that shows the narrative.
 */
import { describe, expect, test } from '@jest/globals';
import type { Resource } from '@medplum/fhirtypes';
import { narrativeIssues } from '../../../src/fhir/narrative.js';

const withDiv = (div: string, contained?: Resource[]): Resource => ({
  resourceType: 'Consent', text: { status: 'generated', div }, ...(contained ? { contained } : {}),
} as Resource);
const X = 'xmlns="http://www.w3.org/1999/xhtml"';

describe('narrative (text.div)', () => {
  test.each([
    `<div ${X}><p>Shared with <b>Dr Osei</b> until <i>2027-01-01</i>.</p><table><tr><td>a</td></tr></table></div>`,
    `<div ${X}><a href="https://example.org/x" name="n">link</a><img src="#logo" alt="logo"/><span style="color:red">x</span></div>`,
    `<div ${X} lang="fr"><h1>Titre</h1><ul><li>un</li></ul></div>`,
  ])('takes ordinary formatting: %s', (div) => {
    expect(narrativeIssues(withDiv(div))).toEqual([]);
  });

  test.each([
    [`<div ${X}><script>alert(1)</script>x</div>`, /element <script>/],
    [`<div ${X}><p onclick="alert(1)">x</p></div>`, /event attribute onclick/],
    [`<div ${X}><img src="x" onerror="alert(1)"/></div>`, /event attribute onerror/],
    [`<div ${X}><a href=" javascript:alert(1)">x</a></div>`, /javascript:/],
    [`<div ${X}><iframe src="https://evil.example"></iframe>x</div>`, /element <iframe>/],
    [`<div ${X}><form><input name="pw"/></form>x</div>`, /element <form>/],
    [`<div ${X}><link rel="stylesheet" href="https://evil.example/s.css"/>x</div>`, /element <link>/],
    [`<div ${X}><svg><script>alert(1)</script></svg>x</div>`, /element <svg>/],
    [`<div ${X}><p>unclosed</div>`, /not well-formed/],
    ['<div><p>no namespace</p></div>', /one <div xmlns/],
    [`<p ${X}>not a div</p>`, /one <div xmlns/],
    [`<div ${X}>a</div><div ${X}>b</div>`, /one <div|well-formed/],
    [`<div ${X}>   </div>`, /no content/],
  ])('refuses %s', (div, message) => {
    const issues = narrativeIssues(withDiv(div));
    expect(issues).toHaveLength(1);
    expect(issues[0]).toMatchObject({ severity: 'error', expression: ['Consent.text.div'] });
    expect(issues[0]!.diagnostics).toMatch(message);
    expect(issues[0]!.diagnostics).not.toContain('alert(1)'); // the content is not repeated
  });

  test('contained resources\' narratives are checked too, each at its path', () => {
    const issues = narrativeIssues(withDiv(`<div ${X}>ok</div>`, [{ resourceType: 'Patient', text: { status: 'generated', div: `<div ${X}><script>x</script>y</div>` } } as Resource]));
    expect(issues.map((i) => i.expression)).toEqual([['Consent.contained[0].text.div']]);
  });
});
