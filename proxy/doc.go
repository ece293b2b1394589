// Package proxy is the sidecar's data path: an httputil.ReverseProxy that forwards a
// co-located service's plain HTTP request to the one configured Pleo upstream, after choosing
// the company the request is for, dropping the client's own credentials and injecting the
// company's. Injection and the single 401 retry live in an http.RoundTripper; every error the
// sidecar itself produces is an RFC 9457 problem+json response from one table.
package proxy
