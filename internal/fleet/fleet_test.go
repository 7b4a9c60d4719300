package fleet

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// report is a race detector report as a race-built process prints it.
const report = `==================
WARNING: DATA RACE
Read at 0x00c000094028 by main goroutine:
  main.main()
      /src/main.go:12 +0x104

Previous write at 0x00c000094028 by goroutine 8:
  main.main.func1()
      /src/main.go:11 +0x45
==================
`

func TestCheckRaces(t *testing.T) {
	if err := CheckRaces("m1", "time=... level=info msg=running\nWARNING: something else\n"); err != nil {
		t.Errorf("no report: %v", err)
	}
	second := strings.ReplaceAll(report, "main.go:1", "other.go:9")
	err := CheckRaces("m1", "level=info msg=running\n"+report+"level=info msg=more\n"+second+"Found 2 data race(s)\n")
	if err == nil {
		t.Fatal("two reports: no error")
	}
	msg := err.Error()
	for _, want := range []string{"m1:", "2 data race(s)", "Previous write at 0x00c000094028", "/src/main.go:11"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "other.go") || strings.Contains(msg, "msg=more") {
		t.Errorf("error quotes more than the first report: %q", msg)
	}
}

func TestRaceEnv(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"HOME=/root"}, "log_path=stderr halt_on_error=0"},
		{[]string{"GORACE=log_path=/tmp/race halt_on_error=1"}, "log_path=/tmp/race halt_on_error=1 log_path=stderr halt_on_error=0"},
		{[]string{"GORACE=history_size=1", "GORACE=history_size=7"}, "history_size=7 log_path=stderr halt_on_error=0"},
	}
	for _, tt := range tests {
		env := RaceEnv(tt.env)
		if got := env[len(env)-1]; got != "GORACE="+tt.want {
			t.Errorf("RaceEnv(%q) ends with %q, want GORACE=%q", tt.env, got, tt.want)
		}
		if !slices.Equal(env[:len(tt.env)], tt.env) {
			t.Errorf("RaceEnv(%q) changed the environment: %q", tt.env, env)
		}
	}
}

// TestRaceFailsClose builds a module whose "minion" has a data race and
// whose "master" has none, runs both as a fleet, and expects Close to
// fail naming the minion only: Build uses -race and the report reaches
// the log even when the caller's GORACE sends reports elsewhere.
func TestRaceFailsClose(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	mod := t.TempDir()
	write := func(name, text string) {
		t.Helper()
		path := filepath.Join(mod, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module racy\n\ngo 1.26\n")
	write("master/main.go", "package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(time.Hour) }\n")
	write("minion/main.go", `package main

import (
	"fmt"
	"time"
)

func main() {
	n := 0
	done := make(chan bool)
	go func() { n++; done <- true }()
	n++ // races with the goroutine's n++
	<-done
	fmt.Println("raced", n)
	time.Sleep(time.Hour) // a daemon: runs until killed
}
`)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin, err := Build(ctx, mod, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("GORACE", "log_path="+filepath.Join(t.TempDir(), "race"))
	f, err := New(Config{Dir: t.TempDir(), Bin: bin, RedisURL: "redis://127.0.0.1:1"}) // no Redis needed
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.StartMaster(ctx); err != nil {
		t.Fatal(err)
	}
	racy, err := f.StartMinion(ctx, "racy")
	if err != nil {
		t.Fatal(err)
	}
	err = Poll(ctx, "the race report in racy's log", func() (bool, error) {
		return strings.Contains(racy.Output(), "raced 2"), nil
	})
	if err != nil {
		f.Close()
		t.Fatalf("%v\n%s", err, f.Logs())
	}
	err = f.Close()
	if err == nil || !strings.HasPrefix(err.Error(), "racy: ") || !strings.Contains(err.Error(), "main.main.func1") {
		t.Fatalf("Close = %v, want racy's race report\n%s", err, f.Logs())
	}
	if strings.Contains(err.Error(), "master") {
		t.Errorf("Close blames the master, which has no race: %v", err)
	}
}
