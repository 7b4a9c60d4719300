// Package redisurl reads fanout's --redis URL, which names one Redis
// server, a primary watched by Redis Sentinel, or a Redis Cluster, into
// go-redis options for a redis.UniversalClient:
//
//	redis://[user:pass@]host[:port][/DB]            one server (go-redis's own URL, query options included)
//	rediss://...                                     the same over TLS
//	unix://[user:pass@]/path/to/redis.sock[?db=N]    one server on a Unix socket
//	redis+sentinel://[user:pass@]host:port[,host:port...]/MASTERNAME[/DB][?sentinel_password=P&sentinel_username=U]
//	rediss+sentinel://...                            the same over TLS, to the sentinels and the data nodes
//	redis+cluster://[user:pass@]host:port[,host:port...]
//	rediss+cluster://...                             the same over TLS
//
// On Sentinel the user and password of the URL are those of the primary
// and its replicas; the sentinels' own, when they have one, are the query
// parameters sentinel_username and sentinel_password. Hosts listed are
// seeds: the client learns the primary from the sentinels, and the other
// cluster nodes from the ones listed.
package redisurl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Kind is the kind of deployment a URL names.
type Kind int

// The kinds of deployment.
const (
	Single   Kind = iota // one server (or a primary behind a proxy)
	Sentinel             // a primary and its replicas, watched by Redis Sentinel
	Cluster              // Redis Cluster
)

// String names k as the README does.
func (k Kind) String() string {
	switch k {
	case Sentinel:
		return "Sentinel"
	case Cluster:
		return "Cluster"
	}
	return "single server"
}

// Target is a parsed --redis URL.
type Target struct {
	Kind Kind
	// TLS says the URL asks for TLS (rediss, rediss+sentinel,
	// rediss+cluster); Options.TLSConfig is then set.
	TLS bool
	// Options builds the client (redis.NewUniversalClient): a Sentinel
	// target sets MasterName, a Cluster target IsClusterMode.
	Options *redis.UniversalOptions
}

// DB is the database number the target selects (always 0 on Cluster).
func (t Target) DB() int { return t.Options.DB }

// Client returns the client for t: a *redis.Client for one server, a
// failover *redis.Client for Sentinel, a *redis.ClusterClient for Cluster.
//
// A Cluster client reloads its slot map as soon as a command fails for
// want of a connection: go-redis reloads it on a MOVED reply or once a
// minute, and a primary that was killed sends no MOVED, so its clients
// would dial it for up to a minute after its replica took over.
func (t Target) Client() redis.UniversalClient {
	if t.Kind != Cluster {
		return redis.NewUniversalClient(t.Options)
	}
	cc := redis.NewClusterClient(t.Options.Cluster())
	cc.AddHook(reloadOnConnError{cc})
	return cc
}

// reloadOnConnError is a hook on a Cluster client that reloads its slot
// map when a command fails without a reply from Redis (a refused or broken
// connection, a timeout): the node it dialled may have been failed over.
type reloadOnConnError struct{ cc *redis.ClusterClient }

func (h reloadOnConnError) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h reloadOnConnError) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.check(ctx, err)
		return err
	}
}

func (h reloadOnConnError) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		h.check(ctx, err)
		return err
	}
}

// check reloads the slot map when err came from the network, not from
// Redis (an error reply, a nil) nor from the caller (a cancelled context).
func (h reloadOnConnError) check(ctx context.Context, err error) {
	var reply redis.Error
	if err == nil || errors.As(err, &reply) || ctx.Err() != nil {
		return
	}
	h.cc.ReloadState(ctx)
}

// Examples of each form, for error messages.
const (
	ExampleSingle   = "redis://127.0.0.1:6379/0"
	ExampleSentinel = "redis+sentinel://:password@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster/0"
	ExampleCluster  = "redis+cluster://:password@10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379"
)

// Default ports when a host of a Sentinel or Cluster URL has none.
const (
	sentinelPort = "26379"
	redisPort    = "6379"
)

