// Progress on stderr: an ora spinner on a TTY, plain timestamped lines in CI
// or when piped, nothing but warnings with --quiet or --json. stdout is kept
// for the result (one summary line, or one JSON object).

export interface Progress {
  /** A new phase of a long wait. */
  phase(text: string): void;
  info(text: string): void;
  warn(text: string): void;
  /** Ends the spinner, if any, before the result is printed. */
  end(ok: boolean): void;
}

export interface ProgressOptions {
  json?: boolean;
  quiet?: boolean;
}

function plain(quiet: boolean): Progress {
  const line = (text: string): void => {
    process.stderr.write(`${new Date().toISOString()} ${text}\n`);
  };
  return {
    phase: (text) => !quiet && line(text),
    info: (text) => !quiet && line(text),
    warn: (text) => line(`warning: ${text}`),
    end: () => undefined,
  };
}

export async function createProgress(options: ProgressOptions): Promise<Progress> {
  const quiet = Boolean(options.quiet || options.json);
  // A terminal of unknown width (columns 0, e.g. under `script` without a
  // window size) would make the spinner's redraw arithmetic meaningless.
  const tty = process.stderr.isTTY === true && !process.env.CI && (process.stderr.columns ?? 0) > 0;
  if (quiet || !tty) return plain(quiet);
  const { default: ora } = await import('ora');
  // NO_COLOR (no-color.org): the symbols follow it by themselves, the spinner's own colour is ours to turn off.
  const spinner = ora({ stream: process.stderr, discardStdin: false, color: process.env.NO_COLOR ? false : 'cyan' });
  return {
    phase: (text) => {
      if (spinner.isSpinning) spinner.succeed();
      spinner.start(text);
    },
    info: (text) => {
      if (spinner.isSpinning) spinner.text = text;
      else spinner.info(text);
    },
    warn: (text) => spinner.warn(text),
    end: (ok) => {
      if (!spinner.isSpinning) return;
      if (ok) spinner.succeed();
      else spinner.fail();
    },
  };
}
