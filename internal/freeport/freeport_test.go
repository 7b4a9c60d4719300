package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPortBelowEphemeralAndNeverTwice(t *testing.T) {
	below := ephemeralStart()
	seen := map[int]bool{}
	for range 300 {
		port, err := Port("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d handed out twice", port)
		}
		seen[port] = true
		if below-lowest >= 1000 && (port < lowest || port >= below) {
			t.Fatalf("port %d outside [%d, %d): the kernel may hand it to another socket", port, lowest, below)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatalf("port %d is not free: %v", port, err)
		}
		ln.Close()
	}
}

func TestPickSkipsBusyPorts(t *testing.T) {
	// A range of 1000 ports with a listener on one of them: the busy port
	// is never handed out, nor is any port twice.
	p := &picker{given: map[int]bool{}}
	below := lowest + 1000
	busy, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(lowest+500))
	if err != nil {
		t.Skipf("cannot hold port %d for the test: %v", lowest+500, err)
	}
	defer busy.Close()
	for range 900 {
		port, err := p.pick("127.0.0.1", below)
		if err != nil {
			t.Fatal(err)
		}
		if port == lowest+500 {
			t.Fatalf("handed out port %d, which a listener holds", port)
		}
	}
	if len(p.given) != 900 {
		t.Fatalf("%d distinct ports for 900 picks", len(p.given))
	}
}

func TestPickFallsBackToKernel(t *testing.T) {
	p := &picker{given: map[int]bool{}}
	port, err := p.pick("127.0.0.1", lowest+10) // range too small to pick in
	if err != nil {
		t.Fatal(err)
	}
	if port < lowest+10 && port >= lowest {
		t.Fatalf("port %d picked from a range too small to use", port)
	}
	if !p.given[port] {
		t.Fatalf("port %d not remembered", port)
	}
}
