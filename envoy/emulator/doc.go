// Package emulator runs an Envoy v3 bootstrap without Envoy: one HTTP/1.1
// listener with its HTTP connection manager, route table, clusters, access
// log and — above all — the envoy.filters.http.ext_proc filter, talking real
// gRPC to the configured external processor as Envoy does (the project's
// notes on that protocol are in docs/envoy-extproc.md). Tests and
// `keymux dev` drive keymux through it, with the very YAML users deploy
// (envoy/envoy.yaml).
//
//	b, _ := envoy.LoadBootstrap("envoy/envoy.yaml")
//	em, _ := emulator.New(emulator.Config{Bootstrap: b, ListenAddr: "127.0.0.1:0",
//		ClusterAddrs: map[string]string{"keymux_extproc": "unix:/tmp/keymux.sock"}})
//	_ = em.Start(ctx) // listening when it returns
//	defer em.Close()  // aborts in-flight requests, waits for every goroutine
//
// # Envoy version
//
// The emulator follows the Envoy release the project pins (EnvoyVersion,
// 1.39). Behaviours that changed between releases are listed, with the
// release that brought each, in one table (Behaviours in versions.go):
//   - 1.33.1: local replies are not sent to ext_proc on the response path
//     (emulated);
//   - 1.37: the Process stream closes right after the last response ext_proc
//     needs, e.g. after the response-headers reply with response body NONE
//     (emulated);
//   - 1.37: upstream-filter local replies reach the upstream ext_proc
//     filters before the filter that made them (emulated);
//   - 1.38: envoy.filters.http.sse_to_metadata (emulated).
//
// # What it reproduces
//
// HCM: x-request-id (generated when absent), x-forwarded-proto,
// use_remote_address (x-forwarded-for), early_header_mutation_extensions,
// normalize_path and merge_slashes, the server header. Routing: virtual hosts
// by domain (exact, suffix and prefix wildcards, "*"), prefix / path /
// path_separated_prefix / safe_regex matches with header matchers,
// cluster / cluster_header / direct_response, request and response headers to
// add and remove at route, virtual host and route configuration level,
// prefix_rewrite, host_rewrite_literal, timeout and idle_timeout,
// per_request_buffer_limit_bytes, HttpFilter.disabled with a route's
// FilterConfig turning the filter on, ExtProcPerRoute (disabled, overrides
// of processing_mode and failure_mode_allow). The route is selected once before
// the filters run and again only after a clear_route_cache.
//
// Upgrades (HTTP/1.1 Upgrade, e.g. WebSocket): allowed when the first
// route's RouteAction.upgrade_configs enables the type, else when the HCM's
// upgrade_configs lists it (enabled by default; types compared
// case-insensitively); refused with a 403, no body, before any filter,
// closing the connection (upgrade_failed). The filters see the request
// headers with upgrade and connection kept and end_of_stream false; the
// router sends the upgrade upstream; a 101 goes back through the encoder
// filters (end_of_stream false), then bytes are piped both ways untouched.
//
// ext_proc: lazy stream; message order; end_of_stream flags; header maps with
// one entry per value, lower-case keys, pseudo-headers and raw_value;
// protocol_config on the first message; attributes once per direction;
// BUFFERED / STREAMED / NONE per direction; the buffer limit (413 request,
// 500 response); header mutations (removals first, raw_value, value-only is
// an empty header, both is a 500, only the legacy append flag, the
// HeaderMutationRules checker with allow_all_routing, allow_envoy,
// disallow_system, disallow_all, allow/disallow_expression,
// disallow_is_error; invalid names and values → 500); body mutations;
// CONTINUE_AND_REPLACE; the content-length rules; clear_route_cache (with a
// header mutation, request path only, route_cache_action,
// disable_clear_route_cache); immediate responses; mode overrides
// (allow_mode_override, headers replies only, allowed_override_modes);
// pipelined STREAMED chunks with one reply each in order;
// message_timeout (default 200ms) and override_message_timeout within
// max_message_timeout; failure_mode_allow and status_on_error; spurious
// replies; dynamic metadata limited to receiving_namespaces.untyped and
// visible to the access log; metadata_context on every message with the
// stream's metadata in forwarding_namespaces.untyped (typed namespaces,
// per-route overrides and connection metadata not emulated); half-close at the end, cancel on client abort;
// replies after completion ignored.
//
// Upstream filters and retries: a cluster's upstream HTTP filter chain
// (HttpProtocolOptions.http_filters, ext_proc and header_mutation, ending
// with envoy.filters.http.upstream_codec) runs once per upstream attempt,
// each ext_proc on its own Process stream: it sees that attempt's request
// headers (x-envoy-attempt-count when the virtual host sets
// include_request_attempt_count; include_attempt_count_in_response puts it
// on the router's responses) and body per its processing mode, may
// mutate both, sees that attempt's response headers (and body), and its
// clear_route_cache is ignored. As in Envoy the upstream filters work on the
// router's request header map, so header mutations of one attempt are still
// there for the next, while the body is replayed as the router received
// it. The retry decision sees the response as the upstream filters left
// it. The route's retry_policy (or the virtual host's): retry_on 5xx,
// gateway-error, connect-failure, retriable-4xx, refused-stream,
// retriable-status-codes, reset, reset-before-request, envoy-ratelimited;
// num_retries (default 1); retriable_status_codes; per_try_timeout;
// retry_back_off (Envoy's fully jittered exponential back-off, base 25ms and
// 10 × base by default). The request headers x-envoy-retry-on,
// x-envoy-max-retries (only with some retry_on), x-envoy-retriable-status-codes
// and x-envoy-upstream-rq-per-try-timeout-ms as they reach the router (a
// filter such as ext_proc may set them) are honoured, and the router
// consumes them and the other retry headers. The body is buffered for
// replays up to the route's (else the listener's) buffer limit; beyond it
// retries are off for the request. A response whose headers went
// downstream is never retried. The downstream filters see only the
// accepted attempt's response. Local replies after failed attempts say
// "retried and the latest reset reason"; the access log counts the
// attempts (UPSTREAM_REQUEST_ATTEMPT_COUNT, upstream_request_attempt_count)
// and sets URX when the retries ran out; its upstream fields describe the
// last attempt.
//
// Upstreams: STATIC / STRICT_DNS / LOGICAL_DNS clusters by address (round
// robin over the endpoints), dynamic_forward_proxy clusters by the request's
// :authority, plain HTTP or TLS (UpstreamTlsContext: SNI = sni or the
// authority host, verification against validation_context.trusted_ca, the
// system roots, or Config.UpstreamTLS; the first tls_certificates entry as
// the client certificate), HTTP/1.1 through net/http with no
// automatic decompression and no redirects. Response bodies in NONE and
// STREAMED mode are copied chunk by chunk with a flush after each read.
//
// # What the emulator does not reproduce
//
// Every departure from Envoy is listed here and nowhere else.
//
// Protocols and listeners
//   - Only the first static listener and its first http_connection_manager;
//     the downstream side speaks HTTP/1.1 in clear text only (codec_type AUTO
//     or HTTP2, h2c and listener TLS are not emulated; the HCM's
//     http2_protocol_options, whose stream window bounds an h2c body in
//     Envoy, and scheme_header_transformation are accepted and have no
//     effect). Upstreams are always
//     HTTP/1.1 (auto_config and http2_protocol_options are ignored for HTTP
//     upstreams; the ext_proc gRPC client is grpc-go over HTTP/2, with
//     TLS when its cluster has an UpstreamTlsContext, where Go also checks
//     the server's name or IP address against its certificate, which Envoy
//     does only with match_typed_subject_alt_names).
//   - Trailers are never sent to the processor nor forwarded:
//     request_trailer_mode and response_trailer_mode SEND have no effect.
//   - route_config must be inline (no RDS, no scoped routes).
//
// HTTP connection manager
//   - Not emulated: stream_idle_timeout, request_timeout,
//     request_headers_timeout, the removal of client-sent internal x-envoy-*
//     headers, path_with_escaped_slashes_action, strip_*_host_port, via,
//     tracing, stats, the admin interface, local_reply_config, internal
//     redirects, CONNECT, 100-continue handling beyond Go's (the expect
//     header is dropped before the filters).
//   - HTTP/1.1 upgrades (upgrade_configs, below): upgrade_configs filters
//     make New fail; the route's connect_config is ignored. A filter that
//     would process an upgrade's request body (BUFFERED or STREAMED after
//     the headers reply) stalls the stream in Envoy 1.39 until
//     stream_idle_timeout (envoyproxy/envoy issues 47048, 47081): the
//     emulator answers that timeout's 408 at once. The upgraded stream is
//     never sent to a processor as a response body, whatever the mode.
//     When either side of a tunnel closes, both are closed (no half-close),
//     and the access log entry has no response flag for it (Envoy may log
//     DC when the client closed).
//     The route's timeout and idle_timeout stop applying once the 101 is
//     in; Envoy applies idle_timeout to the tunnel.
//   - A response that starts before the request is complete closes the
//     connection (Connection: close), as in Envoy; but a request body that
//     nothing reads (a local reply before the body was consumed) is first
//     read to its end within the buffer limit, as Envoy's filter manager
//     buffers it while the filter waits, so such a reply waits for the
//     client's body and keeps the connection. Beyond the limit, while a
//     STREAMED pump or the upstream still reads the body, or when the client
//     awaits 100 Continue, the reply says Connection: close; Go's server may
//     then read up to 256 KiB more of the body before closing.
//   - A client's x-request-id is always kept (Envoy regenerates it for
//     external requests when use_remote_address is set).
//   - Local replies are plain text (content-type text/plain when there is a
//     body); gRPC-style local replies (grpc-status trailers) are not made.
//
// HTTP filters
//   - Emulated: ext_proc, dynamic_forward_proxy (recognised; hosts are
//     resolved by Go's resolver on each new connection — no DNS cache,
//     dns_cache_config is ignored), router (suppress_envoy_headers honoured;
//     it adds x-envoy-expected-rq-timeout-ms and x-envoy-upstream-service-time
//     otherwise), header_mutation (request and response append/remove only),
//     jwt_authn, json_to_metadata and sse_to_metadata (below). Any other
//     filter makes New fail.
//   - json_to_metadata: response_rules only (request_rules and
//     allow_content_types_regex make New fail); key selectors, on_present /
//     on_missing / on_error with value or type (PROTOBUF_VALUE, STRING,
//     NUMBER), preserve_existing_metadata_value, allow_content_types (exact
//     match of the whole content-type value, default application/json) and
//     allow_empty_content_type. The whole body is read before it passes on,
//     as Envoy buffers it; a body over the route's buffer limit runs the
//     on_error actions and passes through unread (Envoy's limit handling on
//     the response path is not reproduced).
//   - sse_to_metadata: the envoy.content_parsers.json parser only (another
//     parser makes New fail), its rules with stop_processing_after_matches,
//     max_event_size (default 8192). Bytes pass through unchanged as they
//     are read; events (blank-line delimited, any line ending; the last one
//     at the end of the body even without its blank line) whose data fields
//     parse as a JSON object run on_present at once; at the end of the body
//     a rule that never matched runs on_error if an event failed to parse,
//     else on_missing. Default namespace envoy.content_parsers.json. Stats
//     are not kept.
//   - jwt_authn: providers with local_jwks or remote_jwks (fetched through
//     their cluster on first use, cached for cache_duration; async_fetch and
//     retry_policy ignored), RS/PS/ES/HS 256/384/512 signatures, issuer,
//     audiences, exp/nbf with clock_skew_seconds, from_headers or the
//     Authorization bearer token, forward, forward_payload_header
//     (pad_forward_payload_header; a client-sent copy is removed whenever
//     a rule matches), payload_in_metadata; rules with
//     provider_name, provider_and_audiences, requires_any, requires_all,
//     allow_missing, allow_missing_or_failed. Not emulated: from_params,
//     from_cookies, subjects, require_expiration, max_lifetime,
//     claim_to_headers, jwt_cache_config, requirement_map (New fails),
//     filter_state_rules (New fails), bypass_cors_preflight. Failure bodies
//     and statuses follow Envoy's messages ("Jwt is missing" 401, "Jwt is
//     expired" 401, "Audiences in Jwt are not allowed" 403, …).
//
// ext_proc
//   - New fails on http_service, observability_mode,
//     send_body_without_waiting_for_header_response and the
//     FULL_DUPLEX_STREAMED and GRPC body modes.
//   - Ignored: forward_rules, filter_metadata,
//     metadata_options.forwarding_namespaces (no metadata_context is sent),
//     typed receiving namespaces, processing_request_modifier,
//     on_processing_response, emit_client_span, stat_prefix (no stats),
//     grpc_service.timeout and retry_policy, the immediate response's
//     grpc_status, request_drain and flow-control fields.
//   - Attributes are a fixed set (request.path, request.url_path,
//     request.host, request.method, request.scheme, request.id,
//     request.protocol, source.address, destination.address, xds.route_name,
//     xds.cluster_name, response.code); other names are omitted.
//   - BUFFERED_PARTIAL is best effort: a body within the limit behaves as
//     BUFFERED; beyond it, the first limit bytes are sent with
//     end_of_stream=false and the rest passes unprocessed.
//   - STREAMED: one message per 16 KiB read of the source; the message timer
//     is re-armed while chunks are outstanding (per outstanding message, as
//     docs/envoy-extproc.md says) where Envoy stops it at each reply.
//   - Header and trailer DEFAULT in a mode override keep the current setting
//     (docs/envoy-extproc.md); a spurious reply is a 500, or close and continue
//     with failure_mode_allow (docs/envoy-extproc.md; older Envoy releases always
//     continued).
//   - Local replies decided by ext_proc (immediate responses, errors,
//     timeouts) and by jwt_authn go straight to the client, and so does the
//     500 of a response body over the buffer limit; router-generated replies
//     (no route, direct_response, cluster not found, upstream failure and
//     timeout) and the request buffer limit's 413 go through the encoder
//     filters (route response headers, header_mutation) but not to the
//     processor: each ext_proc filter ends its stream (Envoy ≥ 1.33.1). A
//     failure after the response headers reached the client resets the
//     connection.
//   - At the end of processing the stream is half-closed and cancelled once
//     the server has finished or deferred_close_timeout (default 5s) passed;
//     Envoy half-closes and resets at once. Both look normal to a server.
//
// Routing
//   - Not emulated: query_parameters, runtime_fraction, grpc, tls_context and
//     dynamic_metadata matchers (New fails on any of them), weighted
//     clusters, redirects, hedging (hedge_policy and
//     x-envoy-hedge-on-per-try-timeout are ignored), mirroring, rate limits,
//     regex_rewrite, host_rewrite_header / auto_host_rewrite, CORS.
//
// Upstream filters and retries
//   - Upstream filters other than ext_proc and header_mutation make New
//     fail; HttpFilter.disabled is not applied to them (ExtProcPerRoute is).
//   - A local reply made in the upstream filter chain (an upstream ext_proc's
//     error, timeout, immediate response or buffer limit) passes the
//     upstream ext_proc filters before it, then goes to the client through
//     the downstream encoder filters like a router reply, and is never
//     retried. Envoy refuses immediate responses from an upstream ext_proc
//     in some releases; the emulator always sends them.
//   - retry_on values not listed above (the gRPC ones, retriable-headers,
//     http3-post-connect-failure) make New fail in a retry_policy and are
//     ignored in x-envoy-retry-on; x-envoy-retry-grpc-on and
//     x-envoy-retriable-header-names are consumed and ignored.
//     retriable_headers, retriable_request_headers,
//     rate_limited_retry_back_off, per_try_idle_timeout, retry_priority,
//     retry_host_predicate and retry_options_predicates make New fail.
//     refused-stream never matches (HTTP/1.1 upstreams). No circuit
//     breakers: the retry budget never overflows.
//   - Only attempts read the client's body: nothing reads it during a
//     back-off, so Envoy's 507 "exceeded request buffer limit while
//     retrying upstream" is never sent; a body past the buffer limit turns
//     retries off (as in Envoy when it overflows during an attempt).
//   - x-envoy-expected-rq-timeout-ms is set once, to the per-try timeout or
//     the route timeout; Envoy lowers it on each retry by the time elapsed.
//   - The route timeout starts when the upstream request starts (Envoy: when
//     the downstream request is complete); idle_timeout counts upstream body
//     reads only.
//
// Clusters
//   - No health checks, outlier detection, circuit breakers, connection pool
//     limits, LB policies or priorities (so "no healthy upstream" comes only
//     from a cluster without endpoints); EDS and ORIGINAL_DST clusters need a
//     Config.ClusterAddrs entry. No upstream client certificates; SAN checks
//     are Go's hostname verification; match_typed_subject_alt_names is
//     ignored. A trusted_ca file that does not exist makes New fail, as Envoy
//     does. Config.ClusterAddrs entries that name no cluster are ignored.
//
// Access log
//   - Loggers: file, stdout, stderr and http_grpc (below); any other makes
//     New fail.
//   - Operators: REQ, RESP, DYNAMIC_METADATA, START_TIME (default format and
//     a strftime subset), RESPONSE_CODE, RESPONSE_FLAGS (NR, NC, UF, UC, UT,
//     SI, UR, DC, URX only), RESPONSE_CODE_DETAILS, BYTES_RECEIVED, BYTES_SENT,
//     DURATION, REQUEST_DURATION, RESPONSE_DURATION, RESPONSE_TX_DURATION,
//     UPSTREAM_HOST, UPSTREAM_CLUSTER, ROUTE_NAME, PROTOCOL,
//     UPSTREAM_PROTOCOL, DOWNSTREAM_*_ADDRESS, UPSTREAM_TRANSPORT_FAILURE_REASON,
//     UPSTREAM_REQUEST_ATTEMPT_COUNT, HOSTNAME, ENVIRONMENT; TRAILER,
//     FILTER_STATE, UPSTREAM_LOCAL_ADDRESS, REQUESTED_SERVER_NAME,
//     CONNECTION_TERMINATION_DETAILS, CONNECTION_ID, STREAM_ID and
//     LOCAL_REPLY_BODY are always "-". Any other operator makes New fail.
//     UPSTREAM_HOST is the address dialled: host:port of the authority for a
//     dynamic forward proxy (Envoy logs the resolved IP:port).
//     Access log filters are ignored: every request is logged.
//   - Response flags the emulator sets: NR (no route), NC (no cluster), UH
//     (a cluster without endpoints: 503 "no healthy upstream"), UF
//     (connect failure, with the transport failure reason — Go's error text,
//     not Envoy's), UC (the upstream closed the connection before response
//     headers), UT (route or per-try timeout), SI (idle timeout), UR (upstream reset
//     after headers), DC (the client went away before the response ended,
//     also mid-response), URX (retries exhausted). LR and the others are
//     never set (no local resets).
//   - http_grpc (envoy.access_loggers.http_grpc): envoy_grpc services only
//     (google_grpc, filter_state_objects_to_log and custom_tags make New
//     fail). Batching as Envoy's GrpcAccessLogger: an entry is added to the
//     pending message, which is flushed when its approximate size reaches
//     buffer_size_bytes (default 16384) and every buffer_flush_interval
//     (default 1s); each flush clears the pending message whatever happens
//     to it. The first message of each StreamAccessLogs stream carries the
//     identifier (bootstrap node, log_name); a stream the server ended is
//     replaced by a new one at the next flush, and a batch sent while the
//     stream breaks, or when no stream can be opened, is lost — Envoy keeps
//     no retry buffer. Entries arriving while the pending message is full
//     and cannot be flushed are dropped. Sending runs on one goroutine per
//     logger (Envoy writes into a buffered stream); pending batches are not
//     flushed at Close, as Envoy does not flush at exit. Entry fields:
//     common_properties (downstream remote/local addresses, start_time,
//     time_to_last_rx_byte, time_to_first/last_upstream_tx_byte,
//     time_to_first/last_upstream_rx_byte, time_to_first/last_downstream_tx_byte,
//     upstream remote/local address of the connection used, upstream_cluster,
//     response_flags, upstream_transport_failure_reason, route_name, every
//     namespace's dynamic metadata, duration, upstream_request_attempt_count,
//     stream_id = x-request-id, access_log_type DownstreamEnd), protocol_version,
//     request (method, scheme, authority, path, user_agent, referer,
//     forwarded_for, request_id, original_path, header and body bytes,
//     additional_request_headers_to_log) and response (code, code details,
//     header and body bytes, additional_response_headers_to_log). Not filled:
//     tls_properties, sample_rate, filter_state_objects, custom_tags,
//     connection_termination_details, wire byte counts, response trailers,
//     intermediate entries.
package emulator
