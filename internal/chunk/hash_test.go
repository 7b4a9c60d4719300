package chunk

import "testing"

// TestHashVectors pins Hash to BLAKE3-256 as the reference implementation
// defines it, whatever library computes it: manifests published by any
// version must verify on every other. The input of length n is bytes
// i%251, as in the BLAKE3 test vectors; lengths 0, 1, 64, 1023, 1024,
// 1025, 8192 and 102400 are taken from those. The others straddle lengths
// where implementations change strategy (the SIMD width, a subtree) and
// were computed with lukechampine.com/blake3, the library fanout used
// before github.com/zeebo/blake3.
func TestHashVectors(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"},
		{1, "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"},
		{64, "4eed7141ea4a5cd4b788606bd23f46e212af9cacebacdc7d1f4c6dc7f2511b98"},
		{1023, "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11"},
		{1024, "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"},
		{1025, "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444"},
		{4000, "1f17493b9cae4a64b6d70ef9af6afc268bdf6b3c8e8949a890a01165552e1e2c"},
		{8192, "aae792484c8efe4f19e2ca7d371d8c467ffb10748d8a5a1ae579948f718a2a63"},
		{16385, "1dabe216be2578830263b049de1639f39f05a4da616b9b78c7a5e4e41662fd1f"},
		{102400, "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085"},
		{1<<20 + 3, "dc51e3daeb5dbbb6a3eb12209fbb7cb14a74fc866a4ad82bc7eb703f536c1092"},
	} {
		data := make([]byte, tc.n)
		for i := range data {
			data[i] = byte(i % 251)
		}
		if got := Hash(data).String(); got != tc.want {
			t.Errorf("Hash of %d bytes = %s, want %s", tc.n, got, tc.want)
		}
		// The streaming verifier hashes the same bytes in pieces.
		v := NewVerifier([]Ref{{Len: int64(tc.n), Sum: mustSum(t, tc.want)}})
		for p := data; len(p) > 0; {
			k := min(len(p), 1000)
			if _, err := v.Write(p[:k]); err != nil {
				t.Fatalf("%d bytes: %v", tc.n, err)
			}
			p = p[k:]
		}
		if err := v.Close(); err != nil {
			t.Errorf("verifier of %d bytes: %v", tc.n, err)
		}
	}
}

func mustSum(t *testing.T, s string) Sum {
	t.Helper()
	sum, err := ParseSum(s)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}
