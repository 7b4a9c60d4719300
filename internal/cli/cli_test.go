package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/coord"
	"github.com/fanout/fanout/internal/master"
)

// run calls a command line with its own environment and captures output.
func run(t *testing.T, main func(context.Context, []string, env) int, vars map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := env{stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] }}
	code := main(context.Background(), args, e)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		main func(context.Context, []string, env) int
		args []string
		want string
	}{
		{"master no args", masterMain, nil, "Usage:"},
		{"master unknown", masterMain, []string{"frob"}, `unknown command "frob"`},
		{"publish no path", masterMain, []string{"publish"}, "exactly one PATH"},
		{"publish relative", masterMain, []string{"publish", "data/m42"}, "relative path"},
		{"publish empty", masterMain, []string{"publish", ""}, "empty"},
		{"bad flag", masterMain, []string{"status", "--nope"}, "unknown flag"},
		{"bad redis url", masterMain, []string{"status", "--redis", "http://x"}, "--redis"},
		{"publish bad exclude", masterMain, []string{"publish", "--exclude", "a[", "/data/m42"}, `"a["`},
		{"publish include rule", masterMain, []string{"publish", "--exclude", "+ keep", "/data/m42"}, "include rules"},
		{"publish missing exclude-from", masterMain, []string{"publish", "--exclude-from", "/does/not/exist", "/data/m42"}, "--exclude-from"},
		{"publish relative dest", masterMain, []string{"publish", "--dest", "srv/app", "/data/m42"}, "--dest"},
		{"publish dest with ..", masterMain, []string{"publish", "--dest", "/srv/../etc", "/data/m42"}, "'..'"},
		{"publish keep without atomic", masterMain, []string{"publish", "--keep", "2", "/data/m42"}, "add --atomic"},
		{"publish keep zero", masterMain, []string{"publish", "--atomic", "--keep", "0", "/data/m42"}, "--keep 0"},
		{"publish atomic dry run", masterMain, []string{"publish", "--atomic", "--dry-run", "/data/m42"}, "--atomic"},
		{"rollback not a number", masterMain, []string{"rollback", "web", "seven"}, `"seven" is not a generation`},
		{"rollback task name is a number", masterMain, []string{"rollback", "1", "2"}, "starting with a letter"},
		{"rollback three args", masterMain, []string{"rollback", "web", "1", "2"}, "at most"},
		{"publish bad task name", masterMain, []string{"publish", "--name", "a/b", "/data"}, "a task name is"},
		{"status two names", masterMain, []string{"status", "a", "b"}, "at most one task"},
		{"retire the plain task", masterMain, []string{"retire", "default"}, "cannot be retired"},
		{"retire no name", masterMain, []string{"retire"}, "exactly one task NAME"},
		{"cancel bad name", masterMain, []string{"cancel", "9lives"}, "a task name is"},
		{"watch flag without --watch", masterMain, []string{"run", "--delay", "2s"}, "need --watch"},
		{"watch max-delay below delay", masterMain, []string{"run", "--watch", "--delay", "5s", "--max-delay", "1s"}, "--max-delay"},
		{"minion unknown", minionMain, []string{"frob"}, `unknown command "frob"`},
		{"minion root missing", minionMain, []string{"run", "--root", "/does/not/exist"}, "--root"},
		{"bad log level", minionMain, []string{"run", "--root", "/", "--state-dir", "STATE", "--log-level", "loud"}, "--log-level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := make([]string, len(tt.args))
			for i, a := range tt.args {
				args[i] = strings.ReplaceAll(a, "STATE", t.TempDir())
			}
			code, _, stderr := run(t, tt.main, nil, args...)
			if code != exitUsage {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, exitUsage, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr = %q, want it to mention %q", stderr, tt.want)
			}
		})
	}
}

