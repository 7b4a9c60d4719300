package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseRows(t *testing.T) {
	rows, err := parseRows(defaultRows)
	if err != nil {
		t.Fatal(err)
	}
	want := []e2eRow{
		{16, 32 << 20, 16 << 20, "", 0}, {32, 64 << 20, 16 << 20, "", 0}, {32, 16 << 20, 4 << 20, "", 0},
		{16, 32 << 20, 16 << 20, SlowBoth, 0}, {16, 32 << 20, 16 << 20, SlowUpload, 0},
	}
	if len(rows) != len(want) {
		t.Fatalf("rows %v", rows)
	}
	for i := range want {
		if rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, rows[i], want[i])
		}
	}
	for _, bad := range []string{"", "16:32M", "0:32M:16M", "16:0:16M", "16:32M:16M:fast", "x:32M:16M", "300:1M:1M"} {
		if _, err := parseRows(bad); err == nil {
			t.Errorf("parseRows(%q) accepted", bad)
		}
	}
	if got := want[3].Label(3, 8); got != "N=16, 32 MiB, 16 MiB/s, host 3 at B/8" {
		t.Errorf("label %q", got)
	}
	if got := want[4].Label(3, 8); got != "N=16, 32 MiB, 16 MiB/s, host 3's upload at B/8" {
		t.Errorf("label %q", got)
	}
}

// A row of several files splits its size among them, the last taking
// what does not divide, and says so in its label; a row of one file is
// model.bin, as the other tools move it.
func TestRowFiles(t *testing.T) {
	one := e2eRow{N: 16, Size: 32 << 20, Rate: 16 << 20}
	if names, sizes := one.files(); len(names) != 1 || names[0] != "model.bin" || sizes[0] != 32<<20 {
		t.Errorf("one file: %v %v", names, sizes)
	}
	tree := e2eRow{N: 16, Size: 32<<20 + 5, Rate: 16 << 20, Files: 8}
	names, sizes := tree.files()
	var sum int64
	for _, n := range sizes {
		sum += n
	}
	if len(names) != 8 || names[7] != "tree/part-007.bin" || sizes[0] != 4<<20 || sizes[7] != 4<<20+5 || sum != tree.Size {
		t.Errorf("8 files: %v %v", names, sizes)
	}
	tree.Size = 32 << 20
	if got := tree.Label(3, 8); got != "N=16, 32 MiB, 16 MiB/s in 8 files" {
		t.Errorf("label %q", got)
	}
}

func TestE2ECells(t *testing.T) {
	hosts := map[int]time.Duration{1: 3 * time.Second, 2: 4 * time.Second, 3: 18 * time.Second}
	run := toolRun{Total: 19 * time.Second, Hosts: hosts, CPU: 3 * time.Second, Detail: "d"}
	// Uniform: all hosts against S/B (2 s); CPU per GiB of 3 × 32 MiB.
	fig, ratio := e2eCells(e2eRow{3, 32 << 20, 16 << 20, "", 0}, 3, 8, []toolRun{run})
	if ratio != "9.50 × S/B" || fig != "19.0 s; d; 32.0 CPU-s/GiB delivered" {
		t.Errorf("uniform: %q | %q", fig, ratio)
	}
	// Slow both ways: the others' last (4 s = 2 × S/B), the slow host
	// against its floor (16 s).
	fig, ratio = e2eCells(e2eRow{3, 32 << 20, 16 << 20, SlowBoth, 0}, 3, 8, []toolRun{run})
	if !strings.HasPrefix(fig, "other 2: last at 4.00 s; host 3 at 18.0 s; all done 19.0 s") ||
		ratio != "other 2: 2.00 × S/B; host 3: 1.12 × its floor S/(B/8) = 16.0 s" {
		t.Errorf("slow: %q | %q", fig, ratio)
	}
	fig, ratio = e2eCells(e2eRow{3, 32 << 20, 16 << 20, SlowUpload, 0}, 3, 8, []toolRun{{Total: 5 * time.Second, Hosts: hosts}})
	if fig != "all 3: 5.00 s (host 3 at 18.0 s)" || ratio != "2.50 × S/B" {
		t.Errorf("slow upload: %q | %q", fig, ratio)
	}
	// Three runs: the median's figure and the range of the headline (for
	// a slow row, the other hosts' last finish, not the total).
	runs := []toolRun{
		{Total: 20 * time.Second, Hosts: map[int]time.Duration{1: 6 * time.Second, 3: 19 * time.Second}, Detail: "slowest"},
		{Total: 18 * time.Second, Hosts: map[int]time.Duration{1: 2 * time.Second, 3: 17 * time.Second}, Detail: "fastest"},
		{Total: 30 * time.Second, Hosts: map[int]time.Duration{1: 4 * time.Second, 3: 29 * time.Second}, Detail: "middle"},
	}
	fig, ratio = e2eCells(e2eRow{2, 32 << 20, 16 << 20, SlowBoth, 0}, 3, 8, runs)
	if !strings.HasPrefix(fig, "median of 3; other 1: last at 4.00 s; host 3 at 29.0 s; all done 30.0 s; middle") ||
		!strings.HasSuffix(ratio, "(range 1.00–3.00)") {
		t.Errorf("median: %q | %q", fig, ratio)
	}
	fig, ratio = e2eCells(e2eRow{2, 32 << 20, 16 << 20, "", 0}, 3, 8, runs)
	if !strings.HasPrefix(fig, "median of 3; 20.0 s; slowest") || ratio != "10.00 × S/B (range 9.00–15.00)" {
		t.Errorf("median uniform: %q | %q", fig, ratio)
	}
}

