package proxy

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Code is a sidecar error code (section 3 of the contract).
type Code string

// The sidecar's error codes.
const (
	CodeCompanyMissing          Code = "company_missing"
	CodeCompanyInvalid          Code = "company_invalid"
	CodeCompanyMismatch         Code = "company_mismatch"
	CodeCompanyUnknown          Code = "company_unknown"
	CodeClientUnauthenticated   Code = "client_unauthenticated"
	CodeMethodNotAllowed        Code = "method_not_allowed"
	CodeCredentialExpired       Code = "credential_expired"
	CodeReauthorizationRequired Code = "reauthorization_required"
	CodeTokenEndpointError      Code = "token_endpoint_error"
	CodeUpstreamUnreachable     Code = "upstream_unreachable"
	CodeUpstreamTimeout         Code = "upstream_timeout"
	CodeStoreUnavailable        Code = "store_unavailable"
	// CodeUpgradeNotSupported refuses a request asking to switch protocols (Upgrade:
	// websocket and the like; an h2c offer alone is declined and the request served):
	// Pleo's API has none, and the sidecar never forwards one.
	CodeUpgradeNotSupported Code = "upgrade_not_supported"
	// CodeRequestHeaderTooLarge refuses a request whose request line and header fields
	// exceed MaxRequestHeadBytes.
	CodeRequestHeaderTooLarge Code = "request_header_too_large"
)

// spec is one row of the error table: the status, a fixed title, and the RFC 9209
// Proxy-Status error type.
type spec struct {
	status     int
	title      string
	proxyError string
}

// problems is the one table every sidecar error is rendered from.
var problems = map[Code]spec{
	CodeCompanyMissing:          {http.StatusBadRequest, "No company selected", "http_request_error"},
	CodeCompanyInvalid:          {http.StatusBadRequest, "Invalid company selection", "http_request_error"},
	CodeCompanyMismatch:         {http.StatusBadRequest, "Company selectors disagree", "http_request_error"},
	CodeCompanyUnknown:          {http.StatusForbidden, "No credential for this company", "http_request_denied"},
	CodeClientUnauthenticated:   {http.StatusProxyAuthRequired, "Client token required", "http_request_denied"},
	CodeMethodNotAllowed:        {http.StatusMethodNotAllowed, "Method not allowed", "http_request_denied"},
	CodeCredentialExpired:       {http.StatusUnauthorized, "API key expired", "proxy_configuration_error"},
	CodeReauthorizationRequired: {http.StatusUnauthorized, "Company must reconnect", "proxy_configuration_error"},
	CodeTokenEndpointError:      {http.StatusBadGateway, "Token refresh failed", "proxy_internal_error"},
	CodeUpstreamUnreachable:     {http.StatusBadGateway, "Upstream unreachable", "destination_unavailable"},
	CodeUpstreamTimeout:         {http.StatusGatewayTimeout, "Upstream timed out", "http_response_timeout"},
	CodeStoreUnavailable:        {http.StatusServiceUnavailable, "Credential store unavailable", "proxy_internal_error"},
	CodeUpgradeNotSupported:     {http.StatusNotImplemented, "Protocol upgrade not supported", "http_request_denied"},
	CodeRequestHeaderTooLarge:   {http.StatusRequestHeaderFieldsTooLarge, "Request header too large", "http_request_error"},
}

// Codes lists every code, for tests and documentation.
func Codes() []Code {
	out := make([]Code, 0, len(problems))
	for c := range problems {
		out = append(out, c)
	}
	return out
}

// Status returns the HTTP status of a code (500 for an unknown one).
func (c Code) Status() int {
	if s, ok := problems[c]; ok {
		return s.status
	}
	return http.StatusInternalServerError
}

// Problem is an error the sidecar answers itself. Detail must never carry a secret.
type Problem struct {
	Code      Code
	Detail    string
	CompanyID string
	// RetryAfter, when positive, is sent as Retry-After in whole seconds (rounded up).
	RetryAfter time.Duration
	// ReconnectURL is a signed connect link for the company's tenant, on a
	// reauthorization_required problem (empty: none).
	ReconnectURL string
}

func (p *Problem) Error() string { return "proxy: " + string(p.Code) + ": " + p.Detail }

// problemBody is the RFC 9457 document.
type problemBody struct {
	Type      string `json:"type"`
	Title     string `json:"title"`
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Code      Code   `json:"code"`
	CompanyID string `json:"company_id,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	// ReconnectURL is where a person reconnects the company (reauthorization_required).
	ReconnectURL string `json:"reconnect_url,omitempty"`
}

// ProblemTypePrefix prefixes every problem's type URI.
const ProblemTypePrefix = "urn:pleo-auth-proxy:problem:"

// WriteProblem renders p as application/problem+json with a Proxy-Status header naming the
// sidecar, so a caller can tell it from Pleo's own errors.
func WriteProblem(w http.ResponseWriter, p *Problem, requestID string) {
	s, ok := problems[p.Code]
	if !ok {
		s = spec{http.StatusInternalServerError, "Internal error", "proxy_internal_error"}
	}
	body, err := json.Marshal(problemBody{
		Type:         ProblemTypePrefix + string(p.Code),
		Title:        s.title,
		Status:       s.status,
		Detail:       p.Detail,
		Code:         p.Code,
		CompanyID:    p.CompanyID,
		RequestID:    requestID,
		ReconnectURL: p.ReconnectURL,
	})
	if err != nil { // cannot happen: every field is a string or an int
		body = []byte(`{"status":500}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	h.Set("Proxy-Status", `pleo-auth-proxy; error=`+s.proxyError+`; details="`+string(p.Code)+`"`)
	if p.Code == CodeClientUnauthenticated {
		h.Set("Proxy-Authenticate", `Bearer realm="pleo-auth-proxy"`)
	}
	if p.RetryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64((p.RetryAfter+time.Second-1)/time.Second), 10))
	}
	if p.Code == CodeMethodNotAllowed {
		h.Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	}
	w.WriteHeader(s.status)
	_, _ = w.Write(body)
}
