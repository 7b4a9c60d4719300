// Package freeport picks loopback ports for servers that tests and
// benchmarks start as child processes, which must be told their port
// before they bind it.
//
// The usual trick, binding port 0 and closing the socket, hands out a
// port from the kernel's ephemeral range: the kernel may give the same
// port to the next caller, or to an outgoing connection, before the child
// binds it, and the child then fails with "address already in use". Port
// picks instead from below the ephemeral range, which the kernel never
// hands out by itself, checks the port is free, and never gives the same
// port twice in one process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the lowest port picked: above the well-known and most
// registered service ports.
const lowest = 10000

// picker remembers the ports handed out by this process.
type picker struct {
	mu    sync.Mutex
	given map[int]bool
}

// ports is the one picker of the process: the ports it has handed out
// belong to the whole process, whichever test asked for them.
var ports = &picker{given: map[int]bool{}}

// Port returns a TCP port free on host (an IP address) that this process
// has not handed out before.
func Port(host string) (int, error) { return ports.pick(host, ephemeralStart()) }

// Addr returns a free 127.0.0.1 address, "127.0.0.1:PORT".
func Addr() (string, error) {
	p, err := Port("127.0.0.1")
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// pick tries random ports in [lowest, below), falling back to one from the
// kernel when the range is too small (a machine whose ephemeral range
// starts low).
func (p *picker) pick(host string, below int) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if below-lowest >= 1000 {
		for range 200 {
			port := lowest + rand.IntN(below-lowest)
			if p.given[port] || !free(host, port) {
				continue
			}
			p.given[port] = true
			return port, nil
		}
	}
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return 0, fmt.Errorf("find a free port on %s: %w", host, err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !p.given[port] {
			p.given[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("find a free port on %s: every port tried was taken", host)
}

// free reports whether port can be bound on host now.
func free(host string, port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// ephemeralStart returns the first port of the kernel's ephemeral range,
// or Linux's default when it cannot be read.
func ephemeralStart() int {
	const linuxDefault = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return linuxDefault
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return linuxDefault
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= 0 {
		return linuxDefault
	}
	return n
}
