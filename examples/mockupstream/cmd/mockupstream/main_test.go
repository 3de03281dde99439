package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		auth       string
		wantStatus int
	}{
		{"any key", []string{"-listen", "127.0.0.1:0"}, "Bearer sk-test-any", 200},
		{"allow-list refuses", []string{"-listen", "127.0.0.1:0", "-keys", "sk-test-a,sk-test-b"}, "Bearer sk-test-c", 401},
		{"allow-list accepts", []string{"-listen", "127.0.0.1:0", "-keys", "sk-test-a,sk-test-b"}, "Bearer sk-test-b", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				err := run(ctx, tc.args, pw, io.Discard)
				pw.Close()
				done <- err
			}()
			url, err := bufio.NewReader(pr).ReadString('\n')
			if err != nil {
				t.Fatalf("reading the URL: %v", err)
			}
			url = strings.TrimSpace(url)
			if !strings.HasPrefix(url, "http://127.0.0.1:") {
				t.Fatalf("printed %q", url)
			}
			go func() { _, _ = io.Copy(io.Discard, pr) }()
			req, _ := http.NewRequestWithContext(t.Context(), "GET", url+"/v1/models", nil)
			req.Header.Set("authorization", tc.auth)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	if err := run(t.Context(), []string{"-listen", "256.0.0.1:x"}, io.Discard, io.Discard); err == nil {
		t.Error("a bad -listen address was accepted")
	}
}
