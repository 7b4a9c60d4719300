// Package cli wires fanout's command lines (flags, environment, logging,
// Redis) to the master and minion packages. The binaries' main functions
// only call Master or Minion.
package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/fanout/fanout/internal/bwlimit"
	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/metrics"
	"github.com/fanout/fanout/internal/peer"
	"github.com/fanout/fanout/internal/redisurl"
	"github.com/fanout/fanout/internal/statedir"
)

// Build information, set by the linker (see the Makefile).
var (
	Version = "dev"
	Commit  = "none"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// errUsage marks a command-line mistake: exit code 2.
var errUsage = errors.New("usage")

// usageError wraps a message as a usage error.
func usageError(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errUsage, fmt.Sprintf(format, a...))
}

// env is how commands read the environment; tests pass their own.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

func versionLine(prog string) string {
	return fmt.Sprintf("%s %s (commit %s, %s)", prog, Version, Commit, runtime.Version())
}

// bindEnv sets every flag not given on the command line from FANOUT_<NAME>
// (dashes become underscores), so systemd environment files work.
func bindEnv(fs *pflag.FlagSet, getenv func(string) string) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := "FANOUT_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v := getenv(name); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = usageError("%s=%q: %v", name, v, serr)
			}
		}
	})
	return err
}

// common holds the flags every long-running or Redis-using command shares.
type common struct {
	redisURL  string
	redisCA   string
	prefix    string
	logLevel  string
	logFormat string
	flags     *pflag.FlagSet // to tell a --key-prefix given from its default

	// Set by the command before redis():
	pool       int    // connections in the Redis pool; 0: go-redis's default
	clientName string // CLIENT SETNAME of every connection; empty: none

	target redisurl.Target // the parsed --redis, set by redis()

	// task is the task the command is about (--name; "": the plain
	// task), for commands that registerTask.
	task string
}

// clusterPrefix is --key-prefix's default on Redis Cluster: every key in
// the hash slot of "fanout".
const clusterPrefix = "{fanout}:"

func (c *common) register(fs *pflag.FlagSet) {
	c.flags = fs
	fs.StringVar(&c.redisURL, "redis", "redis://127.0.0.1:6379/0", "Redis URL: redis:// or rediss:// (TLS) for one server, user:password@ for ACLs, /N for the database; redis+sentinel://host:port,.../MASTERNAME[/N] for Sentinel; redis+cluster://host:port,... for Cluster (rediss+ for TLS)")
	fs.StringVar(&c.redisCA, "redis-ca", "", "PEM CA bundle the Redis servers' TLS certificates are checked against (default: the system roots); needs a rediss URL")
	fs.StringVar(&c.prefix, "key-prefix", "", "prefix for every Redis key; on Redis Cluster it must hold a hash tag, and defaults to "+clusterPrefix)
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
}

func (c *common) logger(w io.Writer) (*logrus.Logger, error) {
	log := logrus.New()
	log.SetOutput(w)
	lvl, err := logrus.ParseLevel(c.logLevel)
	if err != nil {
		return nil, usageError("--log-level %q: use debug, info, warn or error", c.logLevel)
	}
	log.SetLevel(lvl)
	// Milliseconds: a pull, a claim, a lead change happen within one
	// second of each other, and Redis's events are in milliseconds too.
	const stamp = "2006-01-02T15:04:05.000Z07:00"
	switch c.logFormat {
	case "text":
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: stamp})
	case "json":
		log.SetFormatter(&logrus.JSONFormatter{TimestampFormat: stamp})
	default:
		return nil, usageError("--log-format %q: use text or json", c.logFormat)
	}
	return log, nil
}

