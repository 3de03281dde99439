package emulator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// HTTP/1.1 upgrades (WebSocket and any other Upgrade token), as Envoy's
// HTTP connection manager and router handle them:
//
//   - an upgrade is allowed when the route first selected for the request
//     enables its type in RouteAction.upgrade_configs, or, without a word
//     from the route, when the HCM's upgrade_configs has an entry for it
//     (enabled by default); the type is compared case-insensitively;
//   - a refused upgrade gets a 403 with no body, before any filter runs,
//     and the connection closes (details upgrade_failed);
//   - the filters see the request headers with the upgrade and connection
//     headers, and end_of_stream false: the upgraded stream is the request
//     body;
//   - the router sends the upgrade upstream; a 101 answer goes back through
//     the encoder filters (end_of_stream false) and then bytes are piped
//     both ways, untouched, until either side closes.

// upgradeTypes are the HCM's upgrade_configs: type (lower case) → enabled.
func upgradeTypes(hcm *hcmv3.HttpConnectionManager) (map[string]bool, error) {
	out := map[string]bool{}
	for i, uc := range hcm.GetUpgradeConfigs() {
		if len(uc.GetFilters()) > 0 {
			return nil, fmt.Errorf("upgrade_configs[%d]: filters are not emulated", i)
		}
		out[strings.ToLower(uc.GetUpgradeType())] = uc.GetEnabled() == nil || uc.GetEnabled().GetValue()
	}
	return out, nil
}

// upgradeOf is the Upgrade token of an HTTP/1.1 upgrade request, "" when r
// is none. An h2c upgrade (curl --http2 on http://) is none: Envoy's HTTP/1
// codec strips it and serves the request as HTTP/1.1.
func upgradeOf(r *http.Request) string {
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Header.Get("Upgrade") == "" || strings.EqualFold(r.Header.Get("Upgrade"), "h2c") {
		return ""
	}
	for _, v := range r.Header.Values("Connection") {
		for t := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), "upgrade") {
				return r.Header.Get("Upgrade")
			}
		}
	}
	return ""
}

// upgradeAllowed applies HttpConnectionManagerConfig::createUpgradeFilterChain:
// the route's word first, then the HCM's.
func (e *Emulator) upgradeAllowed(typ string, rt *route) bool {
	typ = strings.ToLower(typ)
	if rt != nil {
		for _, uc := range rt.cfg.GetRoute().GetUpgradeConfigs() {
			if strings.EqualFold(uc.GetUpgradeType(), typ) {
				if uc.GetEnabled() != nil && !uc.GetEnabled().GetValue() {
					return false
				}
				return true
			}
		}
	}
	return e.upgrades[typ]
}

// refuseUpgrade is the HCM's 403 for an upgrade no configuration allows.
func (rq *request) refuseUpgrade() {
	rq.closeConn = true
	rq.sendLocal(&localReply{status: http.StatusForbidden, details: "upgrade_failed"})
}

// errUpgradeBody: an ext_proc filter would process the body of an upgrade.
var errUpgradeBody = errors.New("the upgraded stream would be sent to ext_proc as a body")

// upgradeStall is Envoy's fate for an upgrade whose request body an ext_proc
// filter would process (BUFFERED or STREAMED after the headers): the filter
// waits for a body the client sends only after the 101 (envoyproxy/envoy
// issues 47048 and 47081), until stream_idle_timeout. The emulator answers
// that timeout's 408 at once.
func (s *session) upgradeStall() *localReply {
	s.log("ext_proc request body mode is not NONE on an upgrade: Envoy stalls the stream", "err", errUpgradeBody)
	return &localReply{status: http.StatusRequestTimeout, body: []byte("stream timeout"), details: "stream_idle_timeout"}
}

// tunnel pipes an accepted upgrade: the 101 and its headers go to the client
// on the hijacked connection, then bytes flow both ways until either side
// closes (or the emulator closes).
func (rq *request) tunnel(h *headerMap, up io.ReadWriteCloser) {
	conn, brw, err := http.NewResponseController(rq.w).Hijack()
	if err != nil {
		_ = up.Close()
		rq.resetConn = true
		return
	}
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	for _, f := range h.fields {
		if strings.HasPrefix(f.key, ":") || (hopByHop[f.key] && f.key != "upgrade" && f.key != "connection") {
			continue
		}
		head.WriteString(http.CanonicalHeaderKey(f.key) + ": " + f.value + "\r\n")
	}
	if rq.e.hcm.GetServerHeaderTransformation() != hcmv3.HttpConnectionManager_PASS_THROUGH {
		if _, ok := h.get("server"); !ok || rq.e.hcm.GetServerHeaderTransformation() == hcmv3.HttpConnectionManager_OVERWRITE {
			head.WriteString("Server: " + rq.e.serverName + "\r\n")
		}
	}
	head.WriteString("\r\n")
	rq.info.status = http.StatusSwitchingProtocols
	rq.info.respHeaders = h
	rq.wrote, rq.tunneled = true, true
	li := rq.info
	if _, err := conn.Write(head.Bytes()); err != nil {
		_ = conn.Close()
		_ = up.Close()
		return
	}
	li.at(&li.firstDownstreamTx)
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = conn.Close()
			_ = up.Close()
		})
	}
	stop := context.AfterFunc(rq.ctx, closeBoth) // emulator shutdown
	defer stop()
	var rx, tx atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // client → upstream (bytes Go's server buffered first)
		defer wg.Done()
		n, _ := io.Copy(up, brw.Reader)
		rx.Add(n)
		closeBoth()
	}()
	go func() { // upstream → client
		defer wg.Done()
		n, _ := io.Copy(conn, up)
		tx.Add(n)
		closeBoth()
	}()
	wg.Wait()
	li.mu.Lock()
	li.bytesReceived += rx.Load()
	li.bytesSent += tx.Load()
	li.mu.Unlock()
	li.at(&li.lastUpstreamRx)
	li.at(&li.lastDownstreamTx)
}
