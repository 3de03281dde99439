package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// soakOptions are the flags of the soak mode: keymux alone at one
// concurrency for a long time, its RSS and goroutines sampled.
type soakOptions struct {
	duration time.Duration
	sample   time.Duration
	warmup   time.Duration
	conc     int
	maxDrift float64
}

func (s *soakOptions) register(fs *flag.FlagSet) {
	fs.DurationVar(&s.duration, "soak", 0, "soak mode: load keymux alone for this long (no no-op server, no table of ratios); 0: off")
	fs.DurationVar(&s.sample, "soak-sample", 30*time.Second, "soak mode: sampling period of keymux's RSS and goroutines")
	fs.DurationVar(&s.warmup, "soak-warmup", 2*time.Minute, "soak mode: samples taken before this are shown but not judged (the heap grows to its steady state: the access-log ledger keeps each booked call id for its entry wait)")
	fs.IntVar(&s.conc, "soak-concurrency", 64, "soak mode: concurrent streams")
	fs.Float64Var(&s.maxDrift, "soak-max-drift", 0.10, "soak mode: fail when RSS or goroutines move further than this fraction from the first sample")
}

func (s *soakOptions) check() error {
	if s.sample <= 0 || s.conc < 1 || s.maxDrift <= 0 || s.warmup < 0 || s.duration < s.warmup+s.sample {
		return errors.New("-soak must be >= -soak-warmup + -soak-sample, -soak-sample > 0, -soak-warmup >= 0, -soak-concurrency >= 1, -soak-max-drift > 0")
	}
	return nil
}

// soakSample is keymux's state after one sampling period.
type soakSample struct {
	at         time.Duration
	requests   int
	rate       float64
	p50, p99   time.Duration
	rssKB      int
	goroutines int
}

// runSoak starts keymux as runLoad does (with --pprof, for its goroutine
// count), warms it, then sends requests from so.conc streams for
// so.duration; after every so.sample it prints a row (requests, rate,
// latency, RSS, goroutines). Any failed request ends the soak with an
// error, as does RSS or goroutines drifting more than so.maxDrift from the
// first sample taken after so.warmup, or (with the access log played) an
// entry keymux did not book with its call.
func runSoak(ctx context.Context, o options, so soakOptions, stdout, stderr io.Writer) (err error) {
	km, pprofAddr, stopKeymux, err := startKeymux(ctx, o, nil, true, stderr)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopKeymux()) }()
	x := newExchange()
	if o.warmup > 0 {
		if _, _, err := phase(ctx, km, x, 1, time.Hour, o.warmup); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	alsNote := "an access-log entry per request"
	if !o.accessLog {
		alsNote = "no access log"
	}
	fmt.Fprintf(stdout, "soak: keymux, %d keys, concurrency %d, %s, %s, a row every %s\n\n", o.keys, so.conc, alsNote, so.duration, so.sample)
	fmt.Fprintln(stdout, "| t | requests | req/s | p50 / p99 (ms) | RSS (MB) | goroutines |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|---|")
	var samples []soakSample
	start := time.Now()
	for time.Since(start)+so.sample/2 < so.duration {
		lat, wall, err := phase(ctx, km, x, so.conc, so.sample, 0)
		if err != nil {
			return fmt.Errorf("after %s: %w", time.Since(start).Round(time.Second), err)
		}
		r := result{lat: lat, wall: wall}
		s := soakSample{at: time.Since(start), requests: len(lat), rate: r.throughput(), p50: r.quantile(.5), p99: r.quantile(.99)}
		if s.rssKB, err = rssKB(km.cmd.Process.Pid); err != nil {
			return err
		}
		if s.goroutines, err = goroutines(ctx, pprofAddr); err != nil {
			return err
		}
		samples = append(samples, s)
		fmt.Fprintf(stdout, "| %s | %d | %.0f | %.2f / %.2f | %.1f | %d |\n", s.at.Round(time.Second), s.requests, s.rate,
			float64(s.p50)/1e6, float64(s.p99)/1e6, float64(s.rssKB)/1024, s.goroutines)
	}
	if err := soakVerdict(stdout, samples, so.warmup, so.maxDrift); err != nil {
		return err
	}
	return km.checkJoin(ctx, stdout)
}

// soakVerdict prints how far RSS and goroutines moved from the first
// sample taken after warmup, and fails past maxDrift.
func soakVerdict(w io.Writer, samples []soakSample, warmup time.Duration, maxDrift float64) error {
	total := 0
	for _, s := range samples {
		total += s.requests
	}
	for len(samples) > 0 && samples[0].at < warmup {
		samples = samples[1:]
	}
	if len(samples) == 0 {
		return errors.New("no sample after the warm-up")
	}
	first := samples[0]
	rss := drift(samples, func(s soakSample) int { return s.rssKB })
	gor := drift(samples, func(s soakSample) int { return s.goroutines })
	fmt.Fprintf(w, "\n%d requests, no error; from %s on: RSS %.1f MB, then %+.1f%% / %+.1f%% at the extremes; goroutines %d, %+.1f%% / %+.1f%%\n",
		total, first.at.Round(time.Second), float64(first.rssKB)/1024, 100*rss[0], 100*rss[1], first.goroutines, 100*gor[0], 100*gor[1])
	for _, d := range []struct {
		what string
		lo   float64
		hi   float64
	}{{"RSS", rss[0], rss[1]}, {"goroutines", gor[0], gor[1]}} {
		// The limit is inclusive: 20 → 22 goroutines is +10% (in floating
		// point a hair above 0.10).
		if -d.lo > maxDrift+driftSlack || d.hi > maxDrift+driftSlack {
			return fmt.Errorf("%s moved %+.1f%% / %+.1f%% from the first sample after the warm-up (limit ±%.0f%%)", d.what, 100*d.lo, 100*d.hi, 100*maxDrift)
		}
	}
	return nil
}

// driftSlack absorbs floating-point error in the drift's comparison.
const driftSlack = 1e-9

// drift is the lowest and highest relative change of f from the first
// sample.
func drift(samples []soakSample, f func(soakSample) int) [2]float64 {
	base := float64(f(samples[0]))
	var lo, hi float64
	for _, s := range samples[1:] {
		d := float64(f(s))/base - 1
		lo, hi = min(lo, d), max(hi, d)
	}
	return [2]float64{lo, hi}
}

// rssKB is the resident set of process pid (Linux /proc).
func rssKB(pid int) (int, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("RSS of keymux: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, errors.New("RSS of keymux: no VmRSS line")
}

// goroutines reads keymux's goroutine count from its pprof endpoint.
func goroutines(ctx context.Context, addr string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("goroutines of keymux: %w", err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("goroutines of keymux: %w", err)
	}
	n, ok := strings.CutPrefix(strings.TrimSpace(line), "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("goroutines of keymux: unexpected first line %q", line)
	}
	return strconv.Atoi(n)
}
