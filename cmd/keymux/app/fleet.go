package app

import "github.com/keymux/keymux/fleet"

// newFleet creates the fleet part (standalone without --consul: the whole
// limits, nothing shared) and adds its metrics to /metrics.
func (sc *sidecar) newFleet(o serveOptions) error {
	f, err := fleet.New(fleet.Config{Store: sc.store, Consul: sc.consul, Prefix: o.consulPrefix, Logger: sc.log})
	if err != nil {
		return err
	}
	sc.fleet = f
	return sc.tel.RegisterCollector(f)
}