// TestPublishTooLong: publish refuses a path over PATH_MAX as a usage
// error that names the argument, the length and the limit, before it
// connects to Redis (none runs here), and without echoing the value.
func TestPublishTooLong(t *testing.T) {
	path := "/" + strings.Repeat("a", 200) + strings.Repeat("/TAIL", 1000)
	code, stdout, stderr := run(t, masterMain, nil, "publish", path)
	if code != exitUsage {
		t.Errorf("exit code = %d, want %d (stderr %q)", code, exitUsage, stderr)
	}
	want := fmt.Sprintf("publish PATH: task is %d bytes long, over the limit of %d bytes", len(path), master.MaxTaskLen)
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr = %q, want it to say %q", stderr, want)
	}
	if len(stderr) > 300 || strings.Contains(stderr, "TAIL") || stdout != "" {
		t.Errorf("the refused value is echoed: stdout %q, stderr (%d bytes) %q", stdout, len(stderr), stderr)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, minionMain, nil, "--version")
	if code != exitOK || !strings.HasPrefix(out, "fanout-minion ") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version: code %d, output %q", code, out)
	}
}

// A Redis that cannot be reached gets a clear error. The address is held
// by a listener that hangs up on every connection: a closed miniredis's
// port was once taken by another package's Redis, running at the same
// time in CI, and status succeeded there.
func TestUnreachableRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	code, _, stderr := run(t, masterMain, map[string]string{"FANOUT_REDIS": "redis://" + addr}, "status")
	if code != exitFailure || !strings.Contains(stderr, "cannot reach Redis at redis://"+addr) {
		t.Fatalf("code %d, stderr %q", code, stderr)
	}
}

func TestSecretFileChecked(t *testing.T) {
	mr := miniredis.RunT(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, minionMain, nil, "run", "--redis", "redis://"+mr.Addr(), "--root", t.TempDir(),
		"--state-dir", t.TempDir(), "--secret-file", secret, "--listen", "127.0.0.1:0")
	if code != exitFailure || !strings.Contains(stderr, "chmod 600") {
		t.Fatalf("world-readable secret: code %d, stderr %q", code, stderr)
	}
}

