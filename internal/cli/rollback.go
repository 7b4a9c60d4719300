package cli

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fanout/fanout/internal/coord"
)

// rollbackHistory is how far back rollback looks: the whole completion
// history Redis keeps.
const rollbackHistory = 100

func masterRollback(ctx context.Context, args []string, e env) error {
	var c common
	var wait bool
	var timeout time.Duration
	fs := newFlags(e, "rollback", `fanout-master rollback [NAME] [GENERATION]: publish the release of an earlier generation
of task NAME (default: the plain task) again.

The generation must have completed and been published with --atomic. Hosts
that keep its release (publish --keep) switch back to it without moving its
bytes; hosts that do not (they joined since, or pruned it) pull it from
those that do: the master serves none of it, its tree may have changed. A
rollback is a new generation: history and status show which one it returns
to. Without GENERATION: the newest completed generation at the current
tree's place (path or --dest) whose tree differs from the current one.`)
	c.register(fs)
	fs.BoolVar(&wait, "wait", false, "wait until every expected host holds the release (exit 1 if it fails)")
	fs.DurationVar(&timeout, "timeout", 30*time.Minute, "with --wait, give up after this long")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	var want int64
	args = fs.Args()
	if len(args) > 2 {
		return usageError("rollback takes a task NAME and a GENERATION at most, got %d arguments", len(args))
	}
	if len(args) > 0 {
		if _, err := strconv.ParseInt(args[0], 10, 64); err != nil || len(args) == 2 {
			c.task, args = args[0], args[1:]
		}
	}
	if err := c.checkTask("rollback NAME"); err != nil {
		return err
	}
	if len(args) == 1 {
		n, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil || n < 1 {
			return usageError("rollback GENERATION: %q is not a generation id (fanout-master history lists them)", args[0])
		}
		want = n
	}
	c.clientName = clientName("fanout-master-rollback", "")
	rdb, err := c.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	co := c.coord(rdb, 0)
	cur, err := co.Current(ctx)
	if err != nil {
		return err
	}
	hist, err := co.History(ctx, rollbackHistory)
	if err != nil {
		return err
	}
	target, err := rollbackTarget(cur, hist, want)
	if err != nil {
		return err
	}
	if err := masterSpeaks(ctx, co, coord.ProtoAtomic, "rollback"); err != nil {
		return err
	}
	if c.task != "" {
		if err := masterSpeaks(ctx, co, coord.ProtoTasks, "rollback of a named task"); err != nil {
			return err
		}
		if names, err := co.TaskNames(ctx); err != nil {
			return err
		} else if !slices.Contains(names, c.task) {
			return fmt.Errorf("no task named %s (retired, or never published; named tasks: %s): publish --name %s first", c.task, dash(strings.Join(names, ", ")), c.task)
		}
	}
	opts := coord.TaskOptions{
		Delete: target.Delete, Dest: target.Dest, Groups: target.Groups, Atomic: max(target.Atomic, cur.Atomic),
		Switch: target.Switch, Rollback: target.Gen, Digest: target.Digest, Files: target.Files, Bytes: target.Bytes,
	}
	if err := co.SetTask(ctx, target.Path, opts); err != nil {
		return fmt.Errorf("set task: %w", err)
	}
	fmt.Fprintf(e.stdout, "rollback to generation %d%s set (%s, digest %.16s, %d files, %s): hosts that keep its release switch back to it; the others pull it from them\n",
		target.Gen, taskLabel(c.task), printable(target.Path, maxLine), target.Digest, target.Files, humanBytes(target.Bytes))
	if !wait {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return waitTask(wctx, co, cur.ID, e)
}

// rollbackTarget picks the completed generation a rollback returns to from
// hist (newest first): want, or with want 0 the newest whose tree differs
// from the current generation's. It refuses one whose hosts kept no
// release: not atomic, the current tree already, or older than the
// releases hosts keep.
func rollbackTarget(cur coord.Generation, hist []coord.Completion, want int64) (coord.Completion, error) {
	idx := -1
	for i, rec := range hist {
		if want != 0 && rec.Gen == want || want == 0 && rec.Digest != cur.Digest && rec.Gen < cur.ID && localPath(rec) == cur.LocalPath() {
			idx = i
			break
		}
	}
	if idx < 0 {
		if want != 0 {
			return coord.Completion{}, fmt.Errorf("generation %d is not among the last %d completed generations (fanout-master history lists them): only a completed generation can be rolled back to; publish its tree again", want, rollbackHistory)
		}
		return coord.Completion{}, fmt.Errorf("no completed generation before the current one (%d) has another tree: nothing to roll back to (fanout-master history lists them)", cur.ID)
	}
	target := hist[idx]
	if target.Atomic == 0 {
		return coord.Completion{}, fmt.Errorf("generation %d was not published with --atomic: hosts kept no release of it to switch back to; publish its tree again (with --atomic, so the next rollback can switch)", target.Gen)
	}
	if target.Digest == cur.Digest {
		return coord.Completion{}, fmt.Errorf("generation %d has the tree of the current generation %d: nothing to roll back", target.Gen, cur.ID)
	}
	// Releases newer than the target that hosts switched to: at least the
	// distinct trees of the completed generations since, and the current
	// one. When they fill what hosts keep, the target was pruned
	// everywhere and no host could serve it.
	newer := map[string]bool{cur.Digest: true}
	for _, rec := range hist[:idx] {
		if rec.Digest != target.Digest {
			newer[rec.Digest] = true
		}
	}
	keep := cur.Atomic
	if keep == 0 {
		keep = coord.DefaultKeep // what a host whose tree is released keeps for a plain generation
	}
	if len(newer) >= keep {
		return coord.Completion{}, fmt.Errorf("generation %d's release is older than the %d releases hosts keep (%d newer trees were switched to since): it was pruned; publish its tree again", target.Gen, keep, len(newer))
	}
	return target, nil
}

// localPath is where hosts held the tree of rec: its destination, or its
// path.
func localPath(rec coord.Completion) string {
	if rec.Dest != "" {
		return rec.Dest
	}
	return rec.Path
}
