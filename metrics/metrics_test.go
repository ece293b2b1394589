package metrics

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// touchAll records one event through every method, so that every metric has a series.
func touchAll(m *Metrics) {
	m.ObserveRequest("GET", 200, CredentialOAuth2, 3*time.Millisecond)
	m.UpstreamResponse(200)
	m.AuthRetry(RetrySucceeded)
	m.TokenRefresh(TriggerExpiry, RefreshSuccess, 200*time.Millisecond)
	m.CacheLookup(true)
	m.SetCredentialCounts(map[CredentialKey]int{{CredentialOAuth2, StateActive}: 2})
	m.Error("company_unknown")
	m.RefreshLockWait(time.Millisecond)
	m.TokenCommitWindow(300 * time.Microsecond)
	m.TokenAgeAtRefresh(time.Hour)
	m.SetExpiringCredentials(map[string]int{CredentialStandaloneAPIKey: 1})
	m.StoreOperation(StoreGet, 2*time.Millisecond, nil)
	m.StoreOperation(StoreUpdate, 20*time.Millisecond, errors.New("disk full"))
	m.StoreReloadFailed()
	m.SetPendingTokenWrites(1)
	m.InFlight()
	m.ConnectStarted()
	m.ConnectFailed(ConnectAccessDenied)
	m.ConnectLinkRefused()
	m.ConnectFailed(ConnectTenantConflict)
	m.ClientConnOpened()
	m.ClientConnOpened()
	m.ClientConnClosed()
	m.ClientConnWaited()
	m.RefreshSkipped(SkipUnauthorizedCooldown)
	m.SecretReload(SecretOAuthClientSecret, SecretReloadSuccess)
	m.SecretReload(SecretAdminToken, SecretReloadError)
	m.SecretReload("made_up_secret", SecretReloadSuccess)
}

// withoutHelp gathers from g with every help string blanked, so that the exposition test pins
// names, types, labels and values, and wording can change without touching it.
func withoutHelp(g prometheus.Gatherer) prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		mfs, err := g.Gather()
		for _, mf := range mfs {
			mf.Help = new("")
		}
		return mfs, err
	})
}

