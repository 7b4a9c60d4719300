// Command fanout-minion keeps a verified copy of the current fanout task on
// this host and serves it to peers. See "fanout-minion --help".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fanout/fanout/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Minion(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
