package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/internal/backoff"
)

// Liveness defaults: the member's own check on the local Consul agent.
const (
	// DefaultLivenessTTL is the TTL of the member's check; keymux passes it
	// every LivenessTTL/3, so a killed member's check goes critical (and
	// Consul invalidates its session, deleting its entry) within the TTL.
	DefaultLivenessTTL = 3 * time.Second
	// livenessReap is how long a dead member's critical check (and its
	// service) stays on the agent: Consul's minimum, reaped every 30s.
	livenessReap = time.Minute
	// livenessService names the service the member's check belongs to.
	livenessService = "keymux-member"
)

// liveness is the member's TTL check on the local agent, which the
// membership session depends on: a SIGKILLed member stops passing it, the
// check goes critical after the TTL and Consul invalidates the session at
// once (instead of waiting up to twice the session TTL).
type liveness struct {
	agent *api.Agent
	id    string // service and check id: keymux-member-<member id>
	ttl   time.Duration
}

// newLiveness returns the check of member id with the given TTL.
func newLiveness(client *api.Client, id string, ttl time.Duration) *liveness {
	return &liveness{agent: client.Agent(), id: livenessService + "-" + id, ttl: ttl}
}

// register puts the service and its passing TTL check on the local agent
// (again, when a previous term left it). It needs service:write on
// keymux-member in an ACL-enforcing Consul.
func (l *liveness) register(ctx context.Context) error {
	err := l.agent.ServiceRegisterOpts(&api.AgentServiceRegistration{
		ID:   l.id,
		Name: livenessService,
		Check: &api.AgentServiceCheck{
			CheckID:                        l.id,
			Name:                           "keymux member liveness",
			TTL:                            l.ttl.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: livenessReap.String(),
		},
	}, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("register check %s (needs service:write on %s): %w", l.id, livenessService, err)
	}
	return nil
}

// session returns the checks a membership session depends on: the node's
// serfHealth (Consul's default) and the member's own check.
func (l *liveness) session(se *api.SessionEntry) {
	se.NodeChecks = []string{"serfHealth"}
	se.ServiceChecks = []api.ServiceCheck{{ID: l.id}}
}

// pass keeps the check passing every TTL/3 until ctx ends. A failed update
// is retried at the next tick; if none succeeds within the TTL, the check
// goes critical and the session with it (the term then ends and starts
// again).
func (l *liveness) pass(ctx context.Context, failed func(error)) {
	for backoff.Sleep(ctx, l.ttl/3) {
		if err := l.agent.UpdateTTLOpts(l.id, "", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx)); err != nil && ctx.Err() == nil {
			failed(err)
		}
	}
}

// deregister removes the service and its check, with a short context of its
// own: ctx may be done already.
func (l *liveness) deregister(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := l.agent.ServiceDeregisterOpts(l.id, (&api.QueryOptions{}).WithContext(dctx)); err != nil {
		return fmt.Errorf("deregister check %s: %w", l.id, err)
	}
	return nil
}
