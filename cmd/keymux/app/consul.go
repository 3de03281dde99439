package app

import (
	"context"
	"errors"
	"io"
)

func (sc *sidecar) startConsul(ctx context.Context, o serveOptions) error {
	sc.sourceErr = nil
	return errors.New("--consul: not wired yet")
}

func runKV(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("kv: not wired yet")
}
