package coord

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/fanout/fanout/internal/redistest"
	"github.com/fanout/fanout/internal/redisurl"
)

// TestScenariosOnCluster runs the protocol's scenarios on a Redis Cluster
// of three primaries and three replicas, with the prefix "{fanout}:": every
// script's keys share one slot, and the reap script, which builds lease key
// names from the prefix without declaring them, reaches keys of that slot.
// Cluster refuses a script that touches keys of another slot, so this is
// what proves the scripts work there.
func TestScenariosOnCluster(t *testing.T) {
	c := redistest.NeedCluster(t)
	onCluster = c
	defer func() { onCluster = nil }()
	for _, sc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"PublishAndTaskKey", TestPublishAndTaskKey},
		{"ClaimLifecycle", TestClaimLifecycle},
		{"ConcurrentClaimsNeverShareASlot", TestConcurrentClaimsNeverShareASlot},
		{"ExpiredLeaseReturnsSlot", TestExpiredLeaseReturnsSlot},
		{"FailVerdicts", TestFailVerdicts},
		{"NewGenerationSupersedes", TestNewGenerationSupersedes},
		{"HeartbeatsAndStatus", TestHeartbeatsAndStatus},
		{"OfferSlotsSkipsClaimed", TestOfferSlotsSkipsClaimed},
		{"PrefixIsolates", TestPrefixIsolates},
		{"PartialSources", TestPartialSources},
		{"GenerationNamedByIDAndDigest", TestGenerationNamedByIDAndDigest},
		{"PublishFloor", TestPublishFloor},
		{"HeartbeatReasserts", TestHeartbeatReasserts},
		{"LightHeartbeat", TestLightHeartbeat},
		{"Bypass", TestBypass},
		{"BypassRefusesWholeRelay", TestBypassRefusesWholeRelay},
		{"ExtraClaimSkipsOwnPuller", TestExtraClaimSkipsOwnPuller},
		{"LeaseRecreated", TestLeaseRecreated},
		{"DeadSlotBackoff", TestDeadSlotBackoff},
		{"RepairClaimAndDrift", TestRepairClaimAndDrift},
		{"CorruptGeneration", TestCorruptGeneration},
		{"ClockSkewIrrelevant", TestClockSkewIrrelevant},
		{"SeveralClaims", TestSeveralClaims},
		{"CompleteHistoryRoundsProgressEvents", TestCompleteHistoryRoundsProgressEvents},
		{"Notifications", TestNotifications},
		{"Silent", TestSilent},
		{"ZoneClaims", TestZoneClaims},
		{"ZoneReapForgetPublish", TestZoneReapForgetPublish},
		{"ZoneCrossesOnce", TestZoneCrossesOnce},
	} {
		t.Run(sc.name, sc.fn)
	}
}

// eachOnCluster is each on the cluster c.
func eachOnCluster(t *testing.T, c *redistest.Cluster, lease time.Duration, fn func(t *testing.T, f *fixture)) {
	t.Helper()
	target, err := redisurl.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := target.Client()
	t.Cleanup(func() { rdb.Close() })
	cc := rdb.(*redis.ClusterClient)
	if err := cc.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error {
		return n.FlushAll(ctx).Err()
	}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, srv: redistest.Server{Name: "cluster", URL: c.URL}, rdb: rdb, now: time.Now()}
	f.c = New(rdb, Config{Prefix: "{fanout}:", LeaseTTL: lease, HostGrace: 30 * time.Second, Now: f.clock})
	fn(t, f)
}

// TestClusterKeyspaceAfterFailover: on Cluster the master's subscription
// to the task key's keyspace channel reaches the node that owns the key,
// and after that node is killed and its replica promoted (keyspace events
// were turned on on every node), SET task wakes the master again through
// the new owner.
func TestClusterKeyspaceAfterFailover(t *testing.T) {
	cl := redistest.NeedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	target, err := redisurl.Parse(cl.URL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := target.Client()
	defer rdb.Close()
	c := New(rdb, Config{Prefix: "{fanout}:"})
	if err := c.EnableKeyspaceEvents(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := c.Subscribe(ctx, c.Keys().MasterChannel(), c.TaskKeyspaceChannel())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := c.SetTask(ctx, "/data/one", TaskOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.C:
	case <-ctx.Done():
		t.Fatal("SET task did not wake the subscriber on Cluster")
	}
	old := cl.KillSlotPrimary(t, "{fanout}")
	if _, err := cl.WaitFailover(ctx, "{fanout}", old); err != nil {
		t.Fatal(err)
	}
	// The subscription reconnects to the new owner once the client has
	// reloaded its slot map; SET until a notification comes.
	for {
		if err := c.SetTask(ctx, "/data/two", TaskOptions{}); err != nil && ctx.Err() != nil {
			t.Fatalf("SET task after the failover: %v", err)
		}
		select {
		case <-n.C:
			return
		case <-ctx.Done():
			t.Fatal("no keyspace notification from the promoted replica")
		case <-time.After(500 * time.Millisecond):
		}
	}
}
