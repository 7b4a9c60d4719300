package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/master"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/sdnotify"
)

const masterUsage = `fanout-master: publish a file or tree and serve it as the first source.

Usage:
  fanout-master run [flags]                 watch the task key, publish generations, serve as origin
  fanout-master run --watch [--delay D] [--max-delay D] [--full-every D] [--exclude P]...
                                            also publish each change of the task tree (live mirroring)
  fanout-master publish PATH [--name NAME] [--delete] [--exclude P]... [--exclude-from F] [--compress] [--dest DIR] [--group G]... [--atomic [--keep N] [--switch host|fleet]] [--wait] [--timeout D] [--dry-run]
                                            set the task (same as: redis-cli set task PATH)
  fanout-master rollback [NAME] [GENERATION] [--wait]
                                            switch every host back to the release of an earlier
                                            generation published with --atomic (default: the one
                                            before the current release)
  fanout-master cancel [NAME] [--reason TEXT]
                                            stop the running generation everywhere; hosts keep
                                            what they verified
  fanout-master retire NAME [--reason TEXT] end a named task: hosts stop pulling and serving it
                                            and keep its tree
  fanout-master status [NAME] [--json|--follow]
                                            show every task (or task NAME), its generation and
                                            every host
  fanout-master hosts [--json]              list registered hosts, last heartbeat, version
  fanout-master forget HOST                 remove a host from the registry and every queue
  fanout-master history [--name NAME] [--json] [-n N]
                                            completed generations, newest first
  fanout-master --version

Every flag can also be set in the environment as FANOUT_<FLAG>, e.g.
FANOUT_REDIS=redis://10.0.0.1:6379/0. Run "fanout-master COMMAND --help" for
a command's flags.
`

// Master runs the fanout-master command line and returns its exit code.
func Master(ctx context.Context, args []string) int {
	quietRedis()
	return masterMain(ctx, args, env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
}

func masterMain(ctx context.Context, args []string, e env) int {
	const prog = "fanout-master"
	if len(args) == 0 {
		fmt.Fprint(e.stderr, masterUsage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "run":
		err = masterRun(ctx, args[1:], e)
	case "publish":
		err = masterPublish(ctx, args[1:], e)
	case "rollback":
		err = masterRollback(ctx, args[1:], e)
	case "cancel":
		err = masterCancel(ctx, args[1:], e)
	case "retire":
		err = masterRetire(ctx, args[1:], e)
	case "status":
		err = masterStatus(ctx, args[1:], e)
	case "hosts", "forget", "history":
		err = masterRegistry(ctx, args[0], args[1:], e)
	case "--version", "version":
		fmt.Fprintln(e.stdout, versionLine(prog))
	case "-h", "--help", "help":
		fmt.Fprint(e.stdout, masterUsage)
	default:
		err = usageError("unknown command %q (want run, publish, rollback, cancel, retire, status, hosts, forget or history)", args[0])
	}
	if errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	return report(e, prog, err)
}

func newFlags(e env, name, usage string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "%s\n\nFlags (each also FANOUT_<FLAG>):\n%s", usage, fs.FlagUsages())
	}
	return fs
}

// parse parses args, then the environment, turning flag errors into usage
// errors.
func parse(fs *pflag.FlagSet, args []string, e env) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return usageError("%v", err)
	}
	return bindEnv(fs, e.getenv)
}

