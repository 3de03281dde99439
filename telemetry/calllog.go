package telemetry

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCallLogQueue is the call log queue length when Config.CallLogQueue is 0.
const DefaultCallLogQueue = 4096

// CallRecord is one line of the call log (JSON). The first six fields are
// the seed's ApiCallLog; the tokens are present only when the upstream
// reported usage; error is the error class of a failed upstream call or the
// code of a local refusal.
type CallRecord struct {
	KeyID          string  `json:"key_id"`
	Time           string  `json:"time"` // the call's start, RFC 3339 with nanoseconds, UTC
	ModelOriginal  string  `json:"model_original"`
	ModelFinal     string  `json:"model_final"`
	ResponseTimeMS float64 `json:"response_time_ms"` // end - start, µs precision
	Success        bool    `json:"success"`
	Status         int     `json:"status"`
	Operation      string  `json:"operation,omitempty"`
	ClientID       string  `json:"client_id,omitempty"`
	TraceID        string  `json:"trace_id,omitempty"`
	RequestID      string  `json:"request_id,omitempty"`
	InputTokens    *int64  `json:"input_tokens,omitempty"`
	OutputTokens   *int64  `json:"output_tokens,omitempty"`
	Error          string  `json:"error,omitempty"`
	// Attempts counts the upstream attempts of a call Envoy retried on
	// other keys (absent: one); key_id is the last one's.
	Attempts int `json:"attempts,omitempty"`
}

// queued is what End hands to the writer: plain values, formatted off the
// request path.
type queued struct {
	keyID, modelOriginal, modelFinal string
	operation, clientID, requestID   string
	errType                          string
	traceID                          [16]byte
	start, end                       time.Time
	status                           int
	success, usageKnown, hasTrace    bool
	in, out                          int64
	attempts                         int
}

func (q *queued) record() CallRecord {
	r := CallRecord{
		KeyID:         q.keyID,
		Time:          q.start.UTC().Format(time.RFC3339Nano),
		ModelOriginal: q.modelOriginal,
		ModelFinal:    q.modelFinal,
		Success:       q.success,
		Status:        q.status,
		Operation:     q.operation,
		ClientID:      q.clientID,
		RequestID:     q.requestID,
		Error:         q.errType,
		Attempts:      q.attempts,
	}
	if d := q.end.Sub(q.start); d > 0 && !q.start.IsZero() {
		r.ResponseTimeMS = math.Round(float64(d)/float64(time.Microsecond)) / 1000
	}
	if q.hasTrace {
		r.TraceID = hexID(q.traceID[:])
	}
	if q.usageKnown {
		in, out := q.in, q.out
		r.InputTokens, r.OutputTokens = &in, &out
	}
	return r
}

// callLog writes records from one goroutine; a full queue drops.
type callLog struct {
	ch      chan queued
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	closed  atomic.Bool
	dropped atomic.Uint64
	w       *bufio.Writer
	log     *slog.Logger
}

func newCallLog(w io.Writer, queue int, log *slog.Logger) *callLog {
	l := &callLog{
		ch:   make(chan queued, queue),
		stop: make(chan struct{}),
		done: make(chan struct{}),
		w:    bufio.NewWriterSize(w, 64<<10),
		log:  log,
	}
	go l.run()
	return l
}

// enqueue reports false when the record was dropped.
func (l *callLog) enqueue(q *queued) bool {
	if l.closed.Load() {
		l.dropped.Add(1)
		return false
	}
	select {
	case l.ch <- *q:
		return true
	default:
		l.dropped.Add(1)
		return false
	}
}

func (l *callLog) run() {
	defer close(l.done)
	failing := false
	write := func(q *queued) {
		b, err := json.Marshal(q.record())
		if err == nil {
			b = append(b, '\n')
			_, err = l.w.Write(b)
		}
		if len(l.ch) == 0 && err == nil {
			err = l.w.Flush()
		}
		switch {
		case err != nil && !failing:
			failing = true
			l.log.Error("call log write failed; records are lost until it recovers", "error", err)
		case err == nil && failing:
			failing = false
			l.log.Info("call log writes recovered")
		}
	}
	for {
		select {
		case q := <-l.ch:
			write(&q)
		case <-l.stop:
			for {
				select {
				case q := <-l.ch:
					write(&q)
				default:
					if err := l.w.Flush(); err != nil && !failing {
						l.log.Error("call log flush failed", "error", err)
					}
					return
				}
			}
		}
	}
}

// shutdown stops accepting records, writes the queued ones and flushes.
func (l *callLog) shutdown(ctx context.Context) error {
	l.once.Do(func() {
		l.closed.Store(true)
		close(l.stop)
	})
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

const hexDigits = "0123456789abcdef"

func hexID(b []byte) string {
	out := make([]byte, 2*len(b))
	for i, c := range b {
		out[2*i], out[2*i+1] = hexDigits[c>>4], hexDigits[c&0xf]
	}
	return string(out)
}
