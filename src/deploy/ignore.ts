// A .reusedeployignore matcher with gitignore syntax: `#` comments, `!`
// negation, a leading `/` anchors to the app root, a trailing `/` matches
// directories only, `*` and `?` stay within one path segment, `**` spans
// segments. The last matching rule wins.
import fs from 'node:fs';
import path from 'node:path';

interface Rule {
  negate: boolean;
  dirOnly: boolean;
  regex: RegExp;
}

function globToRegex(glob: string, anchored: boolean): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      const slash = glob[i + 2] === '/';
      re += slash ? '(?:.*/)?' : '.*';
      i += slash ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '\\' && i + 1 < glob.length) re += glob[++i]!.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    else re += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(`${anchored ? '^' : '^(?:.*/)?'}${re}(?:/.*)?$`);
}

export type Ignore = (relPath: string, isDir: boolean) => boolean;

export function parseIgnore(text: string): Ignore {
  const rules: Rule[] = [];
  for (const raw of text.split('\n')) {
    let line = raw.replace(/\r$/, '');
    if (!line.trim() || line.startsWith('#')) continue;
    line = line.replace(/(?<!\\)\s+$/, '');
    const negate = line.startsWith('!');
    if (negate) line = line.slice(1);
    const dirOnly = line.endsWith('/');
    if (dirOnly) line = line.slice(0, -1);
    // A slash at the start or in the middle anchors the pattern to the root.
    const anchored = line.startsWith('/') || line.includes('/');
    line = line.replace(/^\//, '');
    rules.push({ negate, dirOnly, regex: globToRegex(line, anchored) });
  }
  return (relPath, isDir) => {
    let ignored = false;
    for (const rule of rules) {
      if (rule.dirOnly && !isDir && !rule.regex.test(path.posix.dirname(relPath))) continue;
      if (rule.regex.test(relPath)) ignored = !rule.negate;
    }
    return ignored;
  };
}

/** `.git` always; then the rules of `<root>/.reusedeployignore`, if present. */
export function loadIgnore(root: string): Ignore {
  let text = '';
  try {
    text = fs.readFileSync(path.join(root, '.reusedeployignore'), 'utf8');
  } catch {
    // no ignore file
  }
  const rules = parseIgnore(text);
  return (relPath, isDir) => relPath === '.git' || relPath.startsWith('.git/') || rules(relPath, isDir);
}