// expectedExposition is the contract (docs/reference.md, Metrics) plus the operational extras,
// as exported after touchAll. Changing it changes the public contract.
const expectedExposition = `
# TYPE pleo_proxy_client_connection_waits_total counter
pleo_proxy_client_connection_waits_total 1
# TYPE pleo_proxy_client_connections gauge
pleo_proxy_client_connections 1
# TYPE pleo_proxy_auth_retries_total counter
pleo_proxy_auth_retries_total{result="failed"} 0
pleo_proxy_auth_retries_total{result="not_replayable"} 0
pleo_proxy_auth_retries_total{result="succeeded"} 1
# TYPE pleo_proxy_connect_failures_total counter
pleo_proxy_connect_failures_total{reason="access_denied"} 1
pleo_proxy_connect_failures_total{reason="company_lookup_failed"} 0
pleo_proxy_connect_failures_total{reason="exchange_failed"} 0
pleo_proxy_connect_failures_total{reason="invalid_state"} 0
pleo_proxy_connect_failures_total{reason="no_refresh_token"} 0
pleo_proxy_connect_failures_total{reason="other"} 0
pleo_proxy_connect_failures_total{reason="store_failed"} 0
pleo_proxy_connect_failures_total{reason="tenant_conflict"} 1
# TYPE pleo_proxy_connects_total counter
pleo_proxy_connects_total{result="completed"} 0
pleo_proxy_connects_total{result="failed"} 2
pleo_proxy_connects_total{result="link_refused"} 1
pleo_proxy_connects_total{result="started"} 1
# TYPE pleo_proxy_credential_cache_lookups_total counter
pleo_proxy_credential_cache_lookups_total{result="hit"} 1
pleo_proxy_credential_cache_lookups_total{result="miss"} 0
# TYPE pleo_proxy_credentials gauge
pleo_proxy_credentials{state="active",type="integrated_api_key"} 0
pleo_proxy_credentials{state="active",type="oauth2"} 2
pleo_proxy_credentials{state="active",type="standalone_api_key"} 0
pleo_proxy_credentials{state="expired",type="integrated_api_key"} 0
pleo_proxy_credentials{state="expired",type="oauth2"} 0
pleo_proxy_credentials{state="expired",type="standalone_api_key"} 0
pleo_proxy_credentials{state="reauthorization_required",type="integrated_api_key"} 0
pleo_proxy_credentials{state="reauthorization_required",type="oauth2"} 0
pleo_proxy_credentials{state="reauthorization_required",type="standalone_api_key"} 0
pleo_proxy_credentials{state="unauthorized",type="integrated_api_key"} 0
pleo_proxy_credentials{state="unauthorized",type="oauth2"} 0
pleo_proxy_credentials{state="unauthorized",type="standalone_api_key"} 0
# TYPE pleo_proxy_credentials_expiring gauge
pleo_proxy_credentials_expiring{type="integrated_api_key"} 0
pleo_proxy_credentials_expiring{type="standalone_api_key"} 1
# TYPE pleo_proxy_errors_total counter
pleo_proxy_errors_total{code="client_unauthenticated"} 0
pleo_proxy_errors_total{code="company_invalid"} 0
pleo_proxy_errors_total{code="company_mismatch"} 0
pleo_proxy_errors_total{code="company_missing"} 0
pleo_proxy_errors_total{code="company_unknown"} 1
pleo_proxy_errors_total{code="credential_expired"} 0
pleo_proxy_errors_total{code="method_not_allowed"} 0
pleo_proxy_errors_total{code="reauthorization_required"} 0
pleo_proxy_errors_total{code="request_header_too_large"} 0
pleo_proxy_errors_total{code="store_unavailable"} 0
pleo_proxy_errors_total{code="token_endpoint_error"} 0
pleo_proxy_errors_total{code="upgrade_not_supported"} 0
pleo_proxy_errors_total{code="upstream_timeout"} 0
pleo_proxy_errors_total{code="upstream_unreachable"} 0
# TYPE pleo_proxy_in_flight_requests gauge
pleo_proxy_in_flight_requests 1
# TYPE pleo_proxy_pending_token_writes gauge
pleo_proxy_pending_token_writes 1
# TYPE pleo_proxy_refresh_lock_wait_seconds histogram
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.0005"} 0
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.001"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.0025"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.005"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.01"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.025"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.05"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.1"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.25"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="0.5"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="1"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="2.5"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="5"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="10"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="30"} 1
pleo_proxy_refresh_lock_wait_seconds_bucket{le="+Inf"} 1
pleo_proxy_refresh_lock_wait_seconds_sum 0.001
pleo_proxy_refresh_lock_wait_seconds_count 1
# TYPE pleo_proxy_request_duration_seconds histogram
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.0005"} 0
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.001"} 0
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.0025"} 0
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.005"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.01"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.025"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.05"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.1"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.25"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="0.5"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="1"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="2.5"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="5"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="10"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="30"} 1
pleo_proxy_request_duration_seconds_bucket{code="200",method="GET",le="+Inf"} 1
pleo_proxy_request_duration_seconds_sum{code="200",method="GET"} 0.003
pleo_proxy_request_duration_seconds_count{code="200",method="GET"} 1
# TYPE pleo_proxy_requests_total counter
pleo_proxy_requests_total{code="200",credential_type="oauth2",method="GET"} 1
# TYPE pleo_proxy_store_errors_total counter
pleo_proxy_store_errors_total{operation="delete"} 0
pleo_proxy_store_errors_total{operation="get"} 0
pleo_proxy_store_errors_total{operation="list"} 0
pleo_proxy_store_errors_total{operation="ping"} 0
pleo_proxy_store_errors_total{operation="put"} 0
pleo_proxy_store_errors_total{operation="reload"} 0
pleo_proxy_store_errors_total{operation="update"} 1
# TYPE pleo_proxy_store_operation_duration_seconds histogram
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.0005"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.001"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.0025"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.005"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.01"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.025"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.05"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.1"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.25"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="0.5"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="1"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="2.5"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="5"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="10"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="30"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="get",le="+Inf"} 1
pleo_proxy_store_operation_duration_seconds_sum{operation="get"} 0.002
pleo_proxy_store_operation_duration_seconds_count{operation="get"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.0005"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.001"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.0025"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.005"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.01"} 0
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.025"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.05"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.1"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.25"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="0.5"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="1"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="2.5"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="5"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="10"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="30"} 1
pleo_proxy_store_operation_duration_seconds_bucket{operation="update",le="+Inf"} 1
pleo_proxy_store_operation_duration_seconds_sum{operation="update"} 0.02
pleo_proxy_store_operation_duration_seconds_count{operation="update"} 1
# TYPE pleo_proxy_secret_reloads_total counter
pleo_proxy_secret_reloads_total{result="error",secret="admin_token"} 1
pleo_proxy_secret_reloads_total{result="error",secret="client_tokens"} 0
pleo_proxy_secret_reloads_total{result="error",secret="connect_key"} 0
pleo_proxy_secret_reloads_total{result="error",secret="encryption_key"} 0
pleo_proxy_secret_reloads_total{result="error",secret="oauth_client_secret"} 0
pleo_proxy_secret_reloads_total{result="success",secret="admin_token"} 0
pleo_proxy_secret_reloads_total{result="success",secret="client_tokens"} 0
pleo_proxy_secret_reloads_total{result="success",secret="connect_key"} 0
pleo_proxy_secret_reloads_total{result="success",secret="encryption_key"} 0
pleo_proxy_secret_reloads_total{result="success",secret="oauth_client_secret"} 1
# TYPE pleo_proxy_store_reload_failures_total counter
pleo_proxy_store_reload_failures_total 1
# TYPE pleo_proxy_token_age_at_refresh_seconds histogram
pleo_proxy_token_age_at_refresh_seconds_bucket{le="1"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="10"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="30"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="60"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="300"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="600"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="1800"} 0
pleo_proxy_token_age_at_refresh_seconds_bucket{le="3600"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="7200"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="14400"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="43200"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="86400"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="172800"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="604800"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="2.592e+06"} 1
pleo_proxy_token_age_at_refresh_seconds_bucket{le="+Inf"} 1
pleo_proxy_token_age_at_refresh_seconds_sum 3600
pleo_proxy_token_age_at_refresh_seconds_count 1
# TYPE pleo_proxy_token_commit_window_seconds histogram
pleo_proxy_token_commit_window_seconds_bucket{le="5e-05"} 0
pleo_proxy_token_commit_window_seconds_bucket{le="0.0001"} 0
pleo_proxy_token_commit_window_seconds_bucket{le="0.00025"} 0
pleo_proxy_token_commit_window_seconds_bucket{le="0.0005"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.001"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.0025"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.005"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.01"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.025"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.05"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.1"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.25"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="0.5"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="1"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="5"} 1
pleo_proxy_token_commit_window_seconds_bucket{le="+Inf"} 1
pleo_proxy_token_commit_window_seconds_sum 0.0003
pleo_proxy_token_commit_window_seconds_count 1
# TYPE pleo_proxy_token_refresh_duration_seconds histogram
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.0005"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.001"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.0025"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.005"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.01"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.025"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.05"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.1"} 0
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.25"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="0.5"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="1"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="2.5"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="5"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="10"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="30"} 1
pleo_proxy_token_refresh_duration_seconds_bucket{le="+Inf"} 1
pleo_proxy_token_refresh_duration_seconds_sum 0.2
pleo_proxy_token_refresh_duration_seconds_count 1
# TYPE pleo_proxy_token_refreshes_skipped_total counter
pleo_proxy_token_refreshes_skipped_total{reason="backoff"} 0
pleo_proxy_token_refreshes_skipped_total{reason="unauthorized_cooldown"} 1
# TYPE pleo_proxy_token_refreshes_total counter
pleo_proxy_token_refreshes_total{result="error",trigger="background"} 0
pleo_proxy_token_refreshes_total{result="error",trigger="expiry"} 0
pleo_proxy_token_refreshes_total{result="error",trigger="unauthorized"} 0
pleo_proxy_token_refreshes_total{result="invalid_grant",trigger="background"} 0
pleo_proxy_token_refreshes_total{result="invalid_grant",trigger="expiry"} 0
pleo_proxy_token_refreshes_total{result="invalid_grant",trigger="unauthorized"} 0
pleo_proxy_token_refreshes_total{result="success",trigger="background"} 0
pleo_proxy_token_refreshes_total{result="success",trigger="expiry"} 1
pleo_proxy_token_refreshes_total{result="success",trigger="unauthorized"} 0
# TYPE pleo_proxy_upstream_requests_total counter
pleo_proxy_upstream_requests_total{code="200"} 1
`

