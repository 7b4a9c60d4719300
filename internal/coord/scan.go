package coord

import (
	"context"
	"slices"

	"github.com/redis/go-redis/v9"
)

// scanPage is the COUNT hint of the scans that read whole hashes and sets.
const scanPage = 1000

// pages reads one whole hash, set or sorted set by a scan of scanPage
// entries at a time, never in one command: at 10,000 hosts an HGETALL,
// SMEMBERS or ZRANGE of a key with an entry per host held Redis for 5-10
// ms, every other client waiting. The first page is read in a pipeline
// with whatever else the caller reads (a key of a page or less needs no
// other round trip); the next ones one by one after it. An entry may come
// twice, and one written during the scan may be missed: what a reader
// built from several commands saw anyway.
type pages struct {
	first *redis.ScanCmd
	next  func(cursor uint64) *redis.ScanCmd
}

// hashPages starts a scan of the hash key: its first page in p.
func hashPages(ctx context.Context, p redis.Pipeliner, rdb redis.UniversalClient, key string) pages {
	return pages{
		first: p.HScan(ctx, key, 0, "", scanPage),
		next:  func(cur uint64) *redis.ScanCmd { return rdb.HScan(ctx, key, cur, "", scanPage) },
	}
}

// setPages starts a scan of the set key: its first page in p.
func setPages(ctx context.Context, p redis.Pipeliner, rdb redis.UniversalClient, key string) pages {
	return pages{
		first: p.SScan(ctx, key, 0, "", scanPage),
		next:  func(cur uint64) *redis.ScanCmd { return rdb.SScan(ctx, key, cur, "", scanPage) },
	}
}

// zsetPages starts a scan of the sorted set key: its first page in p.
func zsetPages(ctx context.Context, p redis.Pipeliner, rdb redis.UniversalClient, key string) pages {
	return pages{
		first: p.ZScan(ctx, key, 0, "", scanPage),
		next:  func(cur uint64) *redis.ScanCmd { return rdb.ZScan(ctx, key, cur, "", scanPage) },
	}
}

// each calls fn with every page's entries, from the first page through
// the pages next reads until the cursor comes back to 0: members of a
// set, field and value pairs of a hash, member and score pairs of a
// sorted set.
func (pg pages) each(fn func(entries []string)) error {
	page := pg.first
	for {
		entries, cursor, err := page.Result()
		if err != nil {
			return err
		}
		fn(entries)
		if cursor == 0 {
			return nil
		}
		page = pg.next(cursor)
	}
}

// pairs reads a hash (field → value) or a sorted set (member → score).
func (pg pages) pairs() (map[string]string, error) {
	out := map[string]string{}
	err := pg.each(func(entries []string) {
		for i := 0; i+1 < len(entries); i += 2 {
			out[entries[i]] = entries[i+1]
		}
	})
	return out, err
}

// members reads a set, sorted, each member once.
func (pg pages) members() ([]string, error) {
	seen := map[string]bool{}
	err := pg.each(func(entries []string) {
		for _, m := range entries {
			seen[m] = true
		}
	})
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	slices.Sort(out)
	return out, err
}
