package objects

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestConsulRunWithoutConsul: an unreachable Consul is retried with backoff
// until the context ends (no panic, no busy loop), and nothing is synced.
func TestConsulRunWithoutConsul(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // a port nothing listens on
	client, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	c := NewConsul(client, "keymux-objects/", NewTable(), nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil at the end of its context", err)
	}
	select {
	case <-c.Synced():
		t.Fatal("synced without Consul")
	default:
	}
}
