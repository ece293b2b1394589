package credentials

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ClaimEvent lets exactly one replica send the event for a change: it records (state, version)
// as the company's last notified change and returns true, or returns false when that very
// change is already recorded (another replica claimed it). Concurrent claims of one change
// serialise on the row, and only the first changes it.
func (s *PGStore) ClaimEvent(ctx context.Context, companyID, state string, version int64) (bool, error) {
	var one int
	err := s.pool.QueryRow(ctx, `
INSERT INTO pleo_proxy_event_claims (company_id, state, version) VALUES ($1, $2, $3)
ON CONFLICT (company_id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version, claimed_at = now()
WHERE (pleo_proxy_event_claims.state, pleo_proxy_event_claims.version) IS DISTINCT FROM (EXCLUDED.state, EXCLUDED.version)
RETURNING 1`, CanonicalCompanyID(companyID), state, version).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("credentials: claim event: %w", storeUnavailable("claim event", err))
	}
	return true, nil
}
