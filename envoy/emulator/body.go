package emulator

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errBodyStopped is what a read of the client's body returns once the
// handler is done with it.
var errBodyStopped = errors.New("emulator: request body read after the request ended")

// downstreamBody guards the client's request body. net/http's HTTP/1.1
// server in full-duplex mode has two traps: a read of Request.Body after
// the handler returned races with the server's own reads of the connection
// ("invalid concurrent Body.Read call"), and so does the post-handler drain
// of an unread body, which reaches the end of the body after the server
// stopped its background read (golang/go#68560). So every read goes through
// here: reads are serialised, stop ends them before the handler returns,
// and requestComplete reads a leftover body to its end inside the handler.
type downstreamBody struct {
	r  io.Reader
	rc *http.ResponseController
	n  *int64 // bytes received, for the access log

	mu       sync.Mutex
	cond     *sync.Cond
	reading  bool
	stopped  bool
	eof      bool
	eofAt    time.Time
	broken   bool // a read failed: where the body ends is unknown
	received int64
}

func newDownstreamBody(r io.Reader, rc *http.ResponseController, n *int64) *downstreamBody {
	b := &downstreamBody{r: r, rc: rc, n: n}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *downstreamBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	for b.reading {
		b.cond.Wait()
	}
	switch {
	case b.eof:
		b.mu.Unlock()
		return 0, io.EOF
	case b.stopped:
		b.mu.Unlock()
		return 0, errBodyStopped
	}
	b.reading = true
	b.mu.Unlock()

	n, err := b.r.Read(p)

	b.mu.Lock()
	b.reading = false
	b.received += int64(n)
	atomic.AddInt64(b.n, int64(n))
	switch {
	case errors.Is(err, io.EOF):
		b.eof = true
		b.eofAt = time.Now()
	case err != nil:
		b.broken = true
	}
	b.cond.Broadcast()
	b.mu.Unlock()
	return n, err
}

// stop ends reading: a read in progress (a STREAMED pump or the upstream
// transport blocked on the client) is interrupted and waited for, later
// reads fail without touching the connection.
func (b *downstreamBody) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopped = true
	if !b.reading {
		return
	}
	_ = b.rc.SetReadDeadline(time.Now())
	for b.reading {
		b.cond.Wait()
	}
	_ = b.rc.SetReadDeadline(time.Time{})
}

// done reports whether the body was read to its end.
func (b *downstreamBody) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}

// drain reads the rest of the body as long as no more than limit bytes were
// received in all; it reports whether the end was reached.
func (b *downstreamBody) drain(limit int64) bool {
	buf := make([]byte, 32<<10)
	for {
		b.mu.Lock()
		eof, broken, got := b.eof, b.broken, b.received
		b.mu.Unlock()
		switch {
		case eof:
			return true
		case broken || got > limit:
			return false
		}
		// Never more than one byte past the limit.
		if _, err := b.Read(buf[:min(int64(len(buf)), limit-got+1)]); err != nil && !errors.Is(err, io.EOF) {
			return false
		}
	}
}

// requestComplete is called as the response headers go out and reports
// whether the request is complete, which keeps the connection alive. Envoy
// closes an HTTP/1.1 connection (Connection: close) whose request is not
// complete when the response starts; meanwhile the body keeps arriving into
// the filter manager's buffer, up to the buffer limit. So a body nobody else
// is reading is read to its end here, within the buffer limit; a body
// beyond it, one a STREAMED pump or the upstream request is still reading,
// or one the client waits a 100 Continue for, makes the reply close the
// connection. Either way net/http never drains the body after the handler.
func (rq *request) requestComplete() bool {
	b := rq.down
	if b == nil || b.done() {
		return true
	}
	if rq.aborted.Load() || rq.reqPump.Load() || rq.upReads.Load() {
		return false
	}
	b.mu.Lock()
	untouched := b.received == 0
	b.mu.Unlock()
	if untouched && strings.EqualFold(rq.r.Header.Get("Expect"), "100-continue") {
		return false
	}
	limit := int64(rq.bufferLimit())
	if rq.r.ContentLength > limit {
		return false
	}
	return b.drain(limit)
}

// eofTime is when the client's body ended (zero: it did not).
func (b *downstreamBody) eofTime() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eofAt
}
