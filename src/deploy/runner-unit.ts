// The systemd service a deploy runs in, when a CI job runs it.
//
// A release's keeper and app processes stay in the control group of the
// command that started them: fork(2) keeps a child in its parent's cgroup,
// and setsid(2) does not move it. A CI runner installed as a systemd service
// (gitlab-runner.service, actions.runner.*.service, jenkins.service,
// buildkite-agent.service) runs its shell jobs in its own control group, so
// a release deployed by such a job lives there, and `systemctl stop` or
// `restart` of the runner (a package upgrade restarts it) stops the release
// with it, unless the unit's KillMode is `process` or `none`
// (systemd.kill(5); GitHub's svc.sh installs KillMode=process). A job
// that a runner starts through `su` with pam_systemd is in a login
// session's scope instead, and is not affected. The command says so; the
// README ("A CI runner on the host it deploys to") gives the ways out.
import { spawn } from 'node:child_process';
import fs from 'node:fs';

/** Variables by which CI systems mark a job's environment. */
export const CI_MARKERS = ['CI', 'GITHUB_ACTIONS', 'GITLAB_CI', 'BUILDKITE', 'JENKINS_URL', 'TF_BUILD', 'TEAMCITY_VERSION', 'DRONE', 'CIRCLECI', 'BITBUCKET_BUILD_NUMBER'];

export interface ServiceUnit {
  unit: string;
  /** A unit of a user's systemd manager (under user@<uid>.service), asked with `systemctl --user`. */
  user: boolean;
}

/**
 * The innermost systemd unit of a /proc/<pid>/cgroup text, when that unit
 * is a service: from the unified hierarchy's line (`0::/...`), or else from
 * cgroup v1's `name=systemd` one. Groups a service made below its own
 * (Delegate=yes) are passed over; a scope (a login session, `systemd-run
 * --scope`) or a slice is not a service.
 */
export function serviceUnitOf(cgroupText: string): ServiceUnit | null {
  const lines = cgroupText.split('\n');
  const paths = [lines.find((l) => l.startsWith('0::'))?.slice(3), lines.find((l) => /^\d+:name=systemd:/.test(l))?.replace(/^\d+:name=systemd:/, '')];
  const where = paths.find((p) => p !== undefined && p !== '/' && p !== '');
  if (!where) return null;
  const units = where.split('/').filter((part) => /\.(service|scope|slice)$/.test(part));
  const unit = units.at(-1);
  if (!unit?.endsWith('.service') || /^user@\d+\.service$/.test(unit)) return null;
  return { unit, user: units.some((part) => /^user@\d+\.service$/.test(part)) };
}

/** How long systemctl may take to answer before the unit's KillMode counts as unknown. */
const SYSTEMCTL_MS = 1_000;

/**
 * The unit's KillMode as its manager reports it; null where that cannot be
 * asked (no systemd, no bus, no answer in time) or the manager does not
 * know the unit (`systemctl show` then reports the defaults, so LoadState
 * is read too; KEY=value lines rather than --value, which systemd < 230
 * lacks).
 */
function killModeOf(service: ServiceUnit): Promise<string | null> {
  const args = [...(service.user ? ['--user'] : []), 'show', '--property=KillMode,LoadState', '--', service.unit];
  return new Promise((resolve) => {
    let out = '';
    const child = spawn('systemctl', args, { stdio: ['ignore', 'pipe', 'ignore'] });
    const done = (answer: string | null): void => {
      clearTimeout(timer);
      child.stdout.destroy(); // a process systemctl left behind holding the pipe must not hold this one
      resolve(answer);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      done(null);
    }, SYSTEMCTL_MS);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.on('error', () => done(null)); // no systemctl
    child.on('close', (code) => {
      const value = (key: string): string | undefined => new RegExp(`^${key}=(.*)$`, 'm').exec(out)?.[1]?.trim();
      done(code === 0 && value('LoadState') === 'loaded' ? (value('KillMode') ?? null) : null);
    });
  });
}

/** A CI job's environment: one of the CI systems' own variables, set and not turned off (`CI=false`). */
function inCiJob(env: NodeJS.ProcessEnv): boolean {
  return CI_MARKERS.some((name) => {
    const value = env[name]?.trim().toLowerCase();
    return value !== undefined && value !== '' && value !== '0' && value !== 'false';
  });
}

/**
 * A warning for a deploy run by a CI job inside a systemd service whose
 * stop would stop the release too; null otherwise (not a CI job, not in a
 * service, or a service with KillMode=process or none).
 */
export async function runnerUnitWarning(release: string, env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  if (!inCiJob(env)) return null;
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/cgroup', 'utf8');
  } catch {
    return null;
  }
  const service = serviceUnitOf(text);
  if (!service) return null;
  const killMode = await killModeOf(service);
  if (killMode === 'process' || killMode === 'none') return null;
  const systemctl = `systemctl${service.user ? ' --user' : ''}`;
  return (
    `${release}'s processes start in the control group of ${service.unit}, which runs this job: \`${systemctl} stop\` or \`restart\` of it stops them too` +
    `${killMode ? ` (its KillMode is ${killMode})` : ', unless its KillMode is process or none'}. ` +
    'Run the deploy in a scope of its own (`systemd-run --scope` as root; as another user `systemd-run --user --scope`, which needs that user\'s manager) or over SSH (README: "A CI runner on the host it deploys to")'
  );
}
