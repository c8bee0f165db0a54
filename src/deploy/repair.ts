// Brings state.json back in line with what really runs, after a command was
// killed half-way. Called with the app's lock held, so no other command is
// mid-way: an instance still "starting" has lost its CLI.
import type { KeeperStatus } from '../protocol';
import { keeperDrain, tryKeeperStatus } from './keeper-client';
import { groupMembers, isAlive, isKeeper, killKeeperGroup, stopInstance } from './instances';
import { writeState, type AppState, type Instance } from './state';

export interface Repair {
  /** What was repaired, one sentence each, for the user. */
  notes: string[];
  statuses: Map<string, KeeperStatus>;
}

/** `stats`: ask the keepers for fresh connection counts too (for `status`, which shows the statuses). */
export async function repairState(stateFile: string, state: AppState, drainTimeoutMs: number, stats = false): Promise<Repair> {
  const notes: string[] = [];
  const statuses = new Map<string, KeeperStatus>();
  const keep: Instance[] = [];

  for (const instance of state.instances) {
    const status = await tryKeeperStatus(instance.controlSocket, 1_500, stats);
    if (!status) {
      const keeperAlive = isAlive(instance.keeperPid) && isKeeper(instance.keeperPid);
      const orphans = keeperAlive ? [] : groupMembers(instance.keeperPid);
      if (keeperAlive) {
        killKeeperGroup(instance.keeperPid);
        notes.push(`instance ${instance.id} (${instance.release}) did not answer; killed it`);
      } else if (orphans.length > 0) {
        // Its keeper was killed (kill -9, the OOM killer); its app processes
        // serve on, with nothing to drain or restart them. Stopping them here
        // would reset what waits in their queue and take the port down if
        // nothing else serves it: the user decides, told how.
        notes.push(
          `instance ${instance.id} (${instance.release}, ${instance.role}) lost its keeper (pid ${instance.keeperPid}), but its app process(es) ${orphans.join(', ')} still run without it` +
            `${instance.role === 'draining' ? '' : ', still taking connections on the port'}. Nothing supervises or drains them now: once another release is live, stop them with: kill ${orphans.join(' ')}`,
        );
      } else if (instance.role !== 'draining') {
        notes.push(`instance ${instance.id} (${instance.release}, ${instance.role}) is gone; removed it from the state`);
      }
      continue;
    }
    statuses.set(instance.id, status);
    if ((instance.role === 'draining' || instance.role === 'parked') && status.phase === 'live') {
      // The deploy that replaced it died between recording and telling it.
      await keeperDrain(instance.controlSocket, drainTimeoutMs, 1_000).catch(() => undefined);
      instance.role = 'draining';
      notes.push(`instance ${instance.id} (${instance.release}) was recorded as replaced but still listened; draining it`);
    }
    if (instance.role === 'live' && (status.phase === 'draining' || status.phase === 'closed' || status.phase === 'parked')) {
      // A stop (or a deploy that parks) told it to leave and died before
      // recording that: it goes on leaving, so it no longer counts as live
      // (`start` would otherwise find it "already running" while it exits).
      instance.role = status.phase === 'parked' ? 'parked' : 'draining';
      notes.push(`instance ${instance.id} (${instance.release}) was recorded as live but is ${status.phase === 'parked' ? 'parked' : 'leaving the port'}; it is now recorded as ${instance.role}`);
    }
    if (instance.role === 'starting') {
      if (status.phase === 'live') {
        instance.role = 'live';
        notes.push(`instance ${instance.id} (${instance.release}) had gone live before its deploy was interrupted; it is now recorded as live`);
      } else {
        await stopInstance(instance);
        notes.push(`stopped instance ${instance.id} (${instance.release}), left half-started by an interrupted deploy`);
        continue;
      }
    }
    keep.push(instance);
  }

  // More than one live instance: the newest wins, the others drain.
  const live = keep.filter((i) => i.role === 'live').sort((a, b) => a.startedAt - b.startedAt);
  for (const older of live.slice(0, -1)) {
    older.role = 'draining';
    await keeperDrain(older.controlSocket, drainTimeoutMs, 1_000).catch(() => undefined);
    notes.push(`instance ${older.id} (${older.release}) was still live next to a newer one; draining it`);
  }
  const newest = live[live.length - 1];
  if (newest && state.liveHistory[state.liveHistory.length - 1] !== newest.release) state.liveHistory.push(newest.release);

  const changed = notes.length > 0 || keep.length !== state.instances.length;
  state.instances = keep;
  if (changed) writeState(stateFile, state);
  return { notes, statuses };
}
