package consul_test

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/consul"
	"github.com/keymux/keymux/testutil/bigconfig"
	"github.com/keymux/keymux/testutil/consultest"
)

// BenchmarkEditAtScale is BenchmarkPropagation with 10,000 keys and 20,000
// rules in KV (bigconfig.Shared(10000, 2), written in transactions of 64):
// per edit (rule r0-0 flipped between two targets, every 100 ms) the time
// from the start of the PUT to the store serving it, and the CPU time of
// this process per edit (the source and the store; the Consul agent is
// another process).
//
//	go test ./store/consul -run '^$' -bench EditAtScale -benchtime 50x
func BenchmarkEditAtScale(b *testing.B) {
	a := consultest.Start(b)
	f, err := store.DecodeFile(bigconfig.Shared(10_000, 2))
	if err != nil {
		b.Fatal(err)
	}
	var ops api.TxnOps
	flush := func() {
		if ok, resp, _, err := a.Client().Txn().Txn(ops, nil); err != nil || !ok {
			b.Fatalf("seed: %v %+v", err, resp)
		}
		ops = ops[:0]
	}
	for _, d := range f.Docs() {
		path := prefix + string(d.Kind)
		if d.Kind != store.KindSettings {
			path += "/" + d.ID
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: path, Value: d.Raw}})
		if len(ops) == 64 {
			flush()
		}
	}
	if len(ops) > 0 {
		flush()
	}
	t0 := time.Now()
	r := startSource(b, a, consul.Options{})
	waitStore(b, r.st, "first apply", func() bool { return r.st.Status().Rules == 20_000 })
	b.Logf("first apply of 10,000 keys and 20,000 rules from Consul: %s", time.Since(t0).Round(time.Millisecond))
	const pace = 100 * time.Millisecond
	var total []time.Duration
	cpu, agentCPU := cpuTime(), procCPU(b, a.PID())
	b.ResetTimer()
	for i := range b.N {
		to := []string{"gpt-4o", "o3"}[i%2]
		next := time.Now().Add(pace)
		t0 := time.Now()
		put(b, a, "rules/r0-0", `{"key":"k0","from":"alias-0","to":"`+to+`"}`)
		waitStore(b, r.st, "edit applied", func() bool {
			rule := r.st.Read().Rule("k0", "alias-0")
			return rule != nil && rule.To == to
		})
		total = append(total, time.Since(t0))
		b.StopTimer()
		time.Sleep(time.Until(next)) // pacing between edits, not a readiness wait
		b.StartTimer()
	}
	b.StopTimer()
	cpuPer := float64(cpuTime()-cpu) / float64(time.Millisecond) / float64(b.N)
	agentPer := float64(procCPU(b, a.PID())-agentCPU) / float64(time.Millisecond) / float64(b.N)
	p := func(q float64) float64 {
		s := slices.Clone(total)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(q*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(p(0.50), "p50-ms")
	b.ReportMetric(p(0.99), "p99-ms")
	b.ReportMetric(cpuPer, "cpu-ms/edit")
	b.ReportMetric(agentPer, "consul-cpu-ms/edit")
	b.Logf("%d edits with 10,000 keys in KV: PUT → store p50 %.1f ms, p99 %.1f ms, max %.1f ms; %.1f ms of CPU per edit (the Consul agent: %.1f ms)",
		len(total), p(0.5), p(0.99), p(1), cpuPer, agentPer)
}

// procCPU is the CPU time (user and system) of process pid so far.
func procCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command (which may hold spaces) in parentheses.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// cpuTime is this process's CPU time (user and system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
