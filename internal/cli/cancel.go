package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

func masterCancel(ctx context.Context, args []string, e env) error {
	var c common
	var reason string
	fs := newFlags(e, "cancel", `fanout-master cancel: stop the running generation everywhere.

The generation is marked failed ("cancelled"), its source slots are
withdrawn, and every host pulling it stops at its next lease renewal
(within a third of the lease, 5 s by default). Hosts keep what they
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
	if fs.NArg() != 0 {
		return usageError("cancel takes no arguments, got %d (named tasks are not built yet: it cancels the task)", fs.NArg())
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
		return fmt.Errorf("no generation is running (the current one, %d, is %s): nothing to cancel", g.ID, dash(g.State))
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
	fmt.Fprintf(e.stdout, "cancelled generation %d (%s): %d of %d expected hosts had finished it and keep it; %d were pulling and stop within a few seconds, keeping what they verified\n",
		g.ID, printable(g.LocalPath(), maxLine), len(st.Finished), len(st.Expected), len(st.Running))
	return nil
}
