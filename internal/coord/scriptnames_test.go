package coord

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ScriptName names the script a client really sent: after a claim, Redis
// holds the script ScriptName calls "claim", and a SHA1 of no script is
// named "".
func TestScriptName(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		g := f.publish(1)
		if err := f.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		f.heartbeat("a")
		if _, err := f.c.Claim(ctx, "a", g.Ref(), ClaimOptions{}); err != nil {
			t.Fatal(err)
		}
		sha := claimScript.lua.Hash()
		if got := ScriptName(sha); got != "claim" {
			t.Fatalf("ScriptName(claim's sha) = %q", got)
		}
		loaded, err := f.rdb.ScriptExists(ctx, sha, renewScript.lua.Hash()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if !loaded[0] || loaded[1] {
			t.Fatalf("SCRIPT EXISTS claim, renew = %v, want [true false]", loaded)
		}
		if got := ScriptName("0123456789abcdef0123456789abcdef01234567"); got != "" {
			t.Fatalf("ScriptName(unknown) = %q", got)
		}
		seen := map[string]string{}
		for name, s := range scriptNames {
			if other, dup := seen[s.lua.Hash()]; dup {
				t.Fatalf("scripts %s and %s share a SHA1", name, other)
			}
			seen[s.lua.Hash()] = name
			if got := ScriptName(s.lua.Hash()); got != name {
				t.Fatalf("ScriptName(%s's sha) = %q", name, got)
			}
		}
	})
}

// LoadScripts leaves every script in Redis's cache, also after the cache
// was flushed (a restart), so the hosts a publish wakes never send a
// script's text; the scripts loaded are the ones the calls run.
func TestLoadScripts(t *testing.T) {
	each(t, 15*time.Second, func(t *testing.T, f *fixture) {
		ctx := context.Background()
		for range 2 {
			if err := f.rdb.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			if err := f.c.LoadScripts(ctx); err != nil {
				t.Fatal(err)
			}
			for name, s := range scriptNames {
				loaded, err := f.rdb.ScriptExists(ctx, s.lua.Hash()).Result()
				if err != nil || !loaded[0] {
					t.Fatalf("script %s not loaded: %v, %v", name, loaded, err)
				}
			}
		}
		// Every script the package declares is named (and so loaded).
		files, err := filepath.Glob("*.go")
		if err != nil {
			t.Fatal(err)
		}
		declared := 0
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			declared += strings.Count(string(b), "Script = newScript(")
		}
		if declared != len(scriptNames) {
			t.Fatalf("%d scripts declared, %d named in scriptNames", declared, len(scriptNames))
		}
	})
}

// SharedNotifications delivers what its channel carries and ends with the
// stop it was given.
func TestSharedNotifications(t *testing.T) {
	c := make(chan struct{}, 1)
	stopped := 0
	n := SharedNotifications(c, func() error { stopped++; return nil })
	c <- struct{}{}
	select {
	case <-n.C:
	default:
		t.Fatal("no wake from the shared channel")
	}
	if err := n.Close(); err != nil || stopped != 1 {
		t.Fatalf("Close: %v, stop called %d times", err, stopped)
	}
}
