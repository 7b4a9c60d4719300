package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/testtool"
)

// Node is one Redis process (a server or a sentinel) started for a test.
type Node struct {
	Addr string
	Log  string // its log file

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Kill kills the process with SIGKILL (nothing it holds is saved) and
// waits for it. Killing a dead node does nothing.
func (n *Node) Kill() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		n.cmd.Process.Kill()
		n.cmd.Wait()
		n.cmd = nil
	}
}

// startNode runs bin with args (a redis-server or redis-sentinel listening
// on addr) for t, logging to log, and waits until it answers PING.
func startNode(t testing.TB, bin, addr, log string, args ...string) *Node {
	t.Helper()
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	n := &Node{Addr: addr, Log: log, cmd: cmd}
	t.Cleanup(n.Kill)
	if err := waitPing(addr); err != nil {
		n.Kill()
		b, _ := os.ReadFile(log)
		t.Fatalf("%s on %s: %v\n%s", filepath.Base(bin), addr, err, b)
	}
	return n
}

// loopback returns a free loopback address and its port.
func loopback(t testing.TB) (string, int) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port
}

// serverArgs are the redis-server flags every node of a test deployment
// gets: loopback, no persistence, quick full syncs.
func serverArgs(port int, dir string) []string {
	return []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"}
}

// Sentinel is a primary, a replica of it and three sentinels that watch
// them (quorum 2; a primary silent for a second is down), all on loopback.
type Sentinel struct {
	Master    string  // the name the sentinels monitor
	URL       string  // redis+sentinel://s1,s2,s3/Master
	Servers   []*Node // the primary at start, then the replica
	Sentinels []*Node
}

// NeedSentinel starts a Sentinel deployment for t and waits until the
// sentinels know the replica and one another (a failover needs both).
// Without redis-server or redis-sentinel it skips t (fails it under
// FANOUT_REQUIRE_REDIS=1).
//
// With -short it skips t: it starts five processes.
func NeedSentinel(t testing.TB) *Sentinel {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a Sentinel deployment (five processes); not with -short")
	}
	server := testtool.Need(t, "redis-server")
	sentinel := testtool.Need(t, "redis-sentinel")
	dir := t.TempDir()
	s := &Sentinel{Master: "fanout"}
	primaryAddr, primaryPort := loopback(t)
	s.Servers = append(s.Servers, startNode(t, server, primaryAddr, filepath.Join(dir, "primary.log"),
		serverArgs(primaryPort, mkdir(t, dir, "primary"))...))
	replicaAddr, replicaPort := loopback(t)
	s.Servers = append(s.Servers, startNode(t, server, replicaAddr, filepath.Join(dir, "replica.log"),
		append(serverArgs(replicaPort, mkdir(t, dir, "replica")), "--replicaof", "127.0.0.1", strconv.Itoa(primaryPort))...))
	var addrs []string
	for i := range 3 {
		addr, port := loopback(t)
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", i))
		body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %[3]s 1000\nsentinel failover-timeout %[3]s 10000\nsentinel parallel-syncs %[3]s 1\n",
			port, mkdir(t, dir, fmt.Sprintf("sentinel-%d", i)), s.Master, primaryPort)
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		s.Sentinels = append(s.Sentinels, startNode(t, sentinel, addr, filepath.Join(dir, fmt.Sprintf("sentinel-%d.log", i)), conf))
		addrs = append(addrs, addr)
	}
	s.URL = "redis+sentinel://" + strings.Join(addrs, ",") + "/" + s.Master
	if err := s.waitReady(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	return s
}

