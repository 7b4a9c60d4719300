// Package sdnotify tells systemd a service is ready (Type=notify units).
package sdnotify

import (
	"fmt"
	"net"
)

// Notify sends state (such as "READY=1") to the systemd notification
// socket; an empty socket (not started by systemd) does nothing. An
// abstract socket is written with a leading "@", as systemd does.
func Notify(socket, state string) error {
	if socket == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: socket, Net: "unixgram"}
	if socket[0] == '@' {
		addr.Name = "\x00" + socket[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("notify systemd at %s: %w", socket, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd at %s: %w", socket, err)
	}
	return nil
}
