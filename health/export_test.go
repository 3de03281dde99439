package health

// AbandonOnStop makes the checker, when its Run ends, leave its Consul
// session and lock behind like a crashed process would.
func (c *Checker) AbandonOnStop() { c.abandon.Store(true) }