func TestExposition(t *testing.T) {
	reg := prometheus.NewRegistry()
	touchAll(New(reg))
	if err := testutil.GatherAndCompare(withoutHelp(reg), strings.NewReader(expectedExposition)); err != nil {
		t.Fatal(err)
	}
}

func TestLintAndHelp(t *testing.T) {
	reg := prometheus.NewRegistry()
	touchAll(New(reg))
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 24 {
		t.Errorf("gathered %d metric families, want 24", len(mfs))
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "pleo_proxy_") {
			t.Errorf("%s: not under the pleo_proxy_ namespace", mf.GetName())
		}
		if len(strings.TrimSpace(mf.GetHelp())) < 10 {
			t.Errorf("%s: help %q too short", mf.GetName(), mf.GetHelp())
		}
	}
}

// TestContract pins the section 7 table itself: name, type and label names, independently of
// the exposition above.
func TestContract(t *testing.T) {
	reg := prometheus.NewRegistry()
	touchAll(New(reg))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, mf := range mfs {
		var labels []string
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			labels = append(labels, lp.GetName())
		}
		got[mf.GetName()] = strings.ToLower(mf.GetType().String()) + " " + strings.Join(labels, ",")
	}
	want := map[string]string{ // label names as exported: sorted
		"pleo_proxy_requests_total":                 "counter code,credential_type,method",
		"pleo_proxy_request_duration_seconds":       "histogram code,method",
		"pleo_proxy_upstream_requests_total":        "counter code",
		"pleo_proxy_auth_retries_total":             "counter result",
		"pleo_proxy_token_refreshes_total":          "counter result,trigger",
		"pleo_proxy_token_refresh_duration_seconds": "histogram ",
		"pleo_proxy_credential_cache_lookups_total": "counter result",
		"pleo_proxy_credentials":                    "gauge state,type",
		"pleo_proxy_errors_total":                   "counter code",
		// Operational extras.
		"pleo_proxy_refresh_lock_wait_seconds":        "histogram ",
		"pleo_proxy_token_commit_window_seconds":      "histogram ",
		"pleo_proxy_token_age_at_refresh_seconds":     "histogram ",
		"pleo_proxy_credentials_expiring":             "gauge type",
		"pleo_proxy_store_operation_duration_seconds": "histogram operation",
		"pleo_proxy_store_errors_total":               "counter operation",
		"pleo_proxy_store_reload_failures_total":      "counter ",
		"pleo_proxy_pending_token_writes":             "gauge ",
		"pleo_proxy_in_flight_requests":               "gauge ",
		"pleo_proxy_connects_total":                   "counter result",
		"pleo_proxy_connect_failures_total":           "counter reason",
		"pleo_proxy_client_connections":               "gauge ",
		"pleo_proxy_client_connection_waits_total":    "counter ",
		"pleo_proxy_token_refreshes_skipped_total":    "counter reason",
		"pleo_proxy_secret_reloads_total":             "counter result,secret",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: got %q, want %q", name, got[name], w)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("%s: exported but not in the contract", name)
		}
	}
}

