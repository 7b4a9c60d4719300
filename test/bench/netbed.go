package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The neutral testbed is ../shared/netbed/netbed.sh, shared by every tool
// measured on it; the benchmark calls it and never carries a copy. Host i
// is the network namespace fbI with address 10.250.0.(i+2); the root
// namespace, where Redis and the tracker run, is 10.250.0.1. Each host's
// link is shaped by tc tbf in both directions: the namespace's eth0 egress
// is its upload, the bridge port fbhI's egress its download.
const (
	netbedScript = "netbed.sh"
	netbedRootIP = "10.250.0.1"
	netbedPrefix = "fb" // namespaces fb0 .. fbN
)

// netbedIP is host i's address on the testbed (host 0 is the source).
func netbedIP(i int) string { return fmt.Sprintf("10.250.0.%d", i+2) }

// netnsExec is the wrapper that runs a command on host i. ip netns exec
// execs the command after entering the namespace, so the process keeps the
// pid the benchmark started.
func netnsExec(i int) []string {
	return []string{"ip", "netns", "exec", fmt.Sprintf("%s%d", netbedPrefix, i)}
}

// findNetbed locates netbed.sh under dir and checks that this process can
// run it: root, ip and tc on PATH, and network namespaces allowed (it
// creates and removes one). The error says why not; the caller falls back
// to the tool's own limiter then.
func findNetbed(ctx context.Context, dir string) (string, error) {
	if dir == "" || dir == "off" {
		return "", errors.New("-netbed off")
	}
	script, err := filepath.Abs(filepath.Join(dir, netbedScript))
	if err != nil {
		return "", err
	}
	st, err := os.Stat(script)
	if err != nil {
		return "", fmt.Errorf("no %s (the shared testbed; -netbed DIR names its directory): %w", netbedScript, err)
	}
	if st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s is not executable", script)
	}
	if os.Geteuid() != 0 {
		return "", errors.New("network namespaces need root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("%s not on PATH (apt-get install -y iproute2): %w", tool, err)
		}
	}
	probe := fmt.Sprintf("fanout-bench-probe-%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return "", fmt.Errorf("network namespaces not allowed here: ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
	}
	exec.Command("ip", "netns", "del", probe).Run()
	return script, nil
}

// netbed is one testbed of n+1 hosts at bw MiB/s, brought up by up and
// removed by down. Every process started on it must be ended before down;
// down also kills what is left inside its namespaces, since a process
// keeps a deleted namespace (and its addresses) alive.
type netbed struct {
	script string
	n      int
	bw     int64 // bytes per second, a whole number of MiB/s (netbed.sh takes MiB/s)
	log    io.Writer
	isUp   bool
}

// netbedArg is the bandwidth argument of netbed.sh: whole MiB/s.
func netbedArg(rate int64) (string, error) {
	if rate <= 0 || rate%(1<<20) != 0 {
		return "", fmt.Errorf("netbed.sh shapes links in whole MiB/s; %d B/s is not", rate)
	}
	return strconv.FormatInt(rate>>20, 10), nil
}

// up removes a testbed left over from a crashed run (refusing one that
// processes still use: another benchmark's), then brings this one up.
func (nb *netbed) up(ctx context.Context) error {
	bw, err := netbedArg(nb.bw)
	if err != nil {
		return err
	}
	if err := clearStaleNetbed(ctx, nb.script, nb.log); err != nil {
		return err
	}
	nb.isUp = true // from here on, down must run, even if up fails half-way
	if err := nb.run(ctx, "up", strconv.Itoa(nb.n), bw); err != nil {
		return err
	}
	return nil
}

// down kills what still runs in the testbed's namespaces and removes it.
// It uses its own context: it runs when the benchmark's has been
// cancelled (Ctrl-C).
func (nb *netbed) down() error {
	if !nb.isUp {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	killInNamespaces(ctx, nb.n)
	err := nb.run(ctx, "down", strconv.Itoa(nb.n))
	if err == nil {
		nb.isUp = false
	}
	return err
}

func (nb *netbed) run(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, nb.script, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", netbedScript, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// shape sets host i's upload, download or both to rate bytes per second,
// with the burst netbed.sh gives a link of that rate (rate/8 in KiB: 256 kb
// at 2 MiB/s, as in the testbed's README).
func (nb *netbed) shape(ctx context.Context, i int, rate int64, upload, download bool) ([]string, error) {
	var cmds [][]string
	if upload {
		cmds = append(cmds, append(netnsExec(i), tbfChange("eth0", rate)...))
	}
	if download {
		cmds = append(cmds, tbfChange(fmt.Sprintf("fbh%d", i), rate))
	}
	var shown []string
	for _, c := range cmds {
		shown = append(shown, strings.Join(c, " "))
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return shown, fmt.Errorf("%s: %w: %s", strings.Join(c, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return shown, nil
}

// tbfChange is the tc command that reshapes dev's egress to rate bytes
// per second, as netbed.sh shapes it (tbf, latency 50ms).
func tbfChange(dev string, rate int64) []string {
	kib := max(rate>>10, 1)
	return []string{"tc", "qdisc", "change", "dev", dev, "root", "tbf",
		"rate", fmt.Sprintf("%dkibps", kib), "burst", fmt.Sprintf("%dkb", max(kib/8, 2)), "latency", "50ms"}
}

// netbedNamespaces parses "ip netns list" into the testbed's namespace
// indices (fb0 → 0), sorted; other namespaces are left out.
func netbedNamespaces(list string) []int {
	var out []int
	for _, line := range strings.Split(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		rest, ok := strings.CutPrefix(f[0], netbedPrefix)
		if !ok {
			continue
		}
		if i, err := strconv.Atoi(rest); err == nil && i >= 0 && strconv.Itoa(i) == rest {
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out
}

// clearStaleNetbed removes fb* namespaces left by a run that died without
// its teardown. When a process still runs in one, it is someone else's
// testbed in use: refuse rather than pull it from under them.
func clearStaleNetbed(ctx context.Context, script string, log io.Writer) error {
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	ns := netbedNamespaces(string(out))
	if len(ns) == 0 {
		return nil
	}
	for _, i := range ns {
		if pids := namespacePids(ctx, i); len(pids) > 0 {
			return fmt.Errorf("namespace %s%d exists with processes %v in it: another testbed is in use (never run two benchmarks at once); "+
				"when it is a leftover, kill them and run %s down %d", netbedPrefix, i, pids, script, ns[len(ns)-1])
		}
	}
	fmt.Fprintf(log, "bench: removing a stale testbed (%s%d..%s%d, no processes in it)\n", netbedPrefix, ns[0], netbedPrefix, ns[len(ns)-1])
	if out, err := exec.CommandContext(ctx, script, "down", strconv.Itoa(ns[len(ns)-1])).CombinedOutput(); err != nil {
		return fmt.Errorf("%s down: %w: %s", script, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// namespacePids lists the processes in namespace fbI.
func namespacePids(ctx context.Context, i int) []int {
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", fmt.Sprintf("%s%d", netbedPrefix, i)).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// killInNamespaces SIGKILLs every process left in fb0..fbN. They are the
// benchmark's own: it created these namespaces and checked they were empty
// (an rsync daemon's per-connection child, say, that outlived its parent).
func killInNamespaces(ctx context.Context, n int) {
	for i := 0; i <= n; i++ {
		for _, p := range namespacePids(ctx, i) {
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}
