// The one place the CLI gets an undici Client, for health probes. undici is
// loaded on first use, not at start-up: the CLI spawns the new release first
// and loads it while that boots (see warmUpProbes).
import type { Client } from 'undici';

export function loadUndici(): typeof import('undici') {
  return require('undici') as typeof import('undici');
}

export function newClient(...args: ConstructorParameters<typeof Client>): Client {
  return new (loadUndici().Client)(...args);
}
