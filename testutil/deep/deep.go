// Package deep builds deeply nested inputs for tests of parsers of outside
// input and measures the goroutine stack a parser needs for them.
package deep

import (
	"runtime"
	"strings"
)

// Arrays returns levels nested JSON arrays around inner:
// Arrays(2, "1") = "[[1]]".
func Arrays(levels int, inner string) []byte {
	return wrap(levels, "[", inner, "]")
}

// Objects returns levels nested JSON objects (member "a") around inner:
// Objects(2, "1") = `{"a":{"a":1}}`.
func Objects(levels int, inner string) []byte {
	return wrap(levels, `{"a":`, inner, "}")
}

// Body returns a request body whose "messages" member nests arrays until
// the body is size bytes long (at least the wrapper's length).
func Body(size int) []byte {
	const head, tail = `{"model":"gpt-4o","messages":`, `}`
	levels := max(1, (size-len(head)-len(tail))/2)
	b := make([]byte, 0, len(head)+2*levels+len(tail))
	b = append(b, head...)
	b = append(b, strings.Repeat("[", levels)...)
	b = append(b, strings.Repeat("]", levels)...)
	return append(b, tail...)
}

func wrap(levels int, open, inner, close string) []byte {
	b := make([]byte, 0, levels*(len(open)+len(close))+len(inner))
	b = append(b, strings.Repeat(open, levels)...)
	b = append(b, inner...)
	return append(b, strings.Repeat(close, levels)...)
}

// StackGrowth runs f on a fresh goroutine and returns by how many bytes
// the runtime's stack memory grew while it ran (0 when it did not). A
// parser that recurses once per nesting level needs hundreds of bytes per
// level, so on inputs millions of levels deep the growth is hundreds of
// MiB; an iterative one stays within the goroutine's first few KiB.
func StackGrowth(f func()) uint64 {
	done := make(chan uint64)
	go func() {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after) // the grown stack is still this goroutine's
		done <- after.StackInuse - min(after.StackInuse, before.StackInuse)
	}()
	return <-done
}