// Parse reads raw. Its errors name the URL with the password hidden (see
// Redact), say what is wrong, and give an example of the form.
func Parse(raw string) (Target, error) {
	scheme, _, ok := strings.Cut(raw, "://")
	if !ok {
		return Target{}, fail(raw, "no scheme", ExampleSingle)
	}
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		return parseSingle(raw)
	case "redis+sentinel", "rediss+sentinel":
		return parseMulti(raw, Sentinel)
	case "redis+cluster", "rediss+cluster":
		return parseMulti(raw, Cluster)
	}
	return Target{}, fail(raw, fmt.Sprintf("unknown scheme %q: use redis, rediss, unix, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster", scheme), ExampleSingle)
}

// fail is Parse's error for raw: what is wrong, and an example.
func fail(raw, what, example string) error {
	return fmt.Errorf("--redis %s: %s (example: %s)", Redact(raw), what, example)
}

// reason is what a parser's err says is wrong, without the URL that
// url.Error quotes (password included): fail names the URL, redacted.
func reason(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return strings.TrimPrefix(err.Error(), "redis: ")
}

// parseSingle reads a URL of one server with go-redis's own parser, so
// every query option it knows keeps working.
func parseSingle(raw string) (Target, error) {
	o, err := redis.ParseURL(raw)
	if err != nil {
		return Target{}, fail(raw, reason(err), ExampleSingle)
	}
	u := &redis.UniversalOptions{
		Addrs: []string{o.Addr}, ClientName: o.ClientName, DB: o.DB, Protocol: o.Protocol,
		Username: o.Username, Password: o.Password,
		MaxRetries: o.MaxRetries, MinRetryBackoff: o.MinRetryBackoff, MaxRetryBackoff: o.MaxRetryBackoff,
		DialTimeout: o.DialTimeout, DialerRetries: o.DialerRetries, DialerRetryTimeout: o.DialerRetryTimeout,
		ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout, ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		PoolFIFO: o.PoolFIFO, PoolSize: o.PoolSize, PoolTimeout: o.PoolTimeout, MaxConcurrentDials: o.MaxConcurrentDials,
		MinIdleConns: o.MinIdleConns, MaxIdleConns: o.MaxIdleConns, MaxActiveConns: o.MaxActiveConns,
		ConnMaxIdleTime: o.ConnMaxIdleTime, ConnMaxLifetime: o.ConnMaxLifetime, ConnMaxLifetimeJitter: o.ConnMaxLifetimeJitter,
		PipelinePoolSize: o.PipelinePoolSize, PipelineReadBufferSize: o.PipelineReadBufferSize, PipelineWriteBufferSize: o.PipelineWriteBufferSize,
		DisableIdentity: o.DisableIdentity, IdentitySuffix: o.IdentitySuffix,
		TLSConfig: o.TLSConfig,
	}
	if o.Network == "unix" {
		// UniversalOptions has no network: dial the socket whatever the
		// client asks for.
		path := o.Addr
		u.Dialer = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	}
	return Target{Kind: Single, TLS: o.TLSConfig != nil, Options: u}, nil
}

