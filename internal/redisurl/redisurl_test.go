package redisurl

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestParse(t *testing.T) {
	tests := []struct {
		url  string
		kind Kind
		tls  bool
		want redis.UniversalOptions // the fields compared: Addrs, MasterName, DB, users and passwords
	}{
		{"redis://127.0.0.1:6379/0", Single, false, redis.UniversalOptions{Addrs: []string{"127.0.0.1:6379"}}},
		{"redis://u:p%40ss@redis.internal/10", Single, false, redis.UniversalOptions{Addrs: []string{"redis.internal:6379"}, DB: 10, Username: "u", Password: "p@ss"}},
		{"rediss://:secret@10.0.0.1:6380/2?dial_timeout=3s", Single, true, redis.UniversalOptions{Addrs: []string{"10.0.0.1:6380"}, DB: 2, Password: "secret"}},
		{"redis://[::1]:7000", Single, false, redis.UniversalOptions{Addrs: []string{"[::1]:7000"}}},
		{"unix:///run/redis.sock?db=3", Single, false, redis.UniversalOptions{Addrs: []string{"/run/redis.sock"}, DB: 3}},
		{"redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3/mymaster", Sentinel, false,
			redis.UniversalOptions{Addrs: []string{"10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"}, MasterName: "mymaster"}},
		{"redis+sentinel://fanout:pw@[::1]:26379,h2:26380/mymaster/7?sentinel_password=spw&sentinel_username=su", Sentinel, false,
			redis.UniversalOptions{Addrs: []string{"[::1]:26379", "h2:26380"}, MasterName: "mymaster", DB: 7, Username: "fanout", Password: "pw", SentinelUsername: "su", SentinelPassword: "spw"}},
		{"rediss+sentinel://:pw@h1:26379/m/", Sentinel, true, redis.UniversalOptions{Addrs: []string{"h1:26379"}, MasterName: "m", Password: "pw"}},
		{"redis+cluster://h1:7000,h2:7001,h3", Cluster, false, redis.UniversalOptions{Addrs: []string{"h1:7000", "h2:7001", "h3:6379"}, IsClusterMode: true}},
		{"rediss+cluster://u:pw@h1:7000/", Cluster, true, redis.UniversalOptions{Addrs: []string{"h1:7000"}, Username: "u", Password: "pw", IsClusterMode: true}},
		{"redis+cluster://h1:7000/0", Cluster, false, redis.UniversalOptions{Addrs: []string{"h1:7000"}, IsClusterMode: true}},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			got, err := Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tt.kind || got.TLS != tt.tls || (got.Options.TLSConfig != nil) != tt.tls {
				t.Errorf("kind %v tls %v (config %v), want %v tls %v", got.Kind, got.TLS, got.Options.TLSConfig != nil, tt.kind, tt.tls)
			}
			o := got.Options
			if strings.Join(o.Addrs, " ") != strings.Join(tt.want.Addrs, " ") || o.MasterName != tt.want.MasterName || o.DB != tt.want.DB ||
				o.Username != tt.want.Username || o.Password != tt.want.Password ||
				o.SentinelUsername != tt.want.SentinelUsername || o.SentinelPassword != tt.want.SentinelPassword ||
				o.IsClusterMode != tt.want.IsClusterMode {
				t.Errorf("options\n got %+v\nwant %+v", o, tt.want)
			}
			if got.DB() != tt.want.DB {
				t.Errorf("DB() = %d", got.DB())
			}
			c := got.Client()
			defer c.Close()
			var want string
			switch tt.kind {
			case Cluster:
				want = "*redis.ClusterClient"
			default:
				want = "*redis.Client" // the failover client is one too
			}
			if typ := typeName(c); typ != want {
				t.Errorf("client %s, want %s", typ, want)
			}
		})
	}
}

func typeName(c redis.UniversalClient) string {
	switch c.(type) {
	case *redis.ClusterClient:
		return "*redis.ClusterClient"
	case *redis.Client:
		return "*redis.Client"
	}
	return "other"
}

// TestParseErrors: a bad URL is one message that names it (password
// hidden), says what is wrong and gives an example of its form.
func TestParseErrors(t *testing.T) {
	tests := []struct{ url, want, example string }{
		{"127.0.0.1:6379", "no scheme", ExampleSingle},
		{"http://x", `unknown scheme "http"`, ExampleSingle},
		{"redis://u:hunter2@h:notaport/0", "invalid port", ExampleSingle},
		{"redis://u:hunter2@h:6379/x", "invalid database number", ExampleSingle},
		{"redis://h:6379/0?frob=1", "unexpected option: frob", ExampleSingle},
		{"redis+sentinel://u:hunter2@h1:26379,h2:26379", "no master name", ExampleSentinel},
		{"redis+sentinel://h1:26379/m/1/2", "want /MASTERNAME or /MASTERNAME/DB", ExampleSentinel},
		{"redis+sentinel://h1:26379/m/x", `database "x" is not a number`, ExampleSentinel},
		{"redis+sentinel:///m", "no host", ExampleSentinel},
		{"redis+sentinel://h1:26379,,h2/m", "empty host", ExampleSentinel},
		{"redis+sentinel://h1:26379/m?sentinel_password=hunter2&pool=3", "unknown query parameter pool", ExampleSentinel},
		{"redis+cluster://h1:99999", `port "99999"`, ExampleCluster},
		{"redis+cluster://::1", "brackets", ExampleCluster},
		{"redis+cluster://:hunter2@h1:7000/3", "only database 0", ExampleCluster},
		{"redis+cluster://h1:7000?x=1", "a Cluster URL takes none", ExampleCluster},
		{"rediss+cluster://h1:7000#frag", "fragment", ExampleCluster},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			_, err := Parse(tt.url)
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "--redis "+Redact(tt.url)+": ") || !strings.Contains(msg, tt.want) || !strings.Contains(msg, "(example: "+tt.example+")") {
				t.Errorf("error %q: want it to name the URL, say %q and give the example %s", msg, tt.want, tt.example)
			}
			if strings.Contains(msg, "hunter2") {
				t.Errorf("error %q shows the password", msg)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"},
		{"redis://u:pw@h:6379/1", "redis://u:xxxxx@h:6379/1"},
		{"redis://:pw@h", "redis://:xxxxx@h"},
		{"redis://user@h", "redis://user@h"},
		{"redis+sentinel://u:p@ss@h1,h2/m?sentinel_password=s&x=1", "redis+sentinel://u:xxxxx@h1,h2/m?sentinel_password=xxxxx&x=1"},
		{"rediss+cluster://:pw@[::1]:7000,h2?Password=z#f", "rediss+cluster://:xxxxx@[::1]:7000,h2?Password=xxxxx#f"},
		{"not a url", "not a url"},
	}
	for _, tt := range tests {
		if got := Redact(tt.in); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
