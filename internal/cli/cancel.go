package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

func masterCancel(ctx context.Context, args []string, e env) error {
	var c common
	var reason string
	fs := newFlags(e, "cancel", `fanout-master cancel [NAME]: stop the running generation of a task (default: the
plain task) everywhere.

The generation is marked failed ("cancelled"), its source slots are
withdrawn, and every host pulling it stops at its next lease renewal
(at once on a daemon, which the cancel's announcement wakes; within half
the lease, 7.5 s by default, for a one-shot run). Hosts keep what they
verified: files written so far are whole and verified (a file is renamed
into place only once verified), part files of big files are kept for the
next pull to resume, and an --atomic release that was being built is never
switched to. Hosts that finished the generation keep it. Publish again to
go on.`)
	c.register(fs)
	fs.StringVar(&reason, "reason", "", "why, shown in status and the events")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageError("cancel takes at most one task NAME, got %d arguments", fs.NArg())
	}
	c.task = fs.Arg(0)
	if err := c.checkTask("cancel NAME"); err != nil {
		return err
	}
	c.clientName = clientName("fanout-master-cancel", "")
	rdb, err := c.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	co := c.coord(rdb, 0)
	st, err := co.Status(ctx)
	if err != nil {
		return err
	}
	g := st.Generation
	if g.ID == 0 || g.State != coord.StateRunning {
		return fmt.Errorf("no generation is running%s (the current one, %d, is %s): nothing to cancel", taskLabel(c.task), g.ID, dash(g.State))
	}
	msg := "cancelled by fanout-master cancel at " + st.Now.UTC().Format(time.RFC3339)
	if reason != "" {
		msg += ": " + reason
	}
	if err := co.Cancel(ctx, g.Ref(), msg); err != nil {
		if errors.Is(err, coord.ErrStale) {
			return fmt.Errorf("generation %d ended or was replaced meanwhile: nothing cancelled (see fanout-master status)", g.ID)
		}
		return err
	}
	fmt.Fprintf(e.stdout, "cancelled generation %d%s (%s): %d of %d expected hosts had finished it and keep it; %d were pulling and stop within a few seconds, keeping what they verified\n",
		g.ID, taskLabel(c.task), printable(g.LocalPath(), maxLine), len(st.Finished), len(st.Expected), len(st.Running))
	return nil
}

func masterRetire(ctx context.Context, args []string, e env) error {
	var c common
	var reason string
	fs := newFlags(e, "retire", `fanout-master retire NAME: end the named task NAME.

The task leaves the task list: the master stops publishing and serving it,
and every minion stops pulling, serving and verifying it. Hosts keep the
tree they hold (nothing is deleted), and a generation still running is
failed with the reason. The task's history and events stay (history --name
NAME); publish --name NAME starts it again. The plain task cannot be
retired: cancel it, or delete the task key.`)
	c.register(fs)
	fs.StringVar(&reason, "reason", "", "why, shown in the events")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError("retire takes exactly one task NAME, got %d arguments", fs.NArg())
	}
	c.task = fs.Arg(0)
	if c.task == coord.DefaultTask {
		return usageError("retire %s: the plain task cannot be retired; fanout-master cancel stops its generation", c.task)
	}
	if err := c.checkTask("retire NAME"); err != nil {
		return err
	}
	c.clientName = clientName("fanout-master-retire", "")
	rdb, err := c.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	co := c.coord(rdb, 0)
	if reason == "" {
		reason = "retired by fanout-master retire"
	}
	if err := co.Retire(ctx, reason); err != nil {
		if errors.Is(err, coord.ErrNoTask) {
			names, _ := co.TaskNames(ctx)
			return fmt.Errorf("no task named %s to retire (named tasks: %s)", c.task, dash(strings.Join(names, ", ")))
		}
		return err
	}
	fmt.Fprintf(e.stdout, "retired task %s: hosts stop pulling and serving it and keep its tree\n", c.task)
	return nil
}
