// Command starter is the operator's CLI: validate activation specs, apply them as Temporal
// Schedules, run one now and watch it, show status, and run the demo.
//
//	starter validate -f PATH
//	starter apply    -f PATH [--prune] [--dry-run]
//	starter run ID   -f PATH [--full-resync] [--dry-run] [--wait]
//	starter status [ID] [--json]
//	starter history ID -f PATH [-n 20] [--json]
//	starter pause ID --reason TEXT
//	starter resume ID --reason TEXT [--skip-rejected]
//	starter abort ID --reason TEXT
//	starter trigger ID
//	starter demo [--keep-running] [--rows N]
//
// Exit codes of `run --wait`: 0 completed, 3 paused waiting for an operator, 1 failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/activation-engine/activations/internal/telemetry"
)

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

const usage = `usage: starter <command> [flags]

commands:
  validate -f PATH                     check activation specs (a file or a folder)
  apply -f PATH [--prune] [--dry-run]  create/update one Temporal Schedule per activation
  run ID -f PATH [--full-resync] [--retry-rejected] [--dry-run] [--wait]
                                       start a run now; --wait shows progress
                                       (exit 0 completed, 3 paused, 1 failed)
  status [ID] [--json]                 schedules, last runs and state of activations (paused: why)
  history ID -f PATH [-n 20] [--json]  the activation's run log from its warehouse state (runs table)
  pause ID --reason TEXT               pause the schedule; the live run pauses after its in-flight chunks
  resume ID --reason TEXT [--skip-rejected]
                                       resume the paused run (update "resume") and unpause the schedule;
                                       --skip-rejected commits the rows it rejected so far as if accepted
  abort ID --reason TEXT               end the live run after its in-flight chunks (state Aborted)
  trigger ID                           run it now through its schedule
  notify-test ID -f PATH               send a sample event to the activation's webhooks (spec notify)
  demo [--keep-running] [--rows N]     the whole thing on the embedded default
  codec-server [--addr A] [--allowed-origin URL]  decrypt payloads for the Temporal UI/CLI (docs/security.md)

Temporal settings come from TEMPORAL_ADDRESS (default localhost:7233), TEMPORAL_NAMESPACE
(default "default"), TEMPORAL_API_KEY, TLS variables and profiles, as for every Temporal tool.
`

func main() {
	logger := telemetry.Logger(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, logger)
	stop()
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "starter:", err)
	}
	os.Exit(code)
}

func run(ctx context.Context, args []string, out io.Writer, logger *slog.Logger) error {
	if len(args) == 0 {
		fmt.Fprint(out, usage)
		return &exitError{code: 2, err: errors.New("no command")}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "validate":
		return cmdValidate(ctx, rest, out)
	case "apply":
		return cmdApply(ctx, rest, out, logger)
	case "run":
		return cmdRun(ctx, rest, out, logger)
	case "status":
		return cmdStatus(ctx, rest, out, logger)
	case "history":
		return cmdHistory(ctx, rest, out, logger)
	case "pause":
		return cmdPause(ctx, rest, out, logger)
	case "resume":
		return cmdResume(ctx, rest, out, logger)
	case "abort":
		return cmdAbort(ctx, rest, out, logger)
	case "trigger":
		return cmdTrigger(ctx, rest, out, logger)
	case "notify-test":
		return cmdNotifyTest(ctx, rest, out, logger)
	case "demo":
		return cmdDemo(ctx, rest, out, logger)
	case "codec-server":
		return cmdCodecServer(ctx, rest, out, logger)
	case "help", "-h", "--help":
		fmt.Fprint(out, usage)
		return nil
	}
	fmt.Fprint(out, usage)
	return &exitError{code: 2, err: fmt.Errorf("unknown command %q", cmd)}
}

// parse parses flags that may come before or after positional arguments (`run ID -f x` and
// `run -f x ID` both work).
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return fs
}

func requireFile(path string) error {
	if strings.TrimSpace(path) == "" {
		return errors.New("-f PATH is required (an activation file or a folder of them)")
	}
	return nil
}