func masterRun(ctx context.Context, args []string, e env) error {
	var n node
	var forgetAfter time.Duration
	var watch bool
	var wc master.WatchConfig
	var ex excludeFlags
	fs := newFlags(e, "run", "fanout-master run: watch the task key, publish each task as a generation and serve it as the first source.")
	n.register(fs, "/var/lib/fanout/master")
	fs.DurationVar(&forgetAfter, "forget-after", 7*24*time.Hour, "forget a host (as fanout-master forget does) once its last heartbeat is older than this; 0: never")
	fs.BoolVar(&watch, "watch", false, "watch the current task's tree (inotify) and publish a new generation when it changes: live mirroring")
	fs.DurationVar(&wc.Delay, "delay", time.Second, "with --watch, publish once the tree has been quiet this long after a change")
	fs.DurationVar(&wc.MaxDelay, "max-delay", 10*time.Second, "with --watch, publish at the latest this long after the first change of a burst that never pauses")
	fs.DurationVar(&wc.FullEvery, "full-every", time.Hour, "with --watch, walk the whole tree this often even without events, and publish when it differs")
	fs.DurationVar(&wc.ScanEvery, "scan-every", 10*time.Second, "with --watch, walk the directories inotify cannot watch (fs.inotify.max_user_watches reached) this often")
	fs.IntVar(&wc.MaxWatches, "max-watches", 0, "with --watch, watch at most this many directories and scan the rest every --scan-every (0: as many as the kernel allows)")
	ex.register(fs, "leave paths matching PATTERN (rsync rules) out of every task, on top of the task's own --exclude")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if !watch && (fs.Changed("delay") || fs.Changed("max-delay") || fs.Changed("full-every") || fs.Changed("scan-every") || fs.Changed("max-watches")) {
		return usageError("--delay, --max-delay, --full-every, --scan-every and --max-watches need --watch")
	}
	if watch && (wc.Delay <= 0 || wc.MaxDelay < wc.Delay || wc.FullEvery <= 0 || wc.ScanEvery <= 0 || wc.MaxWatches < 0) {
		return usageError("--watch: --delay %s, --max-delay %s, --full-every %s, --scan-every %s, --max-watches %d: durations must be positive, --max-delay at least --delay, --max-watches 0 or more",
			wc.Delay, wc.MaxDelay, wc.FullEvery, wc.ScanEvery, wc.MaxWatches)
	}
	excludes, err := ex.patterns()
	if err != nil {
		return err
	}
	var watchCfg *master.WatchConfig
	if watch {
		watchCfg = &wc
	}
	if fs.NArg() > 0 {
		return usageError("run takes no arguments, got %q", fs.Args())
	}
	if err := n.check(false); err != nil {
		return err
	}
	if n.uploads < 1 {
		return usageError("--max-uploads %d: the master is the first source; use 1 or more", n.uploads)
	}
	if forgetAfter < 0 || (forgetAfter > 0 && forgetAfter <= n.grace) {
		return usageError("--forget-after %s: use 0 (never forget) or a duration longer than --host-grace %s, such as 168h", forgetAfter, n.grace)
	}
	log, err := n.logger(e.stderr)
	if err != nil {
		return err
	}
	if len(excludes) > 0 {
		log.WithField("exclude", excludes).Info("excluding from every task")
	}
	secrets, err := peer.LoadSecrets(n.secretFile)
	if err != nil {
		return fmt.Errorf("--secret-file: %w", err)
	}
	n.clientName = clientName("fanout-master", n.id)
	rdb, err := n.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	locks, err := lockState(n.stateDir, "fanout-master run", false, false)
	if err != nil {
		return err
	}
	defer locks.release()
	ln, err := n.listenPeer()
	if err != nil {
		return err
	}
	mx := metrics.New()
	co := n.coordClient(rdb)
	server := newPeerServer(secrets, log, mx, bwlimit.New(n.rate), co.Now, n.compressWorkers)
	// The plain task's master, and one for each named task of the task
	// list, all served by one peer server.
	tasks := master.NewTasks(master.Config{
		ID: n.id, Advertise: n.advertise, Root: n.root, StateDir: n.stateDir,
		Uploads: n.uploads, Poll: n.poll, ForgetAfter: forgetAfter, Log: log, Metrics: mx, Zone: n.zone,
		Exclude: excludes, Watch: watchCfg, Version: Version,
	}, co, func(name string) master.Coordinator { return co.ForTask(name) }, server)

	log.WithField("listen", ln.Addr().String()).WithField("advertise", n.advertise).Info("fanout-master running")
	if err := sdnotify.Notify(e.getenv("NOTIFY_SOCKET"), "READY=1"); err != nil {
		log.WithError(err).Warn("could not tell systemd we are ready")
	}
	return runAll(ctx, func(ctx context.Context) error { return server.Serve(ctx, ln) }, tasks.Run)
}

// masterSpeaks checks that a running master speaks protocol proto or
// later (its registration, the master key) before publish sets options
// that need it: a master that predates them would drop them and publish
// the task as plain (with --group, to every host; with --dest, at the
// task path; with --atomic, in place).
func masterSpeaks(ctx context.Context, co *coord.Client, proto int, what string) error {
	m, ok, err := co.Master(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s need a running fanout-master of protocol %d, and none is registered: start the master first, or upgrade it (a master before protocol 6 does not register, and would publish the task without them)", what, proto)
	}
	if m.Proto < proto {
		return fmt.Errorf("%s need a fanout-master of protocol %d, and the running master is %s (protocol %d): upgrade it first, or publish without them", what, proto, m.ID, m.Proto)
	}
	return nil
}