// parseMulti reads a Sentinel or Cluster URL: a comma-separated list of
// seed hosts, which net/url does not parse (an IPv6 literal in the list is
// refused), so the authority is cut out by hand.
func parseMulti(raw string, kind Kind) (Target, error) {
	example := ExampleCluster
	if kind == Sentinel {
		example = ExampleSentinel
	}
	scheme, rest, _ := strings.Cut(raw, "://")
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo, hostList := "", authority
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		userinfo, hostList = authority[:i+1], authority[i+1:]
	}
	// The rest parses as a URL of one placeholder host.
	u, err := url.Parse(scheme + "://" + userinfo + "seed" + tail)
	if err != nil {
		return Target{}, fail(raw, reason(err), example)
	}
	if u.Fragment != "" {
		return Target{}, fail(raw, "a URL fragment (#...) means nothing here", example)
	}
	def := redisPort
	if kind == Sentinel {
		def = sentinelPort
	}
	addrs, err := seeds(hostList, def)
	if err != nil {
		return Target{}, fail(raw, err.Error(), example)
	}
	o := &redis.UniversalOptions{Addrs: addrs}
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	tlsOn := strings.HasPrefix(strings.ToLower(scheme), "rediss+")
	if tlsOn {
		// No ServerName: each node is checked against the address it
		// is dialled at (crypto/tls fills it in), as cluster nodes and
		// Sentinel-announced primaries are not the seeds.
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	path := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(path) == 1 && path[0] == "" {
		path = nil
	}
	q := u.Query()
	switch kind {
	case Sentinel:
		if len(path) == 0 {
			return Target{}, fail(raw, "no master name: give the name Sentinel monitors after the hosts, as /mymaster", example)
		}
		if len(path) > 2 {
			return Target{}, fail(raw, fmt.Sprintf("path %q: want /MASTERNAME or /MASTERNAME/DB", u.Path), example)
		}
		o.MasterName = path[0]
		if len(path) == 2 {
			db, err := strconv.Atoi(path[1])
			if err != nil || db < 0 {
				return Target{}, fail(raw, fmt.Sprintf("database %q is not a number >= 0", path[1]), example)
			}
			o.DB = db
		}
		o.SentinelUsername, o.SentinelPassword = q.Get("sentinel_username"), q.Get("sentinel_password")
		q.Del("sentinel_username")
		q.Del("sentinel_password")
	case Cluster:
		o.IsClusterMode = true
		if len(path) > 0 && !(len(path) == 1 && path[0] == "0") {
			return Target{}, fail(raw, fmt.Sprintf("path %q: Redis Cluster has only database 0 and takes no path", u.Path), example)
		}
	}
	if len(q) > 0 {
		names := make([]string, 0, len(q))
		for k := range q {
			names = append(names, k)
		}
		what := "unknown query parameter " + strings.Join(names, ", ")
		if kind == Sentinel {
			what += ": only sentinel_username and sentinel_password are known"
		} else {
			what += ": a Cluster URL takes none"
		}
		return Target{}, fail(raw, what, example)
	}
	return Target{Kind: kind, TLS: tlsOn, Options: o}, nil
}

// seeds splits a comma-separated host list into host:port addresses, with
// port def where a host has none.
func seeds(list, def string) ([]string, error) {
	if list == "" {
		return nil, errors.New("no host: list at least one host:port")
	}
	var out []string
	for _, h := range strings.Split(list, ",") {
		if h == "" {
			return nil, fmt.Errorf("empty host in %q: separate hosts with single commas", list)
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			// No port (an IPv6 literal needs brackets, [::1]).
			if strings.Contains(strings.Trim(h, "[]"), ":") && !strings.HasPrefix(h, "[") {
				return nil, fmt.Errorf("host %q: put an IPv6 address in brackets, as [::1]:%s", h, def)
			}
			host, port = strings.Trim(h, "[]"), def
		}
		if host == "" {
			return nil, fmt.Errorf("host %q has no name or address", h)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("host %q: port %q is not a number from 1 to 65535", h, port)
		}
		out = append(out, net.JoinHostPort(host, port))
	}
	return out, nil
}

// Redact returns raw with its passwords hidden, for messages: the one in
// the user information and any query parameter named like *password.
func Redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		if user, _, hasPass := strings.Cut(authority[:i], ":"); hasPass {
			authority = user + ":xxxxx" + authority[i:]
		}
	}
	if before, query, ok := strings.Cut(tail, "?"); ok {
		frag := ""
		if q, f, ok := strings.Cut(query, "#"); ok {
			query, frag = q, "#"+f
		}
		params := strings.Split(query, "&")
		for i, p := range params {
			if k, _, ok := strings.Cut(p, "="); ok && strings.HasSuffix(strings.ToLower(k), "password") {
				params[i] = k + "=xxxxx"
			}
		}
		tail = before + "?" + strings.Join(params, "&") + frag
	}
	return scheme + "://" + authority + tail
}