// redis parses --redis and --redis-ca, connects and checks the connection,
// so a wrong URL or an unreachable server is one clear line at start-up.
// On Cluster it also settles --key-prefix (see clusterKeyPrefix).
func (c *common) redis(ctx context.Context) (redis.UniversalClient, error) {
	target, err := redisurl.Parse(c.redisURL)
	if err != nil {
		return nil, usageError("%v", err)
	}
	if c.redisCA != "" {
		if !target.TLS {
			return nil, usageError("--redis-ca %s is set but --redis %s does not use TLS: use rediss://, rediss+sentinel:// or rediss+cluster://, or drop --redis-ca", c.redisCA, redisurl.Redact(c.redisURL))
		}
		pool, err := readCA(c.redisCA)
		if err != nil {
			return nil, fmt.Errorf("--redis-ca %s: %w; point it at the PEM CA that signed the Redis servers' certificates", c.redisCA, err)
		}
		target.Options.TLSConfig.RootCAs = pool
	}
	if target.Kind == redisurl.Cluster {
		if c.prefix, err = clusterKeyPrefix(c.prefix, c.flags != nil && c.flags.Changed("key-prefix")); err != nil {
			return nil, err
		}
	}
	o := target.Options
	if c.pool > 0 {
		o.PoolSize = c.pool
		o.PoolTimeout = 30 * time.Second // wait for the connection rather than fail
		// Pipelines share that pool: go-redis's own pipeline pool would
		// open connections of its own.
		o.PipelinePoolSize = -1
	}
	if o.ClientName == "" { // a client_name in the URL wins
		o.ClientName = c.clientName
	}
	c.target = target
	rdb := target.Client()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		where := redisurl.Redact(c.redisURL)
		if target.Kind != redisurl.Single {
			where += " (" + target.Kind.String() + ")"
		}
		return nil, fmt.Errorf("cannot reach Redis at %s: %w (check --redis or FANOUT_REDIS, and that Redis is up)", where, err)
	}
	return rdb, nil
}

// clusterKeyPrefix is the key prefix on Redis Cluster: given says whether
// --key-prefix was set (flag or environment). Unset, it is clusterPrefix;
// set, it must hold a hash tag, or the scripts' keys would fall in
// different slots.
func clusterKeyPrefix(prefix string, given bool) (string, error) {
	if !given {
		return clusterPrefix, nil
	}
	if _, ok := (coord.Keys{Prefix: prefix}).HashTag(); !ok {
		return "", usageError("--key-prefix %q has no hash tag: on Redis Cluster every fanout key must be in one hash slot; use a prefix with a non-empty {tag}, such as %s (the default on Cluster)", prefix, clusterPrefix)
	}
	return prefix, nil
}

// clientName is a CLIENT SETNAME value for a process of prog (with host
// id, when not empty): Redis allows no spaces or control characters, so
// CLIENT LIST can tell fanout's connections apart.
func clientName(prog, id string) string {
	name := prog
	if id != "" {
		name += ":" + id
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r > '~' {
			return '_'
		}
		return r
	}, name)
}

func (c *common) coord(rdb redis.UniversalClient, grace time.Duration) *coord.Client {
	return coord.New(rdb, coord.Config{Prefix: c.prefix, DB: c.target.DB(), HostGrace: grace}).ForTask(c.task)
}

// registerTask adds --name, the task a command is about.
func (c *common) registerTask(fs *pflag.FlagSet, what string) {
	fs.StringVar(&c.task, "name", "", what+" (default: the plain task, the task key; see publish --name)")
}

// checkTask validates the task name, given as what (--name, or NAME for
// an argument).
func (c *common) checkTask(what string) error {
	if c.task == "" || c.task == coord.DefaultTask {
		c.task = ""
		return nil
	}
	if err := coord.ValidTaskName(what, c.task); err != nil {
		return usageError("%v", err)
	}
	return nil
}

// taskLabel names task name for messages: "" for the plain task, " (task
// NAME)" for a named one.
func taskLabel(name string) string {
	if name == "" || name == coord.DefaultTask {
		return ""
	}
	return " (task " + name + ")"
}

// quietRedis silences go-redis's own log lines ("connection pool: failed
// to dial after 5 attempts ..."), which it writes to stderr by itself: every
// Redis error reaches fanout's code, which reports it once, with what to
// do. Without this an unreachable Redis printed five lines for one fault.
func quietRedis() { redis.SetLogger(discardLogger{}) }

