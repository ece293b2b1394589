package credentials

import (
	"context"
	"errors"
	"time"

	"github.com/pleo-auth-proxy/pleo-auth-proxy/metrics"
)

// Instrument wraps a store so every operation's latency and errors are recorded
// (pleo_proxy_store_operation_duration_seconds, pleo_proxy_store_errors_total). A store that
// implements RefreshLocker still does after wrapping. ErrNotFound and ErrConflict are answers,
// not errors, and are not counted as such.
func Instrument(s Store, m *metrics.Metrics) Store {
	if m == nil {
		return s
	}
	in := instrumented{inner: s, m: m}
	if l, ok := s.(RefreshLocker); ok {
		return instrumentedLocker{instrumented: in, locker: l}
	}
	return in
}

type instrumented struct {
	inner Store
	m     *metrics.Metrics
}

func (s instrumented) observe(op string, start time.Time, err error) {
	if isAnswer(err) {
		err = nil
	}
	s.m.StoreOperation(op, time.Since(start), err)
}

func isAnswer(err error) bool {
	return errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict)
}

// Reload passes Reloader on to the wrapped store (nothing to do when it is not one).
func (s instrumented) Reload(ctx context.Context) error {
	if r, ok := s.inner.(Reloader); ok {
		return r.Reload(ctx)
	}
	return nil
}

func (s instrumented) Get(ctx context.Context, companyID string) (Credential, error) {
	start := time.Now()
	c, err := s.inner.Get(ctx, companyID)
	s.observe(metrics.StoreGet, start, err)
	return c, err
}

func (s instrumented) GetByTenant(ctx context.Context, tenantID string) (Credential, error) {
	start := time.Now()
	c, err := s.inner.GetByTenant(ctx, tenantID)
	s.observe(metrics.StoreGet, start, err)
	return c, err
}

func (s instrumented) List(ctx context.Context) ([]Credential, error) {
	start := time.Now()
	l, err := s.inner.List(ctx)
	s.observe(metrics.StoreList, start, err)
	return l, err
}

// Scan streams when the inner store can (see Scanner), timed as a list.
func (s instrumented) Scan(ctx context.Context, fn func(Credential) bool) error {
	start := time.Now()
	err := Scan(ctx, s.inner, fn)
	s.observe(metrics.StoreList, start, err)
	return err
}

func (s instrumented) PutAll(ctx context.Context, creds []Credential, replaceAll bool) error {
	start := time.Now()
	err := s.inner.PutAll(ctx, creds, replaceAll)
	s.observe(metrics.StorePut, start, err)
	return err
}

func (s instrumented) Update(ctx context.Context, c Credential) (Credential, error) {
	start := time.Now()
	out, err := s.inner.Update(ctx, c)
	s.observe(metrics.StoreUpdate, start, err)
	return out, err
}

func (s instrumented) Delete(ctx context.Context, companyID string) error {
	start := time.Now()
	err := s.inner.Delete(ctx, companyID)
	s.observe(metrics.StoreDelete, start, err)
	return err
}

func (s instrumented) Ping(ctx context.Context) error {
	start := time.Now()
	err := s.inner.Ping(ctx)
	s.observe(metrics.StorePing, start, err)
	return err
}

func (s instrumented) Subscribe(fn func(companyID string)) func() { return s.inner.Subscribe(fn) }

func (s instrumented) Close() error { return s.inner.Close() }

type instrumentedLocker struct {
	instrumented
	locker RefreshLocker
}

func (s instrumentedLocker) LockRefresh(ctx context.Context, companyID string) (RefreshLock, error) {
	return s.locker.LockRefresh(ctx, companyID)
}
