package coord

import (
	"context"
	"fmt"
	"maps"
	"slices"
)

// scriptNames names the protocol's scripts, for ScriptName and
// LoadScripts: every script the package runs.
var scriptNames = map[string]*script{
	"publish":   publishScript,
	"claim":     claimScript,
	"renew":     renewScript,
	"finish":    finishScript,
	"fail":      failScript,
	"due":       dueScript,
	"expire":    expireScript,
	"heartbeat": heartbeatScript,
	"markdone":  markDoneScript,
	"offer":     offerScript,
	"drift":     driftScript,
	"forget":    forgetScript,
	"release":   releaseScript,
	"bypass":    bypassScript,
	"retire":    retireScript,
	"addtask":   addTaskScript,
	"cancel":    cancelScript,
	"switch":    switchScript,
	"switched":  switchedScript,
	"zonebytes": zoneBytesScript,
	"hook":      hookScript,
}

// ScriptName names the protocol script whose SHA1 is sha ("claim",
// "renew", ...), as SLOWLOG and MONITOR show a script call (EVALSHA sha
// ...); "" when sha is none of this build's scripts.
func ScriptName(sha string) string {
	for name, s := range scriptNames {
		if s.lua.Hash() == sha {
			return name
		}
	}
	return ""
}

// LoadScripts loads into Redis's script cache every script of this build
// that it does not hold (one SCRIPT EXISTS, then a SCRIPT LOAD of each
// missing one; on Cluster, go-redis sends both to every node, replicas
// too, and fails if one does not answer). A script call finds its script
// by SHA1 and sends the whole text only when Redis lacks it (NOSCRIPT):
// without this, the first use of each script after Redis started (or
// failed over to a replica that never loaded it) is a herd, every host
// sending 20-25 KB of Lua at once. The master loads them before it
// publishes a generation, so the hosts it wakes find them.
func (c *Client) LoadScripts(ctx context.Context) error {
	names := slices.Sorted(maps.Keys(scriptNames))
	shas := make([]string, len(names))
	for i, name := range names {
		shas[i] = scriptNames[name].lua.Hash()
	}
	have, err := c.rdb.ScriptExists(ctx, shas...).Result()
	if err != nil {
		return fmt.Errorf("load scripts: %w", err)
	}
	for i, name := range names {
		if i < len(have) && have[i] {
			continue
		}
		if err := scriptNames[name].lua.Load(ctx, c.rdb).Err(); err != nil {
			return fmt.Errorf("load script %s: %w", name, err)
		}
	}
	return nil
}
