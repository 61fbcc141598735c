/**
 * The rules of a resource's narrative (`text.div`, R4 narrative.html#xhtml) that @medplum/core's
 * validator does not check: the div is well-formed XHTML, one `div` in the XHTML namespace, and
 * "SHALL NOT contain a head, a body element, external stylesheet references, deprecated elements,
 * scripts, forms, base/link/xlink, frames, iframes, objects or event related attributes (e.g.
 * onClick)" (txt-1), and has some content (txt-2). A narrative is what a client shows a person: a
 * `<script>` or an `onclick` stored here would run in every app that displays it. Checked on every
 * write that has one, contained resources' included.
 */
import sax from 'sax';
import type { OperationOutcomeIssue, Resource } from '@medplum/fhirtypes';

const XHTML = 'http://www.w3.org/1999/xhtml';
/** Elements the rule names (and their like: form controls, embedded objects, style sheets). */
const FORBIDDEN = new Set([
  'head', 'body', 'html', 'title', 'script', 'noscript', 'style', 'link', 'base', 'meta',
  'form', 'input', 'select', 'option', 'textarea', 'button', 'label', 'fieldset', 'legend',
  'frame', 'frameset', 'iframe', 'object', 'embed', 'applet', 'param', 'svg', 'math',
]);
/** URL schemes that run or smuggle code when followed. */
const UNSAFE_URL = /^\s*(javascript|vbscript|data)\s*:/i;

export function narrativeIssues(resource: Resource): OperationOutcomeIssue[] {
  const issues: OperationOutcomeIssue[] = [];
  const visit = (r: Resource | undefined, at: string): void => {
    const div = (r as { text?: { div?: unknown } } | undefined)?.text?.div;
    if (typeof div === 'string') {
      const problem = divProblem(div);
      if (problem) issues.push({ severity: 'error', code: 'invalid', diagnostics: `${at}.text.div: ${problem} (narrative.html#xhtml, txt-1/txt-2)`, expression: [`${at}.text.div`] });
    }
  };
  visit(resource, resource.resourceType);
  ((resource as { contained?: Resource[] }).contained ?? []).forEach((c, i) => visit(c, `${resource.resourceType}.contained[${i}]`));
  return issues;
}

/** What breaks the rules in `div`, in words (no content repeated but element and attribute names); undefined when nothing does. */
function divProblem(div: string): string | undefined {
  const parser = sax.parser(true, { lowercase: true });
  let problem: string | undefined;
  let depth = 0;
  let roots = 0;
  let content = false;
  const note = (p: string): void => {
    problem ??= p;
  };
  parser.onopentag = (tag) => {
    const name = tag.name.toLowerCase();
    if (depth === 0) {
      roots++;
      if (name !== 'div' || tag.attributes.xmlns !== XHTML) note(`the narrative must be one <div xmlns="${XHTML}">`);
    }
    depth++;
    const local = name.includes(':') ? name.slice(name.indexOf(':') + 1) : name;
    if (FORBIDDEN.has(local)) note(`the element <${local}> is not allowed in a narrative`);
    if (local === 'img') content = true;
    for (const [attr, value] of Object.entries(tag.attributes)) {
      const a = attr.toLowerCase();
      if (a.startsWith('on')) note(`the event attribute ${a.slice(0, 40)} is not allowed in a narrative`);
      else if (a.startsWith('xlink:')) note('xlink attributes are not allowed in a narrative');
      else if ((a === 'href' || a === 'src' || a === 'action' || a === 'formaction' || a === 'background') && UNSAFE_URL.test(value)) {
        note(`${a} with a javascript:, vbscript: or data: URL is not allowed in a narrative`);
      }
    }
  };
  (parser as unknown as { onclosetag: () => void }).onclosetag = () => {
    depth--;
  };
  (parser as unknown as { ontext: (t: string) => void }).ontext = (t) => {
    if (depth > 0 && t.trim()) content = true;
    else if (depth === 0 && t.trim()) note('the narrative must be one <div> with nothing outside it');
  };
  parser.onerror = () => {
    note('the narrative is not well-formed XHTML');
    parser.resume();
  };
  try {
    parser.write(div).close();
  } catch {
    note('the narrative is not well-formed XHTML');
  }
  if (roots !== 1) note(`the narrative must be one <div xmlns="${XHTML}">`);
  if (!content) note('the narrative has no content');
  return problem;
}