func masterPublish(ctx context.Context, args []string, e env) error {
	var c common
	var del, compress, wait, dry, atomic bool
	var keep int
	var dest, switchMode string
	var groups []string
	var timeout time.Duration
	var ex excludeFlags
	var d dryRun
	fs := newFlags(e, "publish", "fanout-master publish PATH: set the task to PATH (absolute, under the hosts' --root); a running master publishes it as a new generation.")
	c.register(fs)
	c.registerTask(fs, "publish the named task NAME (1-64 letters, digits, '.', '_', '-'), which every host holds beside the plain task and the other named ones, each with its own generation, queues, status and history; the plain task is named default")
	fs.BoolVar(&del, "delete", false, "remove files on the hosts that are not in the task tree")
	ex.register(fs, "leave paths matching PATTERN (rsync rules: /anchored, dir/, *, **, ?, [a-z]) out of the task: neither sent to nor deleted on the hosts")
	fs.BoolVar(&dry, "dry-run", false, "publish nothing: print what would move (files, bytes, per host and in all) against the generation the hosts hold. Run it on the master's host: it reads PATH under --root and asks the origin for the current manifest (--secret-file)")
	fs.StringVar(&d.root, "root", "/", "with --dry-run: the master's --root, under which PATH is read")
	fs.StringVar(&d.secretFile, "secret-file", "/etc/fanout/secret", "with --dry-run: the peer secret, to ask the origin for the current manifest")
	d.tls.register(fs)
	fs.BoolVar(&d.asJSON, "json", false, "with --dry-run: print JSON")
	fs.BoolVar(&compress, "compress", false, "hosts ask their sources for zstd-compressed chunks (format 3 generations; chunks that do not shrink go raw): for text-like trees on slow links. A minion's own --compress asks too")
	fs.StringVar(&dest, "dest", "", "write the tree to this absolute path under each host's --root instead of PATH (as gosync's -dst); minions before protocol 5 refuse such a generation")
	fs.StringArrayVar(&groups, "group", nil, "send the task to the hosts of this group only (a minion's --group; repeatable: any of them): only they pull it and only they are expected; minions before protocol 5 refuse such a generation")
	fs.BoolVar(&atomic, "atomic", false, "hosts build each generation as a release beside the live tree (unchanged files hard-linked from the current release), verify it, then switch the destination to it at once (a symlink replaced by rename); the destination becomes a symlink to DEST/../.NAME.releases/ID. Minions before protocol 6 refuse such a generation")
	fs.IntVar(&keep, "keep", coord.DefaultKeep, fmt.Sprintf("with --atomic: releases each host keeps, the live one included (1 to %d); fanout-master rollback switches back to a kept one without moving its bytes", coord.MaxKeep))
	fs.StringVar(&switchMode, "switch", "host", "with --atomic: when hosts switch to the new release: host (each as soon as its release verifies) or fleet (every host once the last one holds its release, on the master's order; hooks run after the switch)")
	fs.BoolVar(&wait, "wait", false, "wait until every expected host holds the task (exit 1 if it fails)")
	fs.DurationVar(&timeout, "timeout", 30*time.Minute, "with --wait, give up after this long")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError("publish takes exactly one PATH, got %d arguments", fs.NArg())
	}
	if err := c.checkTask("--name"); err != nil {
		return err
	}
	switch {
	case switchMode != "host" && switchMode != coord.SwitchFleet:
		return usageError("--switch %q: want host or fleet", switchMode)
	case fs.Changed("switch") && !atomic:
		return usageError("--switch says when hosts switch releases: add --atomic")
	case switchMode == "host":
		switchMode = coord.SwitchHost
	}
	if fs.Changed("keep") && !atomic {
		return usageError("--keep counts the releases of --atomic: add --atomic")
	}
	if keep < 1 || keep > coord.MaxKeep {
		return usageError("--keep %d: want 1 to %d releases (the live one included)", keep, coord.MaxKeep)
	}
	if !atomic {
		keep = 0
	}
	if dry && atomic {
		return usageError("--dry-run compares with the tree the hosts hold: drop --atomic to preview")
	}
	if dry && wait {
		return usageError("--dry-run publishes nothing to --wait for: give one of them")
	}
	path := fs.Arg(0)
	if _, err := master.CleanTask(path); err != nil {
		return usageError("publish PATH: %v", err)
	}
	if err := coord.ValidGroups("--group", groups); err != nil {
		return usageError("%v", err)
	}
	if dry && len(groups) > 0 {
		return usageError("--dry-run counts every expected host: drop --group to preview")
	}
	if dest != "" {
		var err error
		if dest, err = master.CleanTask(dest); err != nil {
			return usageError("--dest: %v", err)
		}
		if dry {
			return usageError("--dry-run compares with the tree the hosts hold at PATH: drop --dest to preview")
		}
	}
	excludes, err := ex.patterns()
	if err != nil {
		return err
	}
	c.clientName = clientName("fanout-master-publish", "")
	rdb, err := c.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	co := c.coord(rdb, 0)
	if dry {
		return d.run(ctx, co, path, del, excludes, e)
	}
	if c.task != "" {
		if err := masterSpeaks(ctx, co, coord.ProtoTasks, "--name"); err != nil {
			return err
		}
	}
	if atomic {
		if err := masterSpeaks(ctx, co, coord.ProtoAtomic, "--atomic"); err != nil {
			return err
		}
	} else if dest != "" || len(groups) > 0 {
		if err := masterSpeaks(ctx, co, coord.ProtoDest, "--dest and --group"); err != nil {
			return err
		}
	}
	before, err := co.Current(ctx)
	if err != nil {
		return err
	}
	// Listed first: a full task list refuses before any key is written
	// (the master's runner of a new task reads the key when it starts).
	if err := co.AddTask(ctx); err != nil {
		return err
	}
	if err := co.SetTask(ctx, path, coord.TaskOptions{Delete: del, Compress: compress, Exclude: excludes, Dest: dest, Groups: groups, Atomic: keep, Switch: switchMode}); err != nil {
		return fmt.Errorf("set task: %w", err)
	}
	what := "task"
	if c.task != "" {
		what = "task " + c.task
	}
	fmt.Fprintf(e.stdout, "%s set to %s (delete=%v, compress=%v", what, printable(path, maxLine), del, compress)
	if atomic {
		fmt.Fprintf(e.stdout, ", atomic, keep %d", keep)
		if switchMode == coord.SwitchFleet {
			fmt.Fprint(e.stdout, ", switch fleet")
		}
	}
	if dest != "" {
		fmt.Fprintf(e.stdout, ", dest %s", printable(dest, maxLine))
	}
	if len(groups) > 0 {
		fmt.Fprintf(e.stdout, ", groups %s", strings.Join(groups, ","))
	}
	if len(excludes) > 0 {
		fmt.Fprintf(e.stdout, ", %d exclude patterns", len(excludes))
	}
	fmt.Fprintln(e.stdout, ")")
	if !wait {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return waitTask(wctx, co, before.ID, e)
}