func TestNetbedNamespaces(t *testing.T) {
	list := "fb10 (id: 10)\nfb2 (id: 2)\nfbx\nfb02\nother (id: 3)\nfb0\n\n"
	got := netbedNamespaces(list)
	if len(got) != 3 || got[0] != 0 || got[1] != 2 || got[2] != 10 {
		t.Errorf("netbedNamespaces = %v, want [0 2 10]", got)
	}
}

func TestShapingCommands(t *testing.T) {
	if got := strings.Join(tbfChange("fbh3", 2<<20), " "); got != "tc qdisc change dev fbh3 root tbf rate 2048kibps burst 256kb latency 50ms" {
		t.Errorf("tbfChange = %q", got)
	}
	if got := strings.Join(netnsExec(3), " "); got != "ip netns exec fb3" {
		t.Errorf("netnsExec = %q", got)
	}
	if netbedIP(0) != "10.250.0.2" || netbedIP(16) != "10.250.0.18" {
		t.Error("netbedIP")
	}
	if s, err := netbedArg(16 << 20); err != nil || s != "16" {
		t.Errorf("netbedArg(16 MiB/s) = %q, %v", s, err)
	}
	if _, err := netbedArg(1536 << 10); err == nil {
		t.Error("netbedArg accepted 1.5 MiB/s")
	}
}

func TestParseProcStat(t *testing.T) {
	m, err := parseProcStat("cpu  100 5 50 800 20 3 7 15 9 0")
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq+steal (guest is in user already).
	if m.busy != 180*10*time.Millisecond || m.total != 1000*10*time.Millisecond || m.softirq != 70*time.Millisecond {
		t.Errorf("busy %s total %s softirq %s", m.busy, m.total, m.softirq)
	}
	if _, err := parseProcStat("cpu0 1 2 3 4 5 6 7"); err == nil {
		t.Error("a per-core line was accepted")
	}
	if got := cpuPerGiB(3*time.Second, 3<<29); got != 2 {
		t.Errorf("cpuPerGiB = %g, want 2", got)
	}
}

func TestHelpersParse(t *testing.T) {
	for name, want := range map[string]int{"minion-07": 7, "h12": 12, "minion-10": 10} {
		if got, ok := hostIndex(name); !ok || got != want {
			t.Errorf("hostIndex(%q) = %d, %v", name, got, ok)
		}
	}
	if _, ok := hostIndex("master"); ok {
		t.Error("hostIndex(master) ok")
	}
	show := "Files:\nMode: single\nInfo Hash: 0123456789abcdef0123456789abcdef01234567\nPiece Length: 1.0MiB\n"
	if got := infoHash(show); got != "0123456789abcdef0123456789abcdef01234567" {
		t.Errorf("infoHash = %q", got)
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "DONE")
	if _, ok := readDone(p); ok {
		t.Error("readDone of a missing file ok")
	}
	os.WriteFile(p, []byte("1700000000.25\n"), 0o644)
	if at, ok := readDone(p); !ok || at != time.Unix(1700000000, 250_000_000) {
		t.Errorf("readDone = %v, %v", at, ok)
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(a, []byte("same bytes"), 0o644)
	if err := copyFile(a, b); err != nil {
		t.Fatal(err)
	}
	if err := sameFile(a, b); err != nil {
		t.Errorf("sameFile of a copy: %v", err)
	}
	os.WriteFile(b, []byte("same byte"), 0o644)
	if err := sameFile(a, b); err == nil {
		t.Error("sameFile of different files")
	}
}

func TestParseFlagsE2E(t *testing.T) {
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Parts["e2e"] || cfg.Parts["fanout"] || len(cfg.Rows) != 5 || len(cfg.Tools) != 3 || cfg.SlowHost != 3 || cfg.SlowFactor != 8 {
		t.Errorf("defaults: parts %v rows %d tools %v slow %d/%d", cfg.Parts, len(cfg.Rows), cfg.Tools, cfg.SlowHost, cfg.SlowFactor)
	}
	cfg, err = parseFlags([]string{"-parts", "e2e", "-rows", "8:16M:4M:slowup", "-tools", "fanout", "-netbed", "off"}, io.Discard)
	if err != nil || len(cfg.Rows) != 1 || cfg.Rows[0].Slow != SlowUpload || len(cfg.Tools) != 1 || cfg.Netbed != "off" {
		t.Errorf("parse: %+v %v", cfg.Rows, err)
	}
	if _, err := parseFlags([]string{"-tools", "fanout,scp"}, io.Discard); err == nil {
		t.Error("an unknown tool was accepted")
	}
	if _, err := parseFlags([]string{"-slow-first", "-slow-last"}, io.Discard); err == nil {
		t.Error("-slow-first and -slow-last together were accepted")
	}
}

func TestParsePidStat(t *testing.T) {
	// pid (comm with) spaces) state ppid ... utime stime cutime cstime ...
	line := "42 (a b) c) S 7 42 42 0 -1 4194304 100 0 0 0 250 50 30 20 20 0 1 0 100 0 0"
	ppid, cpu, ok := parsePidStat(line)
	if !ok || ppid != 7 || cpu != 300*10*time.Millisecond {
		t.Errorf("parsePidStat = %d, %s, %v; want 7, 3s", ppid, cpu, ok)
	}
	if _, _, ok := parsePidStat("42 (short) S 7"); ok {
		t.Error("a short line parsed")
	}
}
