package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// aria2Common are bittorrent-netbed.sh's aria2c flags, for the seeder and
// every leecher: DHT, LPD and PEX off, so peers come from the tracker only;
// seed for 10 minutes; no upload limit.
var aria2Common = []string{"--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
	"--seed-ratio=0.0", "--seed-time=600", "--bt-tracker-interval=1", "--bt-max-peers=55", "--file-allocation=none",
	"--summary-interval=0", "--console-log-level=error", "--check-integrity=false", "--bt-request-peer-speed-limit=0"}

// trackerPort is the port bittorrent-netbed.sh's tracker listens on.
const trackerPort = "6969"

// e2eBitTorrent distributes the row's file as bittorrent-netbed.sh does: a
// torrent of 1 MiB pieces (mktorrent -l 20), opentracker in the root
// namespace, an aria2c seeder on host 0 and an aria2c leecher on each host.
// Time zero is mktorrent's start, as the torrent's hashing is what
// fanout's master does before publishing; the script's 2 s for the seeder
// to announce before the leechers start are left out.
func (b *bench) e2eBitTorrent(ctx context.Context, env *e2eEnv) (toolRun, error) {
	row := env.row
	run := toolRun{Command: fmt.Sprintf("as bittorrent-netbed.sh: mktorrent -l 20 -a http://%s:%s/announce; opentracker -i %s -p %s -P %s -w WHITELIST; "+
		"ip netns exec fb0 aria2c COMMON --bt-seed-unverified=true T.torrent; for I in 1..%d: ip netns exec fbI aria2c COMMON --on-bt-download-complete=HOOK T.torrent; COMMON = %s",
		netbedRootIP, trackerPort, netbedRootIP, trackerPort, trackerPort, row.N, strings.Join(aria2Common, " "))}
	if env.bed == nil {
		return run, notApplicable{"needs the testbed (network namespaces)"}
	}
	if env.row.Files > 1 {
		return run, notApplicable{"one file only (-e2e-files)"}
	}
	for _, tool := range []string{"aria2c", "mktorrent", "opentracker"} {
		if _, err := exec.LookPath(tool); err != nil {
			return run, notApplicable{tool + " not installed (apt-get install -y aria2 mktorrent opentracker)"}
		}
	}
	w := env.runDir
	seed := filepath.Join(w, "seed", "model.bin")
	if err := copyFile(filepath.Join(env.data, "model.bin"), seed); err != nil {
		return run, err
	}
	var g procGroup
	defer g.stop()
	torrent := filepath.Join(w, "t.torrent")
	t0 := time.Now()
	if out, err := exec.CommandContext(ctx, "mktorrent", "-l", "20", "-a", fmt.Sprintf("http://%s:%s/announce", netbedRootIP, trackerPort),
		"-o", torrent, seed).CombinedOutput(); err != nil {
		return run, fmt.Errorf("mktorrent: %w: %s", err, out)
	}
	made := time.Since(t0)
	// Debian's opentracker serves whitelisted torrents only, and reads the
	// list after dropping root: it lives in a directory anyone may enter.
	show, err := exec.CommandContext(ctx, "aria2c", "-S", torrent).Output()
	if err != nil {
		return run, fmt.Errorf("aria2c -S: %w", err)
	}
	hash := infoHash(string(show))
	if hash == "" {
		return run, fmt.Errorf("no info hash in aria2c -S output:\n%s", show)
	}
	listDir, err := os.MkdirTemp("", "fanout-bench-tracker-")
	if err != nil {
		return run, err
	}
	defer os.RemoveAll(listDir)
	if err := os.Chmod(listDir, 0o755); err != nil {
		return run, err
	}
	whitelist := filepath.Join(listDir, "whitelist")
	if err := os.WriteFile(whitelist, []byte(hash+"\n"), 0o644); err != nil {
		return run, err
	}
	if _, err := g.start([]string{"opentracker", "-i", netbedRootIP, "-p", trackerPort, "-P", trackerPort, "-w", whitelist}, filepath.Join(w, "tracker.log")); err != nil {
		return run, err
	}
	if err := waitFor(ctx, 5*time.Second, func(ctx context.Context) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(netbedRootIP, trackerPort))
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		return run, fmt.Errorf("opentracker on %s:%s: %w (see %s)", netbedRootIP, trackerPort, err, filepath.Join(w, "tracker.log"))
	}
	seeder, err := g.start(append(append(netnsExec(0), "aria2c"), append(aria2Common, "-d", filepath.Dir(seed), "--bt-seed-unverified=true", torrent)...),
		filepath.Join(w, "a0.log"))
	if err != nil {
		return run, err
	}
	select { // as the script: let the seeder announce
	case <-ctx.Done():
		return run, ctx.Err()
	case <-time.After(2 * time.Second):
	}
	hook := filepath.Join(w, "hook.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ndate +%s.%N > \"$(dirname \"$3\")/DONE\"\n"), 0o755); err != nil {
		return run, err
	}
	pids := []int{seeder.Pid()}
	leechers := make([]*helperProc, row.N+1)
	for i := 1; i <= row.N; i++ {
		if err := os.MkdirAll(filepath.Join(w, fmt.Sprintf("h%d", i)), 0o755); err != nil {
			return run, err
		}
	}
	foreign := startForeign()
	start := time.Now()
	for i := 1; i <= row.N; i++ {
		argv := append(append(netnsExec(i), "aria2c"), append(aria2Common, "-d", filepath.Join(w, fmt.Sprintf("h%d", i)), "--on-bt-download-complete="+hook, torrent)...)
		if leechers[i], err = g.start(argv, filepath.Join(w, fmt.Sprintf("a%d.log", i))); err != nil {
			return run, err
		}
		pids = append(pids, leechers[i].Pid())
	}
	cpu := startCPU(pids) // from the leechers' start: their exec is not in it
	done := map[int]time.Time{}
	for len(done) < row.N {
		for i := 1; i <= row.N; i++ {
			if _, ok := done[i]; ok {
				continue
			}
			if at, ok := readDone(filepath.Join(w, fmt.Sprintf("h%d", i), "DONE")); ok {
				done[i] = at
			} else if leechers[i].Exited() {
				return run, fmt.Errorf("aria2c on host %d exited before completing (see %s)", i, filepath.Join(w, fmt.Sprintf("a%d.log", i)))
			}
		}
		if len(done) == row.N {
			break
		}
		select {
		case <-ctx.Done():
			return run, fmt.Errorf("%d of %d leechers complete: %w", len(done), row.N, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	cpu.stop()
	run.Foreign = foreign.stop()
	run.Hosts = map[int]time.Duration{}
	var last time.Time
	for i, at := range done {
		run.Hosts[i] = made + at.Sub(start)
		if at.After(last) {
			last = at
		}
	}
	run.Total = made + last.Sub(start)
	for i := 1; i <= row.N; i++ {
		if err := sameFile(seed, filepath.Join(w, fmt.Sprintf("h%d", i), "model.bin")); err != nil {
			return run, err
		}
	}
	run.CPU = cpu.Procs
	run.Detail = fmt.Sprintf("mktorrent %s, leechers' start → last complete %s (the script's figure: %.2f × S/B); cores %.0f%% busy",
		seconds(made), seconds(last.Sub(start)), Ratio(last.Sub(start), Ideal(row.Size, row.Rate)), 100*cpu.MachineUse)
	return run, nil
}

// infoHash reads the info hash from aria2c -S output ("Info Hash: 0123...").
func infoHash(show string) string {
	for _, line := range strings.Split(show, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Info Hash:"); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// readDone reads the completion hook's "seconds.nanoseconds" timestamp.
func readDone(path string) (time.Time, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, false
	}
	s := strings.TrimSpace(string(b))
	sec, frac, ok := strings.Cut(s, ".")
	if !ok || len(frac) == 0 {
		return time.Time{}, false // not written whole yet
	}
	secs, err1 := strconv.ParseInt(sec, 10, 64)
	nanos, err2 := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
	if err1 != nil || err2 != nil {
		return time.Time{}, false
	}
	return time.Unix(secs, nanos), true
}
