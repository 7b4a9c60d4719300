package coord

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/redistest"
)

func zzPer(rdb *redis.Client) string {
	info := rdb.Info(context.Background(), "commandstats").Val()
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, "cmdstat_evalsha:") {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func TestZZKeys(t *testing.T) {
	srv, ok := redistest.Real(t)
	if !ok {
		t.Skip()
	}
	ctx := context.Background()
	opts, _ := redis.ParseURL(srv.URL)
	rdb := redis.NewClient(opts)
	s := redis.NewScript("return 1")
	s.Load(ctx, rdb)
	for _, nk := range []int{0, 5, 13, 22, 29} {
		for _, na := range []int{0, 11, 20} {
			keys := make([]string, nk)
			for i := range keys {
				keys[i] = fmt.Sprint("{fanout}:somekeyname", i)
			}
			args := make([]any, na)
			for i := range args {
				args[i] = "arg-value"
			}
			rdb.ConfigResetStat(ctx)
			for range 3000 {
				s.Run(ctx, rdb, keys, args...)
			}
			t.Logf("keys %d args %d: %s", nk, na, zzPer(rdb))
		}
	}
}
