package main

import (
	"io"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestDoublingRounds(t *testing.T) {
	for n, want := range map[int]int{1: 1, 2: 2, 3: 2, 4: 3, 7: 3, 8: 4, 15: 4, 16: 5, 31: 5, 32: 6} {
		if got := DoublingRounds(n); got != want {
			t.Errorf("DoublingRounds(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestExpectedAndRatio(t *testing.T) {
	ideal := Ideal(64<<20, 16<<20)
	if ideal != 4*time.Second {
		t.Fatalf("Ideal(64 MiB, 16 MiB/s) = %s, want 4s", ideal)
	}
	if got := Ratio(5*time.Second, ideal); got != 1.25 {
		t.Errorf("Ratio(5s, 4s) = %g, want 1.25", got)
	}
	if got := Ratio(time.Second, 0); got != 0 {
		t.Errorf("Ratio against zero = %g, want 0", got)
	}
	for _, c := range []struct {
		mode string
		n    int
		want float64
	}{{ModeCentral, 8, 8}, {ModeDoubling, 8, 4}, {ModeDoubling, 32, 6}, {ModePipelined, 32, 1.25}} {
		if got := Expected(c.mode, c.n); got != c.want {
			t.Errorf("Expected(%s, %d) = %g, want %g", c.mode, c.n, got, c.want)
		}
	}
	if got := MBps(1e9, 2*time.Second); got != 500 {
		t.Errorf("MBps(1e9 B, 2s) = %g, want 500", got)
	}
}

func TestMarkdown(t *testing.T) {
	var tb Table
	tb.Add(Row{Bench: "1 fan-out", Case: "N=8 central", Figure: "33.1 s", Ratio: "8.3 × S/B", Command: "a | b"})
	tb.Note("note %d", 1)
	got := tb.Markdown()
	lines := strings.Split(strings.TrimSpace(got), "\n")
	if len(lines) != 5 {
		t.Fatalf("want header, rule, one row, blank, note; got %d lines:\n%s", len(lines), got)
	}
	if !strings.Contains(lines[2], "`a \\| b`") {
		t.Errorf("pipe in a cell not escaped: %q", lines[2])
	}
	if !strings.HasPrefix(lines[1], "| ---") {
		t.Errorf("rule line %q", lines[1])
	}
	// Every table line has the same width and the same number of cells.
	for _, l := range lines[:3] {
		if utf8.RuneCountInString(l) != utf8.RuneCountInString(lines[0]) || strings.Count(strings.ReplaceAll(l, `\|`, ""), "|") != 6 {
			t.Errorf("misaligned line %q", l)
		}
	}
	if lines[4] != "- note 1" {
		t.Errorf("note line %q", lines[4])
	}
}

func TestParseCommandStats(t *testing.T) {
	info := "# Commandstats\r\ncmdstat_hgetall:calls=12,usec=40,usec_per_call=3.33,rejected_calls=0,failed_calls=0\r\n" +
		"cmdstat_evalsha:calls=3,usec=90,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n"
	got, err := parseCommandStats(info)
	if err != nil {
		t.Fatal(err)
	}
	if got["hgetall"] != 12 || got["evalsha"] != 3 || len(got) != 2 {
		t.Errorf("parseCommandStats = %v", got)
	}
	if d := diff(got, map[string]int64{"hgetall": 2}, map[string]int64{"evalsha": 3}); len(d) != 1 || d["hgetall"] != 10 {
		t.Errorf("diff = %v, want hgetall 10 only", d)
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-parts", "fanout,redis", "-hosts", "8,32", "-size", "64M", "-bwlimit", "16M"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Parts["fanout"] || cfg.Parts["big"] || len(cfg.Hosts) != 2 || cfg.Hosts[1] != 32 {
		t.Errorf("parts %v hosts %v", cfg.Parts, cfg.Hosts)
	}
	if cfg.FanSize != 64<<20 || cfg.Rate != 16<<20 {
		t.Errorf("size %d rate %d", cfg.FanSize, cfg.Rate)
	}
	if _, err := parseFlags([]string{"-parts", "nope"}, io.Discard); err == nil {
		t.Error("an unknown part was accepted")
	}
	if _, err := parseFlags([]string{"-modes", "central,teleport"}, io.Discard); err == nil {
		t.Error("an unknown mode was accepted")
	}
}

func TestMonitorLine(t *testing.T) {
	for line, want := range map[string]string{
		`1700000000.123456 [0 127.0.0.1:5000] "HGETALL" "generation"`: "hgetall",
		`1700000000.123456 [0 127.0.0.1:5000] "evalsha" "abc" "3"`:    "evalsha",
		`1700000000.123456 [0 lua] "sadd" "finished_queue" "a"`:       "",
		`OK`: "",
	} {
		got, ok := monitorLine(line)
		if got != want || ok != (want != "") {
			t.Errorf("monitorLine(%q) = %q, %v; want %q", line, got, ok, want)
		}
	}
}

func TestModeFlags(t *testing.T) {
	master, minion := modeFlags(ModeCentral, 16, true)
	if strings.Join(master, " ") != "--max-uploads 16" || strings.Join(minion, " ") != "--max-uploads 0 --pipeline=false" {
		t.Errorf("central: master %q minion %q", master, minion)
	}
	_, minion = modeFlags(ModeDoubling, 8, false)
	if strings.Join(minion, " ") != "--max-uploads 1" {
		t.Errorf("doubling without --pipeline: minion %q", minion)
	}
	_, minion = modeFlags(ModePipelined, 8, true)
	if strings.Join(minion, " ") != "--max-uploads 1 --pipeline=true" {
		t.Errorf("pipelined: minion %q", minion)
	}
	_, minion = modeFlags(ModePipelined, 8, false)
	if strings.Join(minion, " ") != "--max-uploads 1" {
		t.Errorf("pipelined without --pipeline: minion %q", minion)
	}
}
