// The terminal commands behind `mod.ts fdb`, `mod.ts ports` and `mod.ts ctl` (deno task fdb /
// ports / ctl).
import { CliError } from "./common.ts";
import { ctlCommand, UsageError } from "./ctl.ts";
import { fdbCommand } from "./fdb.ts";
import { portsCommand } from "./ports.ts";

export const CLI_COMMANDS: Record<string, (args: string[]) => Promise<string>> = {
  fdb: fdbCommand,
  ports: portsCommand,
  ctl: ctlCommand,
};

/** Runs one view; prints its output or a one-line error. Returns the exit status. */
export async function runCli(command: string, args: string[]): Promise<number> {
  const run = CLI_COMMANDS[command];
  if (!run) {
    console.error(`unknown command ${command}: use ${Object.keys(CLI_COMMANDS).join(" or ")}`);
    return 2;
  }
  try {
    console.log(await run(args));
    return 0;
  } catch (err) {
    // parseArgs reports bad options with a code; those and ours are one-line messages.
    const usage = (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS") ||
      err instanceof UsageError;
    if (err instanceof CliError || usage) {
      console.error(`vswitch ${command}: ${(err as Error).message}`);
      return usage ? 2 : 1;
    }
    throw err;
  }
}
