package credentials_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/credentials"
	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// failingGets is a store whose Get fails with an outage.
type failingGets struct{ credentials.Store }

func (f failingGets) Get(context.Context, string) (credentials.Credential, error) {
	return credentials.Credential{}, errors.New("disk on fire")
}

func TestInstrumentCountsErrorsNotAnswers(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	s := credentials.Instrument(credentials.NewMemoryStore(), m)
	ctx := context.Background()
	if _, err := s.Get(ctx, "5a1c0000-0000-4000-8000-000000000001"); !errors.Is(err, credentials.ErrNotFound) {
		t.Fatal(err)
	}
	f := credentials.Instrument(failingGets{credentials.NewMemoryStore()}, m)
	_, _ = f.Get(ctx, "5a1c0000-0000-4000-8000-000000000001")
	_, _ = f.List(ctx)
	count, err := testutil.GatherAndCount(reg, "pleo_proxy_store_operation_duration_seconds")
	if err != nil || count == 0 {
		t.Fatalf("no duration series: %d %v", count, err)
	}
	mfs, _ := reg.Gather()
	errorsByOp := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "pleo_proxy_store_errors_total" {
			continue
		}
		for _, mm := range mf.GetMetric() {
			errorsByOp[mm.GetLabel()[0].GetValue()] = mm.GetCounter().GetValue()
		}
	}
	if errorsByOp["get"] != 1 || errorsByOp["list"] != 0 {
		t.Fatalf("store errors = %v, want get=1 (the outage; not-found is an answer) and list=0", errorsByOp)
	}
}