func mkdir(t testing.TB, parent, name string) string {
	t.Helper()
	d := filepath.Join(parent, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitReady waits until every sentinel knows one replica and two other
// sentinels, and the replica is in sync.
func (s *Sentinel) waitReady(within time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		ready := true
		for _, n := range s.Sentinels {
			sc := redis.NewSentinelClient(&redis.Options{Addr: n.Addr})
			replicas, err1 := sc.Replicas(ctx, s.Master).Result()
			others, err2 := sc.Sentinels(ctx, s.Master).Result()
			sc.Close()
			if err1 != nil || err2 != nil || len(replicas) != 1 || len(others) != 2 || !strings.Contains(fmt.Sprint(replicas), "master-link-status:ok") {
				ready = false
				break
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the sentinels did not learn the replica and one another within %s (logs in %s)", within, filepath.Dir(s.Sentinels[0].Log))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// PrimaryAddr asks a sentinel which server is the primary now.
func (s *Sentinel) PrimaryAddr(ctx context.Context) (string, error) {
	var last error
	for _, n := range s.Sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: n.Addr})
		addr, err := sc.GetMasterAddrByName(ctx, s.Master).Result()
		sc.Close()
		if err == nil && len(addr) == 2 {
			return net.JoinHostPort(addr[0], addr[1]), nil
		}
		last = err
	}
	return "", fmt.Errorf("no sentinel names the primary of %s: %v", s.Master, last)
}

// KillPrimary kills the primary of the moment with SIGKILL and returns
// its address; the sentinels then promote the replica.
func (s *Sentinel) KillPrimary(t testing.TB) string {
	t.Helper()
	addr, err := s.PrimaryAddr(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range s.Servers {
		if n.Addr == addr {
			n.Kill()
			return addr
		}
	}
	t.Fatalf("the sentinels name %s as primary, not one of this deployment's servers", addr)
	return ""
}

// WaitFailover waits until the sentinels name another primary than old.
func (s *Sentinel) WaitFailover(ctx context.Context, old string) (string, error) {
	for {
		addr, err := s.PrimaryAddr(ctx)
		if err == nil && addr != old {
			return addr, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for the sentinels to promote a replica of %s: %w", old, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Cluster is a Redis Cluster of three primaries, each with one replica,
// on loopback; a node silent for a second is failed over.
type Cluster struct {
	URL   string // redis+cluster://every node
	Nodes []*Node
}

// NeedCluster starts a Cluster for t (redis-server --cluster-enabled, then
// redis-cli --cluster create) and waits until every node sees it whole.
// Without redis-server or redis-cli it skips t (fails it under
// FANOUT_REQUIRE_REDIS=1).
//
// With -short it skips t: it starts six processes.
func NeedCluster(t testing.TB) *Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a Redis Cluster (six processes); not with -short")
	}
	server := testtool.Need(t, "redis-server")
	cli := testtool.Need(t, "redis-cli")
	dir := t.TempDir()
	c := &Cluster{}
	var addrs []string
	for i := range 6 {
		addr, port := loopback(t)
		_, bus := loopback(t) // its own free port: port+10000 may not be
		nd := mkdir(t, dir, fmt.Sprintf("node-%d", i))
		args := append(serverArgs(port, nd), "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", filepath.Join(nd, "nodes.conf"), "--cluster-node-timeout", "1000")
		c.Nodes = append(c.Nodes, startNode(t, server, addr, filepath.Join(dir, fmt.Sprintf("node-%d.log", i)), args...))
		addrs = append(addrs, addr)
	}
	create := exec.Command(cli, append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "1", "--cluster-yes")...)
	if out, err := create.CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c.URL = "redis+cluster://" + strings.Join(addrs, ",")
	if err := c.waitHealthy(30*time.Second, nil); err != nil {
		t.Fatal(err)
	}
	return c
}

// waitHealthy waits until every node still running (not in dead) says the
// cluster is ok with every slot served, and lists every live node online
// (a replica is online once it is in sync).
func (c *Cluster) waitHealthy(within time.Duration, dead map[string]bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var why string
	for {
		why = c.unhealthy(ctx, dead)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the cluster is not healthy after %s: %s (logs in %s)", within, why, filepath.Dir(c.Nodes[0].Log))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) unhealthy(ctx context.Context, dead map[string]bool) string {
	live := len(c.Nodes) - len(dead)
	for _, n := range c.Nodes {
		if dead[n.Addr] {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
		info, err := rdb.ClusterInfo(ctx).Result()
		shards, serr := rdb.ClusterShards(ctx).Result()
		rdb.Close()
		if err != nil || serr != nil {
			return fmt.Sprintf("%s: %v %v", n.Addr, err, serr)
		}
		if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_slots_ok:16384") {
			return fmt.Sprintf("%s: %s", n.Addr, strings.ReplaceAll(strings.TrimSpace(info), "\r\n", " "))
		}
		online := 0
		for _, sh := range shards {
			for _, nd := range sh.Nodes {
				if nd.Health == "online" {
					online++
				}
			}
		}
		if online != live {
			return fmt.Sprintf("%s lists %d nodes online, want %d", n.Addr, online, live)
		}
	}
	return ""
}

// SlotPrimary returns the primary that owns the hash slot of key now, and
// its replicas, as the node at any live address tells.
func (c *Cluster) SlotPrimary(ctx context.Context, key string) (primary string, replicas []string, err error) {
	for _, n := range c.Nodes {
		rdb := redis.NewClient(&redis.Options{Addr: n.Addr})
		slot, err1 := rdb.ClusterKeySlot(ctx, key).Result()
		shards, err2 := rdb.ClusterShards(ctx).Result()
		rdb.Close()
		if err1 != nil || err2 != nil {
			err = fmt.Errorf("%s: %v %v", n.Addr, err1, err2)
			continue
		}
		for _, sh := range shards {
			owns := false
			for _, r := range sh.Slots {
				owns = owns || (r.Start <= slot && slot <= r.End)
			}
			if !owns {
				continue
			}
			for _, nd := range sh.Nodes {
				addr := net.JoinHostPort(nd.IP, strconv.FormatInt(nd.Port, 10))
				switch {
				case nd.Role == "master" && nd.Health == "online":
					primary = addr
				case nd.Role == "replica":
					replicas = append(replicas, addr)
				}
			}
			if primary != "" {
				return primary, replicas, nil
			}
		}
		err = fmt.Errorf("%s: no online primary owns slot %d", n.Addr, slot)
	}
	return "", nil, fmt.Errorf("find the primary of %q: %w", key, err)
}

// KillSlotPrimary kills the primary owning key's slot with SIGKILL and
// returns its address; its replica is then promoted.
func (c *Cluster) KillSlotPrimary(t testing.TB, key string) string {
	t.Helper()
	primary, replicas, err := c.SlotPrimary(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(replicas) == 0 {
		t.Fatalf("the primary %s of %q has no replica to promote", primary, key)
	}
	for _, n := range c.Nodes {
		if n.Addr == primary {
			n.Kill()
			return primary
		}
	}
	t.Fatalf("%s owns %q but is not a node of this cluster", primary, key)
	return ""
}

// WaitFailover waits until a live node owns key's slot in place of old and
// the cluster serves every slot again.
func (c *Cluster) WaitFailover(ctx context.Context, key, old string) (string, error) {
	for {
		p, _, err := c.SlotPrimary(ctx, key)
		if err == nil && p != old {
			return p, c.waitHealthy(30*time.Second, map[string]bool{old: true})
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for a replica of %s to take over %q: %w", old, key, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
