/** The part of the `sax` package (no bundled types) that the HealthKit parser uses. */
declare module 'sax' {
  export interface Tag {
    name: string;
    attributes: Record<string, string>;
    isSelfClosing: boolean;
  }
  export interface SAXParser {
    line: number;
    column: number;
    onopentag: ((tag: Tag) => void) | null;
    onerror: ((err: Error) => void) | null;
    write(chunk: string): SAXParser;
    close(): SAXParser;
    resume(): SAXParser;
  }
  export function parser(strict: boolean, options?: { trim?: boolean; normalize?: boolean; lowercase?: boolean; position?: boolean }): SAXParser;
  const sax: { parser: typeof parser };
  export default sax;
}
