package provider

import (
	"net"
	"net/http"
	"time"
)

// HTTPClient returns the client an adapter sends with: connections are
// reused and the pool is sized to the worker pool (conns), so a busy pool
// does not open and close a TLS connection per message, and a burst never
// opens more than conns connections to one host (beyond that, requests wait
// for a free one); every phase has a deadline, and the request's context
// bounds the whole attempt.
func HTTPClient(conns int, timeout time.Duration) *http.Client {
	if conns <= 0 {
		conns = 100
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          conns,
		MaxIdleConnsPerHost:   conns,
		MaxConnsPerHost:       conns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: timeout,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{Transport: t, Timeout: timeout}
}