type discardLogger struct{}

func (discardLogger) Printf(context.Context, string, ...any) {}

// node holds the flags of a host that serves peers: master run, minion run,
// sync and serve.
type node struct {
	common
	tls                  tlsFlags
	serverTLS, clientTLS *tls.Config // from the tls flags; nil: plain HTTP
	listen               string
	advertise            string
	id                   string
	secretFile           string
	root                 string
	stateDir             string
	poll                 time.Duration
	uploads              int
	grace                time.Duration
	lease                time.Duration
	bwlimit              string
	rate                 int64 // parsed bwlimit, bytes per second
	zone                 string
	compressWorkers      int
}

func (n *node) register(fs *pflag.FlagSet, defaultState string) {
	n.common.register(fs)
	n.tls.register(fs)
	fs.StringVar(&n.listen, "listen", ":7070", "address the peer server listens on")
	fs.StringVar(&n.advertise, "advertise", "", "host:port other hosts use to reach this one (default: hostname and the --listen port)")
	fs.StringVar(&n.id, "id", "", "host id in Redis (default: the hostname)")
	fs.StringVar(&n.secretFile, "secret-file", "/etc/fanout/secret", "file holding the shared peer secret, one a line: the first signs, any verifies (not world-readable)")
	fs.StringVar(&n.root, "root", "/", "task paths resolve under this directory")
	fs.StringVar(&n.stateDir, "state-dir", defaultState, "directory for held state and the hash cache")
	fs.DurationVar(&n.poll, "poll", time.Second, "how often to look at Redis")
	fs.IntVar(&n.uploads, "max-uploads", 1, "pullers this host serves at once, 0 to 64 (1 makes chains and doubles the sources each round; 0: a minion that never serves)")
	fs.DurationVar(&n.grace, "host-grace", 30*time.Second, "a host whose last heartbeat is older than this is no longer expected")
	fs.DurationVar(&n.lease, "lease", 15*time.Second, "lease on a claimed source, renewed while pulling every half of it (so that at least 7.5 s, or two thirds of a shorter lease, remain); a crashed puller's source returns after it")
	fs.StringVar(&n.zone, "zone", "", "this host's zone (a rack, a room, a site): claims take a source of the same zone when one is free, and status counts the bytes that cross zones; 1-64 letters, digits, '.', '_', '-' (empty: no zone)")
	fs.StringVar(&n.bwlimit, "bwlimit", "0", "cap on this host's upload and download rate, each (rsync style: 16M = 16 MiB/s, a bare number is KiB/s; 0 = no cap)")
	fs.IntVar(&n.compressWorkers, "compress-workers", 0, "chunks this host compresses at once for peers that ask (--compress); a chunk that finds all busy goes raw (0: half the cores, at least 1; -1: never compress)")
}

// coordClient is the Redis protocol client with this node's grace and lease.
func (n *node) coordClient(rdb redis.UniversalClient) *coord.Client {
	return coord.New(rdb, coord.Config{Prefix: n.prefix, DB: n.target.DB(), HostGrace: n.grace, LeaseTTL: n.lease, Zone: n.zone})
}

