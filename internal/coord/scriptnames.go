package coord

// scriptNames names the protocol's scripts, for ScriptName. A script that
// is missing here is reported by its SHA1 alone.
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
