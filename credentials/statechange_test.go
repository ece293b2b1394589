package credentials

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// stateLog records OnStateChange calls.
type stateLog struct {
	mu  sync.Mutex
	got []string
}

func (l *stateLog) record(c Credential, s Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !c.AccessToken.IsZero() || !c.RefreshToken.IsZero() || !c.APIKey.IsZero() {
		l.got = append(l.got, "SECRET")
	}
	l.got = append(l.got, c.CompanyID+" "+string(s))
}

func (l *stateLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.got, "; ")
}

// TestOnStateChange: the broker reports each state a credential enters once: a rejected
// refresh token, an API key answered 401, an API key passing its expires_at while it runs (not
// one that had expired before it started).
func TestOnStateChange(t *testing.T) {
	ctx := context.Background()
	ts := newBkTokenServer(t)
	clock := newBkClock()
	store := NewMemoryStore()
	oauthCo, keyCo, expCo, oldCo := bkCompanyID(1), bkCompanyID(2), bkCompanyID(3), bkCompanyID(4)
	bkPut(t, store,
		Credential{CompanyID: oauthCo, TenantID: "erp-1", Type: OAuth2, RefreshToken: "spent"},
		Credential{CompanyID: keyCo, Type: IntegratedAPIKey, APIKey: "key-2"},
		Credential{CompanyID: expCo, Type: StandaloneAPIKey, APIKey: "key-3", ExpiresAt: clock.Now().Add(time.Hour)},
		Credential{CompanyID: oldCo, Type: StandaloneAPIKey, APIKey: "key-4", ExpiresAt: clock.Now().Add(-time.Hour)},
	)
	var log stateLog
	b := bkNewBroker(t, store, ts.srv.URL, clock, func(o *BrokerOptions) { o.OnStateChange = log.record })

	// A refresh token the server does not know: reauthorization_required, reported once.
	for range 3 {
		if _, err := b.Authorize(ctx, oauthCo); !errors.Is(err, ErrReauthorizationRequired) {
			t.Fatalf("Authorize: %v, want ErrReauthorizationRequired", err)
		}
	}
	// An API key answered 401 twice: unauthorized, reported once.
	g, err := b.Authorize(ctx, keyCo)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, retry, err := b.Reauthorize(ctx, keyCo, g); err != nil || retry {
			t.Fatalf("Reauthorize = retry %t, %v", retry, err)
		}
	}
	b.Sweep(ctx) // nothing has expired since the start
	clock.Advance(2 * time.Hour)
	b.Sweep(ctx) // key-3 expired since the last pass
	b.Sweep(ctx)

	want := oauthCo + " reauthorization_required; " + keyCo + " unauthorized; " + expCo + " expired"
	if got := log.String(); got != want {
		t.Fatalf("state changes:\n got %s\nwant %s", got, want)
	}
}