// waitTask waits for the generation after prev to finish, printing progress.
func waitTask(ctx context.Context, co *coord.Client, prev int64, e env) error {
	last := ""
	for {
		st, err := co.Status(ctx)
		if err == nil && st.Generation.ID > prev {
			line := waitLine(st, st.Now)
			if line != last {
				fmt.Fprintln(e.stdout, line)
				last = line
			}
			switch st.State {
			case coord.StateDone:
				return nil
			case coord.StateFailed:
				return failedError(st)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting for the task: %w (see fanout-master status)", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// failedError is publish --wait's error for a failed generation.
func failedError(st coord.Status) error {
	return fmt.Errorf("generation %d failed: %s", st.Generation.ID, printable(st.Generation.Error, maxLine))
}

func masterStatus(ctx context.Context, args []string, e env) error {
	var c common
	var asJSON, follow, watch bool
	var grace, interval time.Duration
	fs := newFlags(e, "status", `fanout-master status [NAME]: show every task (or task NAME: the plain task is
named default), its generation, and where every host stands.`)
	c.register(fs)
	fs.BoolVar(&asJSON, "json", false, "print one JSON object instead of a table: task NAME's, or the plain task's, which lists the named tasks in \"tasks\"")
	fs.BoolVar(&watch, "watch", false, "redraw the status and a progress bar for the whole task until interrupted")
	fs.DurationVar(&interval, "interval", time.Second, "with --watch, how often to redraw")
	fs.BoolVar(&follow, "follow", false, "after the status, print protocol events as they happen (claims, finishes, failures, lease expiries) until interrupted: of task NAME, or of the plain task")
	fs.DurationVar(&grace, "host-grace", 30*time.Second, "a host whose last heartbeat is older than this is no longer expected")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return usageError("status takes at most one task NAME, got %d arguments", fs.NArg())
	}
	c.task = fs.Arg(0)
	one := c.task != ""
	if err := c.checkTask("status NAME"); err != nil {
		return err
	}
	c.clientName = clientName("fanout-master-status", "")
	rdb, err := c.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	co := c.coord(rdb, grace)
	if watch {
		return watchStatus(ctx, co, one, interval, e)
	}
	sts, err := readStatuses(ctx, co, one)
	if err != nil {
		return err
	}
	if asJSON {
		if err := writeStatusJSON(e.stdout, sts[0].st, sts[0].st.Now, sts[0].named...); err != nil {
			return err
		}
	} else {
		writeStatuses(e.stdout, sts, time.Time{})
	}
	if follow {
		return followEvents(ctx, co, e)
	}
	return nil
}

// taskStatus is one task's status, as status shows it.
type taskStatus struct {
	name  string
	st    coord.Status
	named []string // the named tasks, with the plain task's status
}

// readStatuses reads the status of co's task (one), or of the plain task
// and then every named task.
func readStatuses(ctx context.Context, co *coord.Client, one bool) ([]taskStatus, error) {
	if one {
		st, err := co.Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("read status of task %s: %w", co.Task(), err)
		}
		return []taskStatus{{name: co.Task(), st: st}}, nil
	}
	names, err := co.TaskNames(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]taskStatus, 0, 1+len(names))
	for i, name := range append([]string{coord.DefaultTask}, names...) {
		st, err := co.ForTask(name).Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("read status of task %s: %w", name, err)
		}
		ts := taskStatus{name: name, st: st}
		if i == 0 {
			ts.named = names
		}
		out = append(out, ts)
	}
	return out, nil
}

