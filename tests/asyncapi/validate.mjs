// Validates AsyncAPI documents with the AsyncAPI project's own parser (@asyncapi/parser,
// pinned in package-lock.json; install with `npm ci --prefix tests/asyncapi`).
//
//   node tests/asyncapi/validate.mjs FILE...   (JSON or YAML; "-" or no file: stdin)
//
// Prints every diagnostic as "FILE: severity code at path: message" and exits 1 when any
// has severity error (or a document cannot be parsed at all), 2 when the parser is not
// installed, 0 otherwise.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const SEVERITY = ["error", "warning", "information", "hint"];

let Parser;
try {
  ({ Parser } = await import("@asyncapi/parser"));
} catch (error) {
  console.error(`@asyncapi/parser is not installed (${error.code ?? error.message}): ` +
                "run `npm ci --prefix tests/asyncapi`");
  process.exit(2);
}
const { version } = createRequire(import.meta.url)("@asyncapi/parser/package.json");

async function stdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

const files = process.argv.slice(2);
if (files.length === 0) files.push("-");
const parser = new Parser();
let failed = false;
for (const file of files) {
  const text = file === "-" ? await stdin() : await readFile(file, "utf8");
  const source = file === "-" ? undefined : file;
  const { document, diagnostics } = await parser.parse(text, { source });
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    const at = d.path?.length ? d.path.join("/") : "(document)";
    console.log(`${file}: ${SEVERITY[d.severity] ?? d.severity} ${d.code} at ${at}: ` +
                d.message);
  }
  if (errors.length > 0 || document === undefined) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} errors; @asyncapi/parser ${version})`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()} ` +
                `(${diagnostics.length} other diagnostics; @asyncapi/parser ${version})`);
  }
}
process.exit(failed ? 1 : 0);
