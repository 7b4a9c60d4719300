// Command fanout-master publishes a file or directory tree to every fanout
// host and serves as its first source. See "fanout-master --help".
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
	code := cli.Master(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