// writeStatuses prints each task's status; a header names each task when
// there are named ones. now, when not zero, is the time to measure to
// (else each status's Redis time).
func writeStatuses(w io.Writer, sts []taskStatus, now time.Time) {
	headers := len(sts) > 1 || (len(sts) == 1 && sts[0].name != coord.DefaultTask)
	for i, ts := range sts {
		if headers {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "== task %s ==\n", ts.name)
		}
		at := now
		if at.IsZero() {
			at = ts.st.Now
		}
		writeStatusText(w, ts.st, at)
	}
}

// watchStatus redraws the status table under a progress bar until ctx ends.
func watchStatus(ctx context.Context, co *coord.Client, one bool, every time.Duration, e env) error {
	for {
		sts, err := readStatuses(ctx, co, one)
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now() // Redis unreachable: the error is shown
		if err == nil {
			now = sts[0].st.Now
		}
		fmt.Fprint(e.stdout, "\033[H\033[2J") // home, clear screen
		if err != nil {
			fmt.Fprintf(e.stdout, "%s  %s\n", now.Format(time.TimeOnly), printable(err.Error(), maxLine))
		} else {
			fmt.Fprintf(e.stdout, "%s", now.Format(time.TimeOnly))
			for _, ts := range sts {
				label := ""
				if len(sts) > 1 {
					label = ts.name + " "
				}
				fmt.Fprintf(e.stdout, "  %s%s", label, progressLine(toJSON(ts.st, now), 40))
			}
			fmt.Fprint(e.stdout, "\n\n")
			writeStatuses(e.stdout, sts, now)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(every):
		}
	}
}

// followEvents prints events as they arrive until ctx ends.
func followEvents(ctx context.Context, co *coord.Client, e env) error {
	fmt.Fprintln(e.stdout, "\nevents (Ctrl-C to stop):")
	last := "$"
	for {
		evs, err := co.Events(ctx, last, 2*time.Second)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		for _, ev := range evs {
			writeEvent(e.stdout, ev)
			last = ev.ID
		}
	}
}

// runAll runs fns until ctx is cancelled or one of them fails; it cancels
// the others then and waits for all of them.
func runAll(ctx context.Context, fns ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(fns))
	for _, fn := range fns {
		go func() { errc <- fn(ctx) }()
	}
	var first error
	for range fns {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}
