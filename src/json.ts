// Reading a JSON file whose errors name the file: the one reader for configs, manifests, indexes and
// tokenizer files (a leaf module: it imports nothing of the project).
import * as fs from 'fs';

/**
 * Parses `file`. A missing file is an error naming it and, when given, `missingHint` (what the file
 * should have been); unreadable or invalid JSON is an error naming the file and the parser's message.
 */
export function readJsonFile<T = unknown>(file: string, missingHint?: string): T {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`${file} is missing${missingHint ? `: ${missingHint}` : ''}`, { cause: e });
    throw new Error(`${file}: cannot read it: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text) as T;
  } catch (e) {
    throw new Error(`${file}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}