// check validates the node flags and fills defaults that need the system.
// writeRoot says whether this command writes under --root (a pulling
// minion) or only reads it (the master, a serve daemon).
func (n *node) check(writeRoot bool) error {
	if n.id == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("find hostname for --id: %w", err)
		}
		n.id = h
	}
	if strings.ContainsAny(n.id, " #/\n\t") {
		return usageError("--id %q: use a name without spaces, '#' or '/'", n.id)
	}
	fi, err := os.Stat(n.root)
	if err != nil || !fi.IsDir() {
		return usageError("--root %q is not a directory: create it or point --root at an existing one", n.root)
	}
	if writeRoot {
		if err := unix.Access(n.root, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("--root %q is not writable by this user (uid %d): %w; fix its owner or permissions, or point --root elsewhere", n.root, os.Geteuid(), err)
		}
	} else if err := unix.Access(n.root, unix.R_OK|unix.X_OK); err != nil {
		return fmt.Errorf("--root %q is not readable by this user (uid %d): %w; fix its owner or permissions, or point --root elsewhere", n.root, os.Geteuid(), err)
	}
	if n.uploads < 0 || n.uploads > coord.MaxUploads {
		return usageError("--max-uploads %d: use 0 (never serve) to %d", n.uploads, coord.MaxUploads)
	}
	if err := coord.ValidZone("--zone", n.zone); err != nil {
		return usageError("%v", err)
	}
	if n.compressWorkers < -1 {
		return usageError("--compress-workers %d: use -1 (never compress), 0 (half the cores) or a count", n.compressWorkers)
	}
	rate, err := bwlimit.Parse(n.bwlimit)
	if err != nil {
		return usageError("--bwlimit: %v", err)
	}
	n.rate = rate
	if n.serverTLS, n.clientTLS, err = n.tls.configs(); err != nil {
		return err
	}
	if n.lease < time.Second {
		return usageError("--lease %s: use at least 1s", n.lease)
	}
	if n.poll <= 0 {
		return usageError("--poll %s: use a positive duration such as 1s", n.poll)
	}
	if err := os.MkdirAll(n.stateDir, 0o700); err != nil {
		return fmt.Errorf("create --state-dir %s: %w; point --state-dir at a directory this user may create", n.stateDir, err)
	}
	if err := unix.Access(n.stateDir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("--state-dir %q is not writable by this user (uid %d): %w; fix its owner or permissions, or point --state-dir elsewhere", n.stateDir, os.Geteuid(), err)
	}
	return nil
}

// listenPeer opens the peer listener and works out the advertised address.
func (n *node) listenPeer() (net.Listener, error) {
	ln, err := net.Listen("tcp", n.listen)
	if err != nil {
		return nil, fmt.Errorf("listen on --listen %s: %w (is another fanout running? pick another port)", n.listen, err)
	}
	if n.serverTLS != nil {
		ln = tls.NewListener(ln, n.serverTLS)
	}
	if n.advertise == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		host, herr := os.Hostname()
		if herr != nil {
			host = "127.0.0.1"
		}
		n.advertise = net.JoinHostPort(host, port)
	}
	return ln, nil
}

// report prints err for the operator and maps it to an exit code.
func report(e env, prog string, err error) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(e.stderr, "%s: %v\n", prog, err)
	if errors.Is(err, errUsage) {
		return exitUsage
	}
	return exitFailure
}

// newPeerServer builds a peer server that exports mx on /metrics and counts
// served bytes and refused requests into it.
func newPeerServer(secrets [][]byte, log logrus.FieldLogger, mx *metrics.Metrics, upload *bwlimit.Limiter, now func() time.Time, compressWorkers int) *peer.Server {
	return peer.NewServer(peer.ServerConfig{
		Secrets: secrets, Log: log, Metrics: mx.Handler(), Upload: upload, Now: now, CompressWorkers: compressWorkers,
		Served:       func(n int64) { mx.BytesServed.Add(float64(n)) },
		Unauthorized: mx.Unauthorized.Inc,
	})
}

// stateLocks are the state directory locks a command holds.
type stateLocks []*statedir.Lock

// lockState takes the state directory's locks for a command: the writer
// lock exclusively, or (reader) the server lock shared; server also takes
// the server lock exclusively, for a process that writes and serves.
func lockState(dir, what string, reader, server bool) (stateLocks, error) {
	if reader {
		l, err := statedir.Acquire(dir, what, true)
		if err != nil {
			return nil, err
		}
		return stateLocks{l}, nil
	}
	w, err := statedir.Acquire(dir, what, false)
	if err != nil {
		return nil, err
	}
	if !server {
		return stateLocks{w}, nil
	}
	s, err := statedir.AcquireServer(dir, what)
	if err != nil {
		w.Release()
		return nil, err
	}
	return stateLocks{w, s}, nil
}

func (ls stateLocks) release() {
	for _, l := range ls {
		l.Release()
	}
}
