// The one place the CLI gets an undici Client. undici is loaded on first
// use rather than at start-up: the CLI spawns the new release first and
// loads it while that boots.
import type { Client } from 'undici';

export function newClient(...args: ConstructorParameters<typeof Client>): Client {
  const undici = require('undici') as typeof import('undici');
  return new undici.Client(...args);
}