func TestNewRegistry(t *testing.T) {
	reg := NewRegistry()
	New(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		seen[mf.GetName()] = true
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "pleo_proxy_errors_total"} {
		if !seen[name] {
			t.Errorf("%s not gathered", name)
		}
	}
}

func TestNewRegistersOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg)
	defer func() {
		if recover() == nil {
			t.Error("registering a second Metrics on one registry did not panic")
		}
	}()
	New(reg)
}

func TestNilRegisterer(t *testing.T) {
	m := New(nil)
	m.CacheLookup(false)
	if got := testutil.ToFloat64(m.cacheLookups.WithLabelValues(CacheMiss)); got != 1 {
		t.Errorf("miss = %v, want 1", got)
	}
}

// TestMethods checks that each method moves the series it documents, and only by one.
func TestMethods(t *testing.T) {
	tests := []struct {
		name   string
		record func(*Metrics)
		series func(*Metrics) prometheus.Collector
		want   float64
	}{
		{"request", func(m *Metrics) { m.ObserveRequest("POST", 201, CredentialStandaloneAPIKey, time.Second) },
			func(m *Metrics) prometheus.Collector {
				return m.requests.WithLabelValues("POST", "201", "standalone_api_key")
			}, 1},
		{"request without credential", func(m *Metrics) { m.ObserveRequest("GET", 403, "", time.Millisecond) },
			func(m *Metrics) prometheus.Collector { return m.requests.WithLabelValues("GET", "403", "none") }, 1},
		{"upstream", func(m *Metrics) { m.UpstreamResponse(401) },
			func(m *Metrics) prometheus.Collector { return m.upstreamRequests.WithLabelValues("401") }, 1},
		{"upstream no response", func(m *Metrics) { m.UpstreamResponse(0) },
			func(m *Metrics) prometheus.Collector { return m.upstreamRequests.WithLabelValues("other") }, 1},
		{"retry succeeded", func(m *Metrics) { m.AuthRetry(RetrySucceeded) },
			func(m *Metrics) prometheus.Collector { return m.authRetries.WithLabelValues("succeeded") }, 1},
		{"retry failed", func(m *Metrics) { m.AuthRetry(RetryFailed) },
			func(m *Metrics) prometheus.Collector { return m.authRetries.WithLabelValues("failed") }, 1},
		{"retry not replayable", func(m *Metrics) { m.AuthRetry(RetryNotReplayable) },
			func(m *Metrics) prometheus.Collector { return m.authRetries.WithLabelValues("not_replayable") }, 1},
		{"retry unknown", func(m *Metrics) { m.AuthRetry("maybe") },
			func(m *Metrics) prometheus.Collector { return m.authRetries.WithLabelValues("other") }, 1},
		{"refresh", func(m *Metrics) { m.TokenRefresh(TriggerUnauthorized, RefreshInvalidGrant, time.Second) },
			func(m *Metrics) prometheus.Collector {
				return m.tokenRefreshes.WithLabelValues("unauthorized", "invalid_grant")
			}, 1},
		{"refresh background error", func(m *Metrics) { m.TokenRefresh(TriggerBackground, RefreshError, time.Second) },
			func(m *Metrics) prometheus.Collector { return m.tokenRefreshes.WithLabelValues("background", "error") }, 1},
		{"refresh unknown result", func(m *Metrics) { m.TokenRefresh(TriggerExpiry, "weird", time.Second) },
			func(m *Metrics) prometheus.Collector { return m.tokenRefreshes.WithLabelValues("expiry", "other") }, 1},
		{"cache hit", func(m *Metrics) { m.CacheLookup(true) },
			func(m *Metrics) prometheus.Collector { return m.cacheLookups.WithLabelValues("hit") }, 1},
		{"cache miss", func(m *Metrics) { m.CacheLookup(false) },
			func(m *Metrics) prometheus.Collector { return m.cacheLookups.WithLabelValues("miss") }, 1},
		{"error", func(m *Metrics) { m.Error("store_unavailable") },
			func(m *Metrics) prometheus.Collector { return m.errors.WithLabelValues("store_unavailable") }, 1},
		{"error unknown", func(m *Metrics) { m.Error("made_up") },
			func(m *Metrics) prometheus.Collector { return m.errors.WithLabelValues("other") }, 1},
		{"store error", func(m *Metrics) { m.StoreOperation(StorePing, time.Millisecond, errors.New("down")) },
			func(m *Metrics) prometheus.Collector { return m.storeErrors.WithLabelValues("ping") }, 1},
		{"store success", func(m *Metrics) { m.StoreOperation(StorePing, time.Millisecond, nil) },
			func(m *Metrics) prometheus.Collector { return m.storeErrors.WithLabelValues("ping") }, 0},
		{"store unknown operation", func(m *Metrics) { m.StoreOperation("vacuum", time.Millisecond, errors.New("x")) },
			func(m *Metrics) prometheus.Collector { return m.storeErrors.WithLabelValues("other") }, 1},
		{"reload failure", func(m *Metrics) { m.StoreReloadFailed() },
			func(m *Metrics) prometheus.Collector { return m.storeReloadFailures }, 1},
		{"pending writes", func(m *Metrics) { m.SetPendingTokenWrites(3) },
			func(m *Metrics) prometheus.Collector { return m.pendingTokenWrites }, 3},
		{"in flight", func(m *Metrics) { m.InFlight(); m.InFlight()() },
			func(m *Metrics) prometheus.Collector { return m.inFlight }, 1},
		{"connect started", func(m *Metrics) { m.ConnectStarted() },
			func(m *Metrics) prometheus.Collector { return m.connects.WithLabelValues("started") }, 1},
		{"connect completed", func(m *Metrics) { m.ConnectCompleted() },
			func(m *Metrics) prometheus.Collector { return m.connects.WithLabelValues("completed") }, 1},
		{"connect failed", func(m *Metrics) { m.ConnectFailed(ConnectStoreFailed) },
			func(m *Metrics) prometheus.Collector { return m.connects.WithLabelValues("failed") }, 1},
		{"connect link refused", func(m *Metrics) { m.ConnectLinkRefused() },
			func(m *Metrics) prometheus.Collector { return m.connects.WithLabelValues("link_refused") }, 1},
		{"connect tenant conflict", func(m *Metrics) { m.ConnectFailed(ConnectTenantConflict) },
			func(m *Metrics) prometheus.Collector { return m.connectFailures.WithLabelValues("tenant_conflict") }, 1},
		{"connect failure reason", func(m *Metrics) { m.ConnectFailed(ConnectStoreFailed) },
			func(m *Metrics) prometheus.Collector { return m.connectFailures.WithLabelValues("store_failed") }, 1},
		{"secret reload", func(m *Metrics) { m.SecretReload(SecretEncryptionKey, SecretReloadSuccess) },
			func(m *Metrics) prometheus.Collector {
				return m.secretReloads.WithLabelValues("encryption_key", "success")
			}, 1},
		{"secret reload unknown result", func(m *Metrics) { m.SecretReload(SecretClientTokens, "weird") },
			func(m *Metrics) prometheus.Collector {
				return m.secretReloads.WithLabelValues("client_tokens", "error")
			}, 1},
		{"connect failure unknown reason", func(m *Metrics) { m.ConnectFailed("meteor") },
			func(m *Metrics) prometheus.Collector { return m.connectFailures.WithLabelValues("other") }, 1},
		{"connect no refresh token", func(m *Metrics) { m.ConnectFailed(ConnectNoRefreshToken) },
			func(m *Metrics) prometheus.Collector { return m.connectFailures.WithLabelValues("no_refresh_token") }, 1},
		{"refresh skipped in a 401 cool-down", func(m *Metrics) { m.RefreshSkipped(SkipUnauthorizedCooldown) },
			func(m *Metrics) prometheus.Collector {
				return m.refreshesSkipped.WithLabelValues("unauthorized_cooldown")
			}, 1},
		{"refresh skipped backing off", func(m *Metrics) { m.RefreshSkipped(SkipBackoff) },
			func(m *Metrics) prometheus.Collector { return m.refreshesSkipped.WithLabelValues("backoff") }, 1},
		{"refresh skipped unknown reason", func(m *Metrics) { m.RefreshSkipped("meteor") },
			func(m *Metrics) prometheus.Collector { return m.refreshesSkipped.WithLabelValues("other") }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(prometheus.NewRegistry())
			tt.record(m)
			if got := testutil.ToFloat64(tt.series(m)); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// sampleCount adds up the observations of every series of histogram name.
func sampleCount(t *testing.T, g prometheus.Gatherer, name string) uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

func TestHistogramsObserve(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.ObserveRequest("GET", 200, CredentialOAuth2, 10*time.Millisecond)
	m.ObserveRequest("GET", 200, CredentialIntegratedAPIKey, 20*time.Millisecond)
	m.TokenRefresh(TriggerExpiry, RefreshSuccess, time.Second)
	m.RefreshLockWait(time.Second)
	m.TokenCommitWindow(time.Millisecond)
	m.TokenAgeAtRefresh(24 * time.Hour)
	m.StoreOperation(StoreList, time.Second, nil)
	for name, want := range map[string]uint64{
		"pleo_proxy_request_duration_seconds":         2,
		"pleo_proxy_token_refresh_duration_seconds":   1,
		"pleo_proxy_refresh_lock_wait_seconds":        1,
		"pleo_proxy_token_commit_window_seconds":      1,
		"pleo_proxy_token_age_at_refresh_seconds":     1,
		"pleo_proxy_store_operation_duration_seconds": 1,
	} {
		if got := sampleCount(t, reg, name); got != want {
			t.Errorf("%s: %d observations, want %d", name, got, want)
		}
	}
	for name, want := range map[string]int{
		"pleo_proxy_request_duration_seconds":         1, // one series: method and code only
		"pleo_proxy_requests_total":                   2, // two credential types
		"pleo_proxy_token_refresh_duration_seconds":   1,
		"pleo_proxy_refresh_lock_wait_seconds":        1,
		"pleo_proxy_token_age_at_refresh_seconds":     1,
		"pleo_proxy_store_operation_duration_seconds": 1,
	} {
		if got, err := testutil.GatherAndCount(reg, name); err != nil || got != want {
			t.Errorf("%s: %d series (%v), want %d", name, got, err, want)
		}
	}
}

func TestLabelBounding(t *testing.T) {
	tests := []struct {
		method, credType     string
		code                 int
		wantMethod, wantCode string
		wantCredType         string
	}{
		{"GET", "oauth2", 200, "GET", "200", "oauth2"},
		{"HEAD", "integrated_api_key", 204, "HEAD", "204", "integrated_api_key"},
		{"POST", "standalone_api_key", 201, "POST", "201", "standalone_api_key"},
		{"PUT", "none", 400, "PUT", "400", "none"},
		{"PATCH", "", 403, "PATCH", "403", "none"},
		{"DELETE", "oauth2", 404, "DELETE", "404", "oauth2"},
		{"OPTIONS", "oauth2", 100, "OPTIONS", "100", "oauth2"},
		{"CONNECT", "none", 405, "CONNECT", "405", "none"},
		{"TRACE", "none", 599, "TRACE", "599", "none"},
		{"get", "oauth2", 200, "OTHER", "200", "oauth2"},
		{"PROPFIND", "oauth2", 207, "OTHER", "207", "oauth2"},
		{"", "oauth2", 200, "OTHER", "200", "oauth2"},
		{"GET /admin HTTP/1.1", "oauth2", 200, "OTHER", "200", "oauth2"},
		{"GET", "oauth2", 0, "GET", "other", "oauth2"},
		{"GET", "oauth2", 99, "GET", "other", "oauth2"},
		{"GET", "oauth2", 600, "GET", "other", "oauth2"},
		{"GET", "oauth2", -1, "GET", "other", "oauth2"},
		{"GET", "oauth2", 999, "GET", "other", "oauth2"},
		{"GET", "OAuth2", 200, "GET", "200", "other"},
		{"GET", "5a1c0000-0000-0000-0000-000000000000", 200, "GET", "200", "other"},
	}
	for _, tt := range tests {
		t.Run(tt.method+"/"+tt.credType, func(t *testing.T) {
			if got := MethodLabel(tt.method); got != tt.wantMethod {
				t.Errorf("MethodLabel(%q) = %q, want %q", tt.method, got, tt.wantMethod)
			}
			if got := CodeLabel(tt.code); got != tt.wantCode {
				t.Errorf("CodeLabel(%d) = %q, want %q", tt.code, got, tt.wantCode)
			}
			reg := prometheus.NewRegistry()
			m := New(reg)
			m.ObserveRequest(tt.method, tt.code, tt.credType, time.Millisecond)
			if got := testutil.ToFloat64(m.requests.WithLabelValues(tt.wantMethod, tt.wantCode, tt.wantCredType)); got != 1 {
				t.Errorf("requests_total{%s,%s,%s} = %v, want 1", tt.wantMethod, tt.wantCode, tt.wantCredType, got)
			}
			if n := testutil.CollectAndCount(m.requests); n != 1 {
				t.Errorf("requests_total has %d series, want 1", n)
			}
			if n := testutil.CollectAndCount(m.requestDuration); n != 1 {
				t.Errorf("request_duration_seconds has %d series, want 1", n)
			}
		})
	}
}

func TestSetCredentialCounts(t *testing.T) {
	m := New(prometheus.NewRegistry())
	gauge := func(typ, state string) float64 {
		return testutil.ToFloat64(m.credentials.WithLabelValues(typ, state))
	}
	m.SetCredentialCounts(map[CredentialKey]int{
		{CredentialOAuth2, StateActive}:                  5,
		{CredentialOAuth2, StateReauthorizationRequired}: 1,
		{CredentialOAuth2, "quarantined"}:                2, // a state this package does not know
	})
	if got := gauge("oauth2", "active"); got != 5 {
		t.Errorf("oauth2/active = %v, want 5", got)
	}
	if got := gauge("oauth2", "quarantined"); got != 2 {
		t.Errorf("oauth2/quarantined = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(m.credentials); n != 13 {
		t.Errorf("%d series, want 12 known + 1", n)
	}

	m.SetCredentialCounts(map[CredentialKey]int{{CredentialOAuth2, StateActive}: 6})
	if got := gauge("oauth2", "active"); got != 6 {
		t.Errorf("oauth2/active = %v, want 6", got)
	}
	if got := gauge("oauth2", "reauthorization_required"); got != 0 {
		t.Errorf("oauth2/reauthorization_required = %v, want 0 once absent", got)
	}
	if n := testutil.CollectAndCount(m.credentials); n != 12 {
		t.Errorf("%d series, want the 12 known ones (the unknown state removed)", n)
	}

	m.SetCredentialCounts(nil)
	if got := gauge("oauth2", "active"); got != 0 {
		t.Errorf("oauth2/active = %v, want 0 for an empty store", got)
	}
}

func TestSetExpiringCredentials(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.SetExpiringCredentials(map[string]int{CredentialStandaloneAPIKey: 3, "future_key": 1})
	if got := testutil.ToFloat64(m.credentialsExpiring.WithLabelValues("standalone_api_key")); got != 3 {
		t.Errorf("standalone = %v, want 3", got)
	}
	if n := testutil.CollectAndCount(m.credentialsExpiring); n != 3 {
		t.Errorf("%d series, want 3", n)
	}
	m.SetExpiringCredentials(map[string]int{CredentialIntegratedAPIKey: 1})
	if got := testutil.ToFloat64(m.credentialsExpiring.WithLabelValues("standalone_api_key")); got != 0 {
		t.Errorf("standalone = %v, want 0 once absent", got)
	}
	if got := testutil.ToFloat64(m.credentialsExpiring.WithLabelValues("integrated_api_key")); got != 1 {
		t.Errorf("integrated = %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.credentialsExpiring); n != 2 {
		t.Errorf("%d series, want 2 (the unknown type removed)", n)
	}
}

// TestNil checks that a nil *Metrics can be used everywhere, so packages can run without one.
func TestNil(t *testing.T) {
	var m *Metrics
	touchAll(m)
	m.ConnectCompleted()
	m.SetCredentialCounts(nil)
	m.SetExpiringCredentials(nil)
	done := m.InFlight()
	if done == nil {
		t.Fatal("InFlight on nil returned a nil func")
	}
	done()
}

func TestConcurrent(t *testing.T) {
	m := New(prometheus.NewRegistry())
	const goroutines, perG = 8, 500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perG {
				done := m.InFlight()
				m.ObserveRequest("GET", 200+(i%3), CredentialOAuth2, time.Millisecond)
				m.UpstreamResponse(200 + (i % 3))
				m.StoreOperation(StoreGet, time.Millisecond, nil)
				if i%50 == 0 {
					m.SetCredentialCounts(map[CredentialKey]int{{CredentialOAuth2, StateActive}: g})
				}
				done()
			}
		})
	}
	wg.Wait()
	var total float64
	for _, code := range []string{"200", "201", "202"} {
		total += testutil.ToFloat64(m.requests.WithLabelValues("GET", code, "oauth2"))
	}
	if total != goroutines*perG {
		t.Errorf("requests_total = %v, want %v", total, goroutines*perG)
	}
	if got := testutil.ToFloat64(m.inFlight); got != 0 {
		t.Errorf("in flight = %v, want 0", got)
	}
}

// TestHotPathAllocations holds the per-request methods to zero allocations once their series
// exist; BenchmarkObserveRequest shows the same figure.
func TestHotPathAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	m := New(prometheus.NewRegistry())
	calls := map[string]func(){
		"ObserveRequest":   func() { m.ObserveRequest("GET", 200, CredentialOAuth2, time.Millisecond) },
		"UpstreamResponse": func() { m.UpstreamResponse(401) },
		"InFlight":         func() { m.InFlight()() },
		"CacheLookup":      func() { m.CacheLookup(true) },
		"AuthRetry":        func() { m.AuthRetry(RetrySucceeded) },
		"TokenRefresh":     func() { m.TokenRefresh(TriggerExpiry, RefreshSuccess, time.Second) },
		"RefreshLockWait":  func() { m.RefreshLockWait(time.Millisecond) },
		"Error":            func() { m.Error("company_unknown") },
		"StoreOperation":   func() { m.StoreOperation(StoreGet, time.Millisecond, nil) },
	}
	for name, call := range calls {
		call() // create the series
		if n := testing.AllocsPerRun(100, call); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", name, n)
		}
	}
	var nilMetrics *Metrics
	if n := testing.AllocsPerRun(100, func() { nilMetrics.InFlight()() }); n != 0 {
		t.Errorf("nil InFlight: %v allocations per call, want 0", n)
	}
}

func BenchmarkObserveRequest(b *testing.B) {
	m := New(prometheus.NewRegistry())
	m.ObserveRequest("GET", 200, CredentialOAuth2, time.Millisecond)
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveRequest("GET", 200, CredentialOAuth2, time.Millisecond)
	}
}

// BenchmarkRequestPath is what the proxy records for one proxied request.
func BenchmarkRequestPath(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			done := m.InFlight()
			m.CacheLookup(true)
			m.UpstreamResponse(200)
			m.ObserveRequest("GET", 200, CredentialOAuth2, time.Millisecond)
			done()
		}
	})
}

// BenchmarkWithLabelValues is the baseline ObserveRequest avoids: a label-map lookup per call.
func BenchmarkWithLabelValues(b *testing.B) {
	m := New(prometheus.NewRegistry())
	b.ReportAllocs()
	for b.Loop() {
		m.requests.WithLabelValues("GET", CodeLabel(200), CredentialOAuth2).Inc()
		m.requestDuration.WithLabelValues("GET", CodeLabel(200)).Observe(0.001)
	}
}