// TestPublishAndStatus drives publish and status --json against miniredis
// with the Redis URL taken from the environment.
func TestPublishAndStatus(t *testing.T) {
	mr := miniredis.RunT(t)
	vars := map[string]string{"FANOUT_REDIS": "redis://" + mr.Addr(), "FANOUT_KEY_PREFIX": "{f}:"}
	code, out, stderr := run(t, masterMain, vars, "publish", "--delete", "/data/m42//")
	if code != exitOK {
		t.Fatalf("publish: code %d, stderr %q", code, stderr)
	}
	if !strings.Contains(out, "task set to /data/m42") {
		t.Errorf("publish output %q", out)
	}
	if got, _ := mr.Get("{f}:task"); got != "/data/m42//" {
		t.Errorf("task key = %q; publish must write what the operator gave (the master cleans it)", got)
	}
	code, out, stderr = run(t, masterMain, vars, "status", "--json")
	if code != exitOK {
		t.Fatalf("status: code %d, stderr %q", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	for _, k := range []string{"task", "generation", "state", "expected", "finished", "running", "sources", "failures"} {
		if _, ok := st[k]; !ok {
			t.Errorf("status --json lacks %q: %s", k, out)
		}
	}
	if st["task"] != "/data/m42//" || st["state"] != coord.StateIdle {
		t.Errorf("status task %v state %v", st["task"], st["state"])
	}
	// --dest needs a master that knows it: none is running yet.
	if code, _, stderr := run(t, masterMain, vars, "publish", "--dest", "/srv/app/", "/data/m42"); code != exitFailure || !strings.Contains(stderr, "start the master first") {
		t.Errorf("publish --dest with no master: code %d, %q", code, stderr)
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	co := coord.New(rdb, coord.Config{Prefix: "{f}:"})
	// A master of protocol 5 is registered: --dest and --group it knows,
	// --atomic it would drop, so that is refused, naming it.
	mr.Set("{f}:master", `{"id":"old-master","addr":"10.0.0.2:7070","proto":5}`)
	if code, _, stderr := run(t, masterMain, vars, "publish", "--atomic", "/data/m42"); code != exitFailure || !strings.Contains(stderr, "old-master (protocol 5)") {
		t.Errorf("publish --atomic with a protocol-5 master: code %d, %q", code, stderr)
	}
	// The running master registers itself (with a TTL it renews).
	if err := co.RegisterMaster(context.Background(), coord.MasterInfo{ID: "master", Addr: "10.0.0.1:7070"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if ttl := mr.TTL("{f}:master"); ttl <= 0 {
		t.Errorf("master registration without a TTL: %v", ttl)
	}
	code, out, stderr = run(t, masterMain, vars, "publish", "--dest", "/srv/app/", "/data/m42")
	if opts, _ := mr.Get("{f}:task_options"); code != exitOK || !strings.Contains(out, "dest /srv/app") || !strings.Contains(opts, `"dest":"/srv/app"`) {
		t.Errorf("publish --dest: code %d, %q, %q; task_options %s", code, out, stderr, opts)
	}
}

// TestPublishExcludes: publish writes --exclude and --exclude-from, in
// that order, into task_options with the task; status shows the watch
// state a watching master wrote.
func TestPublishExcludes(t *testing.T) {
	mr := miniredis.RunT(t)
	vars := map[string]string{"FANOUT_REDIS": "redis://" + mr.Addr()}
	from := filepath.Join(t.TempDir(), "ex")
	if err := os.WriteFile(from, []byte("# editor files\n*.swp\n/tmp/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, masterMain, vars, "publish", "--exclude", "*.log", "--exclude-from", from, "/data/m42")
	if code != exitOK || !strings.Contains(out, "3 exclude patterns") {
		t.Fatalf("publish: code %d, out %q, stderr %q", code, out, stderr)
	}
	got, _ := mr.Get("task_options")
	if got != `{"delete":false,"exclude":["*.log","*.swp","/tmp/"]}` {
		t.Fatalf("task_options = %s", got)
	}
	mr.HSet("watch", "root", "/data/m42", "events", "12", "generations", "3", "watched", "4", "unwatched", "2", "updated", "1")
	code, out, stderr = run(t, masterMain, vars, "status")
	if code != exitOK || !strings.Contains(out, "12 events, 3 generations") || !strings.Contains(out, "2 NOT watched") {
		t.Fatalf("status: code %d, out %q, stderr %q", code, out, stderr)
	}
	mr.HSet("watch", "events", "many")
	if code, _, stderr = run(t, masterMain, vars, "status"); code == exitOK || !strings.Contains(stderr, "watch") {
		t.Fatalf("a corrupt watch key: code %d, stderr %q; want an error naming the key", code, stderr)
	}
}

func TestStatusText(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := coord.Status{
		Task:       "/data/m42",
		Generation: coord.Generation{ID: 7, Path: "/data/m42", State: coord.StateRunning, Digest: strings.Repeat("ab", 32), Files: 3, Bytes: 300, Published: now.Add(-5 * time.Second)},
		State:      coord.StateRunning,
		Expected:   []string{"a", "b", "c", "e"},
		Finished:   []string{"a", "e"},
		Running:    []string{"b"},
		Repairing:  []string{"e"},
		Repairs:    map[string]int64{"e": 3},
		Sources:    []string{"a#0"},
		Claims:     map[string]string{"b": "master#0", "e": "a#0"},
		Failures:   map[string]coord.Failure{"c": {Gen: 7, Error: "disk full"}},
		SlowRelays: []string{"b"},
		Hosts: []coord.Host{
			{ID: "a", Alive: true, LastSeen: now}, {ID: "b", Alive: true, LastSeen: now}, {ID: "c", Alive: true, LastSeen: now}, {ID: "d", LastSeen: now.Add(-time.Hour)},
			{ID: "e", Alive: true, LastSeen: now},
		},
	}
	var b bytes.Buffer
	writeStatusText(&b, st, now)
	out := b.String()
	for _, want := range []string{"generation: 7", "state running", "published 5s ago", "4 expected, 2 finished, 1 running, 1 repairing", "a#0", "slow up:    b (relayed too slowly"} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	rows := map[string][2]string{"a": {"finished", "0"}, "b": {"running", "0"}, "c": {"waiting", "0"}, "d": {"lost", "0"}, "e": {"repairing", "3"}}
	seen := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 {
			if want, ok := rows[f[0]]; ok {
				seen++
				if f[1] != want[0] || f[2] != want[1] {
					t.Errorf("host %s: state %s, repairs %s; want %s, %s", f[0], f[1], f[2], want[0], want[1])
				}
			}
		}
	}
	if seen != len(rows) {
		t.Errorf("%d host rows, want %d:\n%s", seen, len(rows), out)
	}
	var js bytes.Buffer
	if err := writeStatusJSON(&js, st, now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(js.String(), `"repairing": 1`) || !strings.Contains(js.String(), `"repairs": 3`) {
		t.Errorf("status JSON lacks the repairing count or the repairs:\n%s", js.String())
	}
	var parsed statusJSON
	if err := json.Unmarshal(js.Bytes(), &parsed); err != nil {
		t.Fatal(err)
	}
	for _, h := range parsed.Hosts {
		if h.SlowUplink != (h.ID == "b") {
			t.Errorf("host %s: slow_uplink %v", h.ID, h.SlowUplink)
		}
	}
	if !slices.Equal(parsed.SlowRelays, []string{"b"}) {
		t.Errorf("status JSON slow_relays %v, want [b]", parsed.SlowRelays)
	}
	if !strings.Contains(out, "master#0") || !strings.Contains(out, "disk full") {
		t.Errorf("status text lacks the source or the failure:\n%s", out)
	}
}

// TestSlowUplinksBounded: the text status names at most slowShown slow
// uplinks, escaped, and counts the rest; none, no line.
func TestSlowUplinksBounded(t *testing.T) {
	var hosts []string
	for i := range slowShown + 2 {
		hosts = append(hosts, fmt.Sprintf("h%02d", i))
	}
	hosts[0] = "h\x1b[2J"
	var b bytes.Buffer
	slowUplinks(&b, hosts)
	out := b.String()
	if strings.Count(out, "\n") != 1 || strings.Contains(out, "\x1b") || !strings.Contains(out, "h09 and 2 more (") || strings.Contains(out, "h10") {
		t.Errorf("slow uplinks line %q", out)
	}
	b.Reset()
	slowUplinks(&b, nil)
	if b.Len() != 0 {
		t.Errorf("no slow uplink printed %q", b.String())
	}
}

func TestProgressLine(t *testing.T) {
	s := statusJSON{Generation: 3, State: "running", Bytes: 100, Expected: 4, Finished: 1, Hosts: []hostJSON{
		{ID: "a", State: "finished"}, {ID: "b", State: "running", Done: 50}, {ID: "c", State: "waiting"}, {ID: "d", State: "running", Done: 500},
	}}
	done, total := taskProgress(s)
	if done != 250 || total != 400 {
		t.Fatalf("taskProgress = %d/%d, want 250/400 (a running host counts at most the content size)", done, total)
	}
	line := progressLine(s, 8)
	if !strings.HasPrefix(line, "[#####...]  62%") || !strings.Contains(line, "1/4 hosts") {
		t.Errorf("progress line %q", line)
	}
	s.State = "done"
	if line := progressLine(s, 8); !strings.HasPrefix(line, "[########] 100%") {
		t.Errorf("done line %q", line)
	}
}

// TestBadNodeInputs: each bad operator input gets one line naming the flag
// and a non-zero exit, before anything is served or written.
func TestBadNodeInputs(t *testing.T) {
	mr := miniredis.RunT(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	shortLine := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(shortLine, []byte("0123456789abcdef0123456789abcdef\nshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	aFile := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(aFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"run", "--redis", "redis://" + mr.Addr(), "--secret-file", secret}
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"port in use", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--listen", busy.Addr().String()}, exitFailure, "--listen " + busy.Addr().String()},
		{"state dir under a file", []string{"--root", t.TempDir(), "--state-dir", filepath.Join(aFile, "state"), "--listen", "127.0.0.1:0"}, exitFailure, "--state-dir"},
		{"root is a file", []string{"--root", aFile, "--state-dir", t.TempDir(), "--listen", "127.0.0.1:0"}, exitUsage, "--root"},
		{"negative uploads", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--max-uploads", "-1"}, exitUsage, "--max-uploads"},
		{"too many uploads", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--max-uploads", "65"}, exitUsage, "--max-uploads 65: use 0 (never serve) to 64"},
		{"short lease", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--lease", "10ms"}, exitUsage, "--lease"},
		{"tls cert without key", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--tls-cert", aFile}, exitUsage, "--tls-key"},
		{"tls ca without a certificate", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--tls-ca", aFile}, exitFailure, "--tls-ca " + aFile},
		{"tls pair unreadable", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--tls-cert", aFile, "--tls-key", aFile}, exitFailure, "--tls-cert " + aFile},
		{"missing secret", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--secret-file", filepath.Join(t.TempDir(), "none")}, exitFailure, "--secret-file"},
		{"short second secret", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--secret-file", shortLine}, exitFailure, "line 2 of " + shortLine},
		{"zone with a space", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--zone", "rack 7"}, exitUsage, `--zone "rack 7": a zone is 1 to 64 letters, digits`},
		{"zone with a hash tag", []string{"--root", t.TempDir(), "--state-dir", t.TempDir(), "--zone", "{fanout}"}, exitUsage, `--zone "{fanout}"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, minionMain, nil, append(append([]string{}, base...), tt.args...)...)
			if code != tt.code || !strings.Contains(stderr, tt.want) {
				t.Errorf("code %d (want %d), stderr %q (want it to name %q)", code, tt.code, stderr, tt.want)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 {
				t.Errorf("%d lines on stderr, want one: %q", n+1, stderr)
			}
		})
	}
	// The master refuses --max-uploads 0: it is the first source.
	code, _, stderr := run(t, masterMain, nil, "run", "--redis", "redis://"+mr.Addr(), "--secret-file", secret,
		"--root", t.TempDir(), "--state-dir", t.TempDir(), "--max-uploads", "0")
	if code != exitUsage || !strings.Contains(stderr, "--max-uploads") {
		t.Errorf("master --max-uploads 0: code %d, stderr %q", code, stderr)
	}
	// So does every host a bad --zone, from the environment too.
	code, _, stderr = run(t, masterMain, map[string]string{"FANOUT_ZONE": strings.Repeat("z", 65)}, "run", "--redis", "redis://"+mr.Addr(), "--secret-file", secret,
		"--root", t.TempDir(), "--state-dir", t.TempDir())
	if code != exitUsage || !strings.Contains(stderr, "--zone") {
		t.Errorf("master FANOUT_ZONE of 65 bytes: code %d, stderr %q", code, stderr)
	}
}

// TestStatusZones: with zones in use, status shows each host's zone and
// the bytes it received from other zones, and the total, in text and
// JSON; without zones the table is as before.
func TestStatusZones(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := coord.Status{
		Generation: coord.Generation{ID: 7, Path: "/data/m42", State: coord.StateRunning, Digest: strings.Repeat("ab", 32), Bytes: 300, OriginZone: "a"},
		State:      coord.StateRunning,
		Finished:   []string{"a1", "b1", "b2"},
		Hosts: []coord.Host{
			{ID: "a1", Zone: "a", Alive: true, LastSeen: now}, {ID: "b1", Zone: "b", Alive: true, LastSeen: now},
			{ID: "b2", Zone: "b", Alive: true, LastSeen: now}, {ID: "old", Alive: true, LastSeen: now},
		},
		CrossZone: map[string]int64{"b1": 3 << 20, "b2": 1024},
	}
	var b bytes.Buffer
	writeStatusText(&b, st, now)
	out := b.String()
	if !strings.Contains(out, "zones:      a 1, b 2, none 1 (hosts); origin in a; 3.0MiB crossed zones") {
		t.Errorf("status text lacks the zones line:\n%s", out)
	}
	rows := map[string][2]string{"a1": {"a", "-"}, "b1": {"b", "3.0MiB"}, "b2": {"b", "1.0KiB"}, "old": {"-", "-"}}
	seen := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if want, ok := rows[firstField(f)]; ok && len(f) >= 3 {
			seen++
			if f[1] != want[0] || f[2] != want[1] {
				t.Errorf("host %s: zone %s, cross-zone %s; want %s, %s", f[0], f[1], f[2], want[0], want[1])
			}
		}
	}
	if seen != len(rows) {
		t.Errorf("%d host rows, want %d:\n%s", seen, len(rows), out)
	}
	var js bytes.Buffer
	if err := writeStatusJSON(&js, st, now); err != nil {
		t.Fatal(err)
	}
	var got struct {
		OriginZone string `json:"origin_zone"`
		CrossZone  int64  `json:"cross_zone_bytes"`
		Hosts      []struct {
			ID        string `json:"id"`
			Zone      string `json:"zone"`
			CrossZone int64  `json:"cross_zone_bytes"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal(js.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.OriginZone != "a" || got.CrossZone != 3<<20+1024 || len(got.Hosts) != 4 || got.Hosts[1].Zone != "b" || got.Hosts[1].CrossZone != 3<<20 {
		t.Errorf("status JSON: %+v", got)
	}

	// No zone anywhere: no zones line, no zone columns.
	st.Generation.OriginZone, st.CrossZone = "", nil
	for i := range st.Hosts {
		st.Hosts[i].Zone = ""
	}
	b.Reset()
	writeStatusText(&b, st, now)
	if strings.Contains(b.String(), "zones:") || strings.Contains(b.String(), "ZONE") {
		t.Errorf("status without zones shows them:\n%s", b.String())
	}
}

func firstField(f []string) string {
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// TestRedisFlags: the --redis forms and --redis-ca are checked before
// anything connects, each mistake one line naming the flag (password
// hidden) with what to do.
func TestRedisFlags(t *testing.T) {
	pem := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(pem, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"unknown scheme", []string{"--redis", "redis+proxy://h:1"}, exitUsage, []string{"--redis redis+proxy://h:1", "unknown scheme", "example: "}},
		{"sentinel without master", []string{"--redis", "redis+sentinel://:hunter2@h1:26379,h2:26379"}, exitUsage, []string{"--redis redis+sentinel://:xxxxx@h1:26379,h2:26379", "no master name", "mymaster"}},
		{"cluster with a database", []string{"--redis", "redis+cluster://h1:7000/2"}, exitUsage, []string{"only database 0"}},
		{"ca without TLS", []string{"--redis", "redis+cluster://h1:7000", "--redis-ca", pem}, exitUsage, []string{"--redis-ca " + pem, "does not use TLS", "rediss+cluster://"}},
		{"ca not PEM", []string{"--redis", "rediss://:hunter2@127.0.0.1:1/0", "--redis-ca", pem}, exitFailure, []string{"--redis-ca " + pem + ": no PEM certificate"}},
		{"ca missing", []string{"--redis", "rediss+sentinel://h:1/m", "--redis-ca", pem + ".none"}, exitFailure, []string{"--redis-ca " + pem + ".none: no such file"}},
		{"cluster prefix without a tag", []string{"--redis", "redis+cluster://127.0.0.1:1", "--key-prefix", "fanout:"}, exitUsage, []string{`--key-prefix "fanout:" has no hash tag`, "{fanout}:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := run(t, masterMain, nil, append([]string{"status"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tt.code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
			if strings.Contains(stderr, "hunter2") {
				t.Errorf("stderr %q shows the password", stderr)
			}
			if n := strings.Count(strings.TrimSpace(stderr), "\n"); n > 0 {
				t.Errorf("%d lines on stderr, want one: %q", n+1, stderr)
			}
		})
	}
	// The environment sets the prefix as the flag does: refused too.
	code, _, stderr := run(t, masterMain, map[string]string{"FANOUT_REDIS": "redis+cluster://127.0.0.1:1", "FANOUT_KEY_PREFIX": "plain:"}, "status")
	if code != exitUsage || !strings.Contains(stderr, "has no hash tag") {
		t.Errorf("FANOUT_KEY_PREFIX without a tag on Cluster: code %d, stderr %q", code, stderr)
	}
}

func TestClusterKeyPrefix(t *testing.T) {
	tests := []struct {
		prefix string
		given  bool
		want   string
		ok     bool
	}{
		{"", false, "{fanout}:", true},
		{"whatever", false, "{fanout}:", true}, // not given: the default
		{"{fanout}:", true, "{fanout}:", true},
		{"prod{fo}:", true, "prod{fo}:", true},
		{"", true, "", false},
		{"fanout:", true, "", false},
		{"{}:", true, "", false},
		{"{}{x}:", true, "", false}, // Redis reads the first {...}: empty, so no tag
		{"{open:", true, "", false},
	}
	for _, tt := range tests {
		got, err := clusterKeyPrefix(tt.prefix, tt.given)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("clusterKeyPrefix(%q, %v) = %q, %v; want %q, ok %v", tt.prefix, tt.given, got, err, tt.want, tt.ok)
		}
	}
}

func TestClientName(t *testing.T) {
	if got := clientName("fanout-minion", "web-01"); got != "fanout-minion:web-01" {
		t.Errorf("clientName = %q", got)
	}
	if got := clientName("fanout-master-status", ""); got != "fanout-master-status" {
		t.Errorf("clientName = %q", got)
	}
	if got := clientName("fanout-minion", "hôte\x7f1"); got != "fanout-minion:h_te_1" {
		t.Errorf("clientName = %q: Redis refuses names with spaces or non-ASCII", got)
	}
}

func TestForgetAfterFlag(t *testing.T) {
	mr := miniredis.RunT(t)
	for _, v := range []string{"-1h", "10s"} {
		code, _, stderr := run(t, masterMain, nil, "run", "--redis", "redis://"+mr.Addr(), "--root", t.TempDir(), "--state-dir", t.TempDir(), "--forget-after", v)
		if code != exitUsage || !strings.Contains(stderr, "--forget-after") {
			t.Errorf("--forget-after %s: code %d, stderr %q", v, code, stderr)
		}
	}
}

// TestStatusHostsOutsideGroups: a host outside a generation's groups is
// shown as other-group, not as waiting; with no generation, hosts
// are idle.
func TestStatusHostsOutsideGroups(t *testing.T) {
	now := time.Now()
	hosts := []coord.Host{
		{ID: "w1", Alive: true, LastSeen: now, Groups: []string{"web"}},
		{ID: "x1", Alive: true, LastSeen: now},
	}
	st := coord.Status{Name: "site", Task: "/srv/site", State: coord.StateRunning, Now: now, Hosts: hosts,
		Generation: coord.Generation{ID: 3, Path: "/srv/site", Groups: []string{"web"}, State: coord.StateRunning, Digest: strings.Repeat("a", 64)}}
	got := map[string]string{}
	for _, h := range toJSON(st, now).Hosts {
		got[h.ID] = h.State
	}
	if got["w1"] != "waiting" || got["x1"] != "other-group" {
		t.Errorf("host states %v", got)
	}
	idle := coord.Status{Name: "site", State: "idle", Now: now, Hosts: hosts}
	for _, h := range toJSON(idle, now).Hosts {
		if h.State != "idle" {
			t.Errorf("no generation: %s is %s", h.ID, h.State)
		}
	}
}
