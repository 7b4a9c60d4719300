package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/hook"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/minion"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/sdnotify"
)

const minionUsage = `fanout-minion: hold a verified copy of the current task and serve it to peers.

Usage:
  fanout-minion run [flags]     daemon: serve peers, poll Redis, pull each new generation
  fanout-minion sync [flags]    one shot (cron, systemd timer): exit 0 once this host
                                holds the current generation, 1 otherwise
  fanout-minion serve [flags]   peer server only, for hosts that pull with sync
  fanout-minion --version

Every flag can also be set in the environment as FANOUT_<FLAG>, e.g.
FANOUT_SECRET_FILE=/etc/fanout/secret. Run "fanout-minion COMMAND --help" for
a command's flags.
`

// Minion runs the fanout-minion command line and returns its exit code.
func Minion(ctx context.Context, args []string) int {
	quietRedis()
	return minionMain(ctx, args, env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv})
}

func minionMain(ctx context.Context, args []string, e env) int {
	const prog = "fanout-minion"
	if len(args) == 0 {
		fmt.Fprint(e.stderr, minionUsage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "run", "sync", "serve":
		err = minionCommand(ctx, args[0], args[1:], e)
	case "--version", "version":
		fmt.Fprintln(e.stdout, versionLine(prog))
	case "-h", "--help", "help":
		fmt.Fprint(e.stdout, minionUsage)
	default:
		err = usageError("unknown command %q (want run, sync or serve)", args[0])
	}
	if errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	return report(e, prog, err)
}

var minionHelp = map[string]string{
	"run":   "fanout-minion run: serve peers, heartbeat, and pull each new generation of the task.",
	"sync":  "fanout-minion sync: pull the current generation once and exit 0 when this host holds it. The host becomes a source only if a serve daemon answers at --advertise.",
	"serve": "fanout-minion serve: serve this host's verified copy to peers and heartbeat; pair it with sync under cron or a timer.",
}

func minionCommand(ctx context.Context, cmd string, args []string, e env) error {
	var n node
	var workers, sources int
	var heartbeat, timeout time.Duration
	var pipeline, watch, numericIDs, compress, bypass bool
	var connectTimeout, stallTimeout, verifyEvery, scanEvery time.Duration
	var onSync, groups []string
	var hookDir string
	var hookTimeout time.Duration
	fs := newFlags(e, cmd, minionHelp[cmd])
	n.register(fs, "/var/lib/fanout/minion")
	fs.IntVar(&workers, "workers", 4, "files fetched at once")
	fs.IntVar(&sources, "sources", 3, "sources one pull takes chunks from at once (format 3 generations), each claimed with its own lease")
	fs.BoolVar(&bypass, "bypass-slow-relays", true, "when a rescue source outruns this host's source, a partial relay, three times, take the relay's place on its source and move the relay to the end of a chain, where its slow uplink holds nobody back; false: only let the rescue source lead")
	if cmd != "serve" {
		fs.BoolVar(&compress, "compress", false, "ask sources for zstd-compressed chunks (format 3 generations; a chunk that does not shrink comes raw, a source too old to compress sends all raw): for text-like trees on slow links. A task published with --compress asks for it whatever this says")
		fs.StringArrayVar(&groups, "group", nil, "a host group this host is in (repeatable): a task published with --group is pulled only by the hosts of its groups; a task without one by every host. 1-64 letters, digits, '.', '_', '-'")
		fs.BoolVar(&numericIDs, "numeric-ids", false, "when running as root, give files the uid and gid the manifest carries, not the local ids of its user and group names (as rsync --numeric-ids)")
	}
	fs.DurationVar(&connectTimeout, "connect-timeout", peer.DefaultDialTimeout, "give up on a peer that does not connect, or answer a request's headers, within this")
	fs.DurationVar(&stallTimeout, "stall-timeout", peer.DefaultStallTimeout, "give up on a peer that sends no byte for this long mid-transfer (then resume from another); a partial source that answers without the chunk asked, waiting for its own deep in a chain, is asked again instead")
	if cmd == "run" {
		fs.BoolVar(&pipeline, "pipeline", true, "serve files to other hosts while still receiving them; false: become a source only once the whole generation is held (whole-file doubling)")
		fs.BoolVar(&watch, "watch", true, "watch the held tree with inotify and repair drift (a file deleted or changed by hand) within seconds; false: find drift by the --verify-every pass only")
		fs.DurationVar(&verifyEvery, "verify-every", 10*time.Minute, "verify the whole held tree against its manifest this often even when inotify saw no change")
		fs.DurationVar(&scanEvery, "scan-every", 10*time.Second, "verify the held tree this often when inotify cannot watch all of it (watch limit reached)")
	}
	if cmd != "serve" {
		fs.StringArrayVar(&onSync, "on-sync", nil, "NAME=COMMAND: once this host holds a new generation of task NAME (the plain task is default), verified, run COMMAND with sh -c; repeatable, one per task. The hook gets FANOUT_TASK, FANOUT_GENERATION, FANOUT_DIGEST, FANOUT_PATH, FANOUT_TASK_PATH, FANOUT_HOST, FANOUT_CHANGED, and the changed paths on stdin, each ended by a NUL byte. Never taken from Redis")
		fs.StringVar(&hookDir, "hook-dir", "", "directory of hooks: the executable named after a task (default for the plain task) runs as --on-sync does, without a shell; --on-sync wins for the same task. Neither it nor its hooks may be writable by group or others")
		fs.DurationVar(&hookTimeout, "hook-timeout", hook.DefaultTimeout, "kill a hook (its whole process group) that runs longer than this; it then counts as failed")
	}
	fs.DurationVar(&heartbeat, "heartbeat", 10*time.Second, "how often to tell Redis this host is alive")
	if cmd == "sync" {
		fs.DurationVar(&timeout, "timeout", 10*time.Minute, "give up (exit 1) after this long")
	}
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError("%s takes no arguments, got %q", cmd, fs.Args())
	}
	if err := n.check(cmd != "serve"); err != nil {
		return err
	}
	if err := coord.ValidGroups("--group", groups); err != nil {
		return usageError("%v", err)
	}
	if verifyEvery < 0 || scanEvery < 0 {
		return usageError("--verify-every and --scan-every must be positive durations such as 10m")
	}
	var hooks *hook.Set
	if cmd != "serve" {
		if hookTimeout <= 0 {
			return usageError("--hook-timeout %s: give a positive duration such as 5m", hookTimeout)
		}
		var err error
		if hooks, err = hook.NewSet(onSync, hookDir, hookTimeout); err != nil {
			return usageError("%v", err)
		}
	}
	log, err := n.logger(e.stderr)
	if err != nil {
		return err
	}
	// One writer per state directory: run and sync change what it records,
	// serve only reads it (and shares it with sync, as the units pair them).
	locks, err := lockState(n.stateDir, "fanout-minion "+cmd, cmd == "serve", cmd == "run")
	if err != nil {
		return err
	}
	defer locks.release()
	secrets, err := peer.LoadSecrets(n.secretFile)
	if err != nil {
		return fmt.Errorf("--secret-file: %w", err)
	}
	// One pooled connection, and one for the generations subscription:
	// a fleet of N minions needs 2N of Redis's maxclients (see the
	// README's Operations for Sentinel and Cluster).
	n.pool = 1
	n.clientName = clientName("fanout-minion", n.id)
	rdb, err := n.redis(ctx)
	if err != nil {
		return err
	}
	defer rdb.Close()
	mx := metrics.New()
	co := n.coordClient(rdb)
	// Peers sign and check requests with the clock corrected to Redis
	// TIME: hosts whose clocks disagree still talk.
	server := newPeerServer(secrets, log, mx, bwlimit.New(n.rate), co.Now, n.compressWorkers)
	if connectTimeout <= 0 || stallTimeout <= 0 {
		return usageError("--connect-timeout and --stall-timeout must be positive durations such as 5s")
	}
	client := peer.NewClient(peer.ClientConfig{Secrets: secrets, DialTimeout: connectTimeout, StallTimeout: stallTimeout, TLS: n.clientTLS, Now: co.Now})
	cfg := minion.Config{
		ID: n.id, Advertise: n.advertise, Root: n.root, StateDir: n.stateDir, Uploads: n.uploads,
		Source: cmd == "run" && n.uploads > 0, Pipeline: pipeline, Poll: n.poll, Heartbeat: heartbeat, Workers: workers,
		Version: Version, Log: log.WithField("host", n.id), Metrics: mx,
		Download: bwlimit.New(n.rate), NoWatch: cmd == "run" && !watch, VerifyEvery: verifyEvery, ScanEvery: scanEvery, NumericIDs: numericIDs, Sources: sources, Bypass: bypass,
		Zone:     n.zone,
		Groups:   groups,
		Compress: compress,
	}
	if !hooks.Empty() {
		cfg.Hooks = hooks
	}
	// Every task: the plain one and each named one of the task list.
	forTask := func(name string) minion.Coordinator { return co.ForTask(name) }
	if cmd == "sync" {
		if cfg.Advertise == "" {
			return usageError("sync needs --advertise: the address of this host's serve daemon")
		}
		cfg.Source = n.uploads > 0 && minion.PeerAnswers(ctx, cfg.Advertise, n.clientTLS)
		sctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		tasks := minion.NewTasks(cfg, co, forTask, server, client)
		if _, err := tasks.Default(); err != nil {
			return err
		}
		return tasks.Sync(sctx)
	}
	ln, err := n.listenPeer()
	if err != nil {
		return err
	}
	cfg.Advertise = n.advertise
	tasks := minion.NewTasks(cfg, co, forTask, server, client)
	if _, err := tasks.Default(); err != nil {
		ln.Close()
		return err
	}
	log.WithField("listen", ln.Addr().String()).WithField("advertise", n.advertise).Infof("fanout-minion %s running", cmd)
	if err := sdnotify.Notify(e.getenv("NOTIFY_SOCKET"), "READY=1"); err != nil {
		log.WithError(err).Warn("could not tell systemd we are ready")
	}
	serve := func(ctx context.Context) error { return server.Serve(ctx, ln) }
	if cmd == "serve" {
		return runAll(ctx, serve, tasks.Serve)
	}
	return runAll(ctx, serve, tasks.Run)
}
