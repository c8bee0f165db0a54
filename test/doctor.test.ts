// reuse-deploy doctor: called directly, on this host, with temp state dirs.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { doctorCommand, formatDoctor, type DoctorReport } from '../src/deploy/doctor';
import { tempStateDir } from './helpers';

let stateDir: string;
beforeEach(() => {
  stateDir = tempStateDir();
  fs.chmodSync(stateDir, 0o700);
});
afterEach(() => fs.rmSync(stateDir, { recursive: true, force: true }));

const check = (report: DoctorReport, name: string) => {
  const c = report.checks.find((x) => x.name === name);
  assert.ok(c, `a "${name}" check in ${JSON.stringify(report.checks.map((x) => x.name))}`);
  return c;
};

describe('doctor', () => {
  test('this host can run deploys: ok, with a working steering check', async () => {
    const report = await doctorCommand({ stateDir });
    assert.equal(report.ok, true, formatDoctor(report));
    for (const name of ['kernel', 'node', 'addon', 'so_reuseport', 'steering', 'tcp_migrate_req', 'state dir']) check(report, name);
    assert.equal(check(report, 'addon').status, 'ok');
    assert.equal(check(report, 'so_reuseport').status, 'ok');
    const steering = check(report, 'steering');
    assert.equal(steering.status, 'ok', steering.detail);
    assert.match(steering.detail, /6 of 6 connections to group index 1/);
    assert.equal(check(report, 'state dir').status, 'ok');
    assert.ok(report.checks.every((c) => c.status !== 'fail'));
    // tcp_migrate_req follows the host's sysctl.
    const migrate = check(report, 'tcp_migrate_req');
    const value = fs.existsSync('/proc/sys/net/ipv4/tcp_migrate_req') ? fs.readFileSync('/proc/sys/net/ipv4/tcp_migrate_req', 'utf8').trim() : null;
    assert.equal(migrate.status, value === '1' ? 'ok' : 'warn');
    if (value === '0') assert.match(migrate.hint ?? '', /net\.ipv4\.tcp_migrate_req = 1.*\/etc\/sysctl\.d\/90-reuse-deploy\.conf.*sysctl --system/);

    const text = formatDoctor(report);
    const lines = text.split('\n');
    assert.equal(lines.length, report.checks.length + 1, 'one line per check, and a verdict');
    for (const [i, c] of report.checks.entries()) assert.ok(lines[i]!.startsWith(c.status), lines[i]);
    assert.match(lines[lines.length - 1]!, /^deploys can run here/);
  });

  test('the steering check leaves no socket behind', async () => {
    const fdsBefore = fs.readdirSync('/proc/self/fd').length;
    await doctorCommand({ stateDir });
    await doctorCommand({ stateDir });
    // Node may keep an fd or two around (epoll, signal pipes); the check opens six sockets and four listeners per run.
    assert.ok(fs.readdirSync('/proc/self/fd').length <= fdsBefore + 2);
  });

  test('a state dir that does not exist yet is ok when its parent is writable', async () => {
    const report = await doctorCommand({ stateDir: path.join(stateDir, 'a', 'b') });
    const c = check(report, 'state dir');
    assert.equal(c.status, 'ok', c.detail);
    assert.match(c.detail, /does not exist yet/);
  });

  test('a group-writable state dir: ok false, with a chmod hint', async () => {
    fs.chmodSync(stateDir, 0o770);
    const report = await doctorCommand({ stateDir });
    assert.equal(report.ok, false);
    const c = check(report, 'state dir');
    assert.equal(c.status, 'fail');
    assert.match(c.detail, /writable by group or others \(mode 770\)/);
    assert.equal(c.hint?.includes(`chmod 700 ${stateDir}`), true, c.hint);
    assert.match(c.hint!, /--state-dir/);
    assert.match(formatDoctor(report), /^fail +state dir .*fix: chmod 700/m);
    assert.match(formatDoctor(report), /a deploy would fail here: 1 check failed$/);
  });

  test('an app folder another user owns fails the state dir check', { skip: process.getuid?.() !== 0 ? 'needs root to chown' : false }, async () => {
    const app = path.join(stateDir, 'someapp');
    fs.mkdirSync(app, { mode: 0o700 });
    fs.chownSync(app, 65534, 65534);
    const report = await doctorCommand({ stateDir });
    assert.equal(report.ok, false);
    assert.match(check(report, 'state dir').detail, /belongs to uid 65534/);
  });

  test('--port: a privileged port is checked against ip_unprivileged_port_start and CAP_NET_BIND_SERVICE', async () => {
    const report = await doctorCommand({ stateDir, port: 80 });
    const c = check(report, 'port');
    const start = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
    const capEff = BigInt(`0x${/^CapEff:\s*(\w+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]}`);
    const canBind = 80 >= start || (capEff & (1n << 10n)) !== 0n;
    assert.equal(c.status === 'fail', !canBind, c.detail);
    if (!canBind) assert.match(c.hint!, /setcap cap_net_bind_service/);
    const high = check(await doctorCommand({ stateDir, port: 40123 }), 'port');
    assert.match(high.detail, /port 40123 is not privileged/);
  });
});
